# Downstream tasks of a pre-trained model: zero-shot retrieval (with evaluation probes such as
# a lower visual keep rate), fine-tuned retrieval and video QA.


rule zero_shot:
    """One checkpoint, one probe, every zero-shot dataset: one process (libraries and model load
    once), one run directory and MLflow run per dataset."""
    input:
        data=data_checks(*ZERO_SHOT_DATASETS),
        # The pre-trained checkpoint, the same for every dataset.
        init=init_checkpoint("zero-shot", dataset=ZERO_SHOT_DATASETS[0]),
    output:
        metrics=zero_shot_outputs("metrics.json"),
        outcomes=zero_shot_outputs("outcomes.json"),
        config=zero_shot_outputs("config.yaml"),
    params:
        write_configs=write_zero_shot_configs,
        runs=lambda wildcards, output: " ".join(
            f"--config {config} --out {Path(config).parent}" for config in output.config
        ),
        launcher=launcher,
        init=init_flag,
    log:
        f"{RUNS}/zero-shot/{{variant}}/T{{frames}}/{{probe}}.log",
    threads: 1
    resources:
        gpu=0,
    conda:
        ENV
    shell:
        "{params.write_configs} && {params.launcher} svitt eval-retrieval {params.runs}"
        " {params.init} > {log} 2>&1"


rule finetune:
    input:
        data=lambda wildcards: data_checks(wildcards.dataset),
        init=lambda wildcards: init_checkpoint(f"finetune-{wildcards.task}")(wildcards),
    output:
        checkpoint=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/checkpoint.pt",
        metrics=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/metrics.json",
        outcomes=f"{RUNS}/finetune-{{task}}/{{variant}}/T{{frames}}/{{dataset}}/outcomes.json",
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
    conda:
        ENV
    shell:
        WRITE_CONFIG + "{params.launcher} svitt finetune-{wildcards.task} --config {output.config}"
        " --out {params.out} {params.init} > {log} 2>&1"
