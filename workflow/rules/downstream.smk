# Downstream tasks of a pre-trained model: zero-shot retrieval (with evaluation probes such as
# a lower visual keep rate), fine-tuned retrieval and video QA.


rule zero_shot:
    input:
        config=f"{RUNS}/zero-shot/{{variant}}/T{{frames}}/{{dataset}}/{{probe}}/config.yaml",
        data=DATA_READY,
        init=init_checkpoint("zero-shot"),
    output:
        metrics=f"{RUNS}/zero-shot/{{variant}}/T{{frames}}/{{dataset}}/{{probe}}/metrics.json",
    params:
        launcher=launcher,
        init=init_flag,
        out=lambda wildcards, output: Path(output.metrics).parent,
    log:
        f"{RUNS}/zero-shot/{{variant}}/T{{frames}}/{{dataset}}/{{probe}}/stage.log",
    threads: 1
    resources:
        gpu=0,
    shell:
        "{params.launcher} svitt eval-retrieval --config {input.config} --out {params.out}"
        " {params.init} > {log} 2>&1"


rule finetune:
    input:
        config=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/config.yaml",
        data=DATA_READY,
        init=lambda wildcards: init_checkpoint(f"finetune-{wildcards.task}")(wildcards),
    output:
        checkpoint=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/checkpoint.pt",
        metrics=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/metrics.json",
    wildcard_constraints:
        task="retrieval|qa",
    params:
        launcher=launcher,
        init=init_flag,
        out=lambda wildcards, output: Path(output.metrics).parent,
    log:
        f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/stage.log",
    threads: 1
    resources:
        gpu=0,
    shell:
        "{params.launcher} svitt finetune-{wildcards.task} --config {input.config}"
        " --out {params.out} {params.init} > {log} 2>&1"
