# Progressive pre-training: each clip length of `pretrain.frames` starts from the previous
# one's checkpoint (the stage inflates the relative-position bias / embeddings); the first
# starts from the profile's image weights, or from scratch when it names none.


rule pretrain:
    input:
        data=data_checks(*config["pretrain"]["datasets"]),
        init=init_checkpoint("pretrain"),
    output:
        checkpoint=f"{RUNS}/pretrain/{{variant}}/T{{frames}}/checkpoint.pt",
        metrics=f"{RUNS}/pretrain/{{variant}}/T{{frames}}/metrics.json",
        config=f"{RUNS}/pretrain/{{variant}}/T{{frames}}/config.yaml",
    params:
        config=run_config("pretrain"),
        launcher=launcher,
        init=init_flag,
        out=lambda wildcards, output: Path(output.metrics).parent,
    log:
        f"{RUNS}/pretrain/{{variant}}/T{{frames}}/stage.log",
    threads: 1
    resources:
        gpu=0,
    conda:
        ENV
    shell:
        WRITE_CONFIG + "{params.launcher} svitt pretrain --config {output.config} --out {params.out}"
        " {params.init} > {log} 2>&1"
