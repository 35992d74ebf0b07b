# Downstream tasks of a pre-trained model: zero-shot retrieval (with evaluation probes such as
# a lower visual keep rate), fine-tuned retrieval and video QA.


rule zero_shot:
    input:
        data=DATA_READY,
        init=init_checkpoint("zero-shot"),
    output:
        metrics=f"{RUNS}/zero-shot/{{variant}}/T{{frames}}/{{dataset}}/{{probe}}/metrics.json",
        config=f"{RUNS}/zero-shot/{{variant}}/T{{frames}}/{{dataset}}/{{probe}}/config.yaml",
    params:
        config=run_config("zero-shot"),
        launcher=launcher,
        init=init_flag,
        out=lambda wildcards, output: Path(output.metrics).parent,
    log:
        f"{RUNS}/zero-shot/{{variant}}/T{{frames}}/{{dataset}}/{{probe}}/stage.log",
    threads: 1
    resources:
        gpu=0,
    shell:
        WRITE_CONFIG
        + "{params.launcher} svitt eval-retrieval --config {output.config} --out {params.out}"
        " {params.init} > {log} 2>&1"


rule finetune:
    input:
        data=DATA_READY,
        init=lambda wildcards: init_checkpoint(f"finetune-{wildcards.task}")(wildcards),
    output:
        checkpoint=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/checkpoint.pt",
        metrics=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/metrics.json",
        config=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/config.yaml",
    wildcard_constraints:
        task="retrieval|qa",
    params:
        config=lambda wildcards: run_config(f"finetune-{wildcards.task}")(wildcards),
        launcher=launcher,
        init=init_flag,
        out=lambda wildcards, output: Path(output.metrics).parent,
    log:
        f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/stage.log",
    threads: 1
    resources:
        gpu=0,
    shell:
        WRITE_CONFIG + "{params.launcher} svitt finetune-{wildcards.task} --config {output.config}"
        " --out {params.out} {params.init} > {log} 2>&1"
