# Evaluation probes of fine-tuned models (Table A8: shuffled frames) and the kept-token dumps
# behind Figures A2/A3. The keep-rate sweep of Figure A1 is a zero-shot probe (downstream.smk).


rule probe_finetuned:
    input:
        data=lambda wildcards: data_checks(wildcards.dataset),
        init=lambda wildcards: init_checkpoint(f"finetune-{wildcards.task}")(wildcards),
    output:
        metrics=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/{{probe}}/metrics.json",
        outcomes=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/{{probe}}/outcomes.json",
        config=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/{{probe}}/config.yaml",
    wildcard_constraints:
        task="retrieval|qa",
    params:
        config=lambda wildcards: run_config(f"finetune-{wildcards.task}")(wildcards),
        launcher=launcher,
        init=init_flag,
        out=lambda wildcards, output: Path(output.metrics).parent,
        command=lambda wildcards: f"eval-{wildcards.task}",
    log:
        f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/{{probe}}/stage.log",
    threads: 1
    resources:
        gpu=0,
    conda:
        ENV
    shell:
        WRITE_CONFIG
        + "{params.launcher} svitt {params.command} --config {output.config} --out {params.out}"
        " {params.init} > {log} 2>&1"
