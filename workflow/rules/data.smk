# Data and pretrained weights: generate (synthetic) or check (files) every dataset, then one
# `ready` marker that every training job waits for, so a missing dataset or weight file stops
# the run before any training. The config-only tables (A1, A4) do not depend on these rules.
# Priority: the checks run first, so a failure stops the run before other work piles up.

# Shell commands throughout: a `run:` block costs a Snakemake subprocess per job.


localrules:
    profile_config,
    check_pretrained,
    data_ready,


rule profile_config:
    """The workflow config as run (config files and --config overrides), for the report code."""
    output:
        PROFILE_DUMP,
    params:
        # A function, so Snakemake does not expand `{resources.gpu}` in the profile's launcher.
        config=lambda wildcards: yaml.safe_dump(dict(config), sort_keys=False),
    shell:
        "printf '%s' {params.config:q} > {output}.tmp && mv {output}.tmp {output}"


if DATA["source"] == "synthetic":

    rule synthetic_data:
        """The embedded synthetic benchmark: real mp4 files + Singularity-format JSON + tokenizer."""
        # The whole root: `svitt synthetic` writes it from scratch (and refuses a foreign one).
        output:
            directory(DATA["root"]),
        params:
            size=DATA.get("synthetic_size", "default"),
            seed=DATA.get("seed", 0),
        log:
            f"{RUNS}/data/synthetic.log",
        threads: workflow.cores
        priority: 10
        shell:
            "svitt synthetic --out {output} --size {params.size} --seed {params.seed}"
            " > {log} 2>&1"


rule validate_data:
    """Decode every video of a dataset and check its annotations; fails naming a missing path."""
    input:
        generated=[DATA["root"]] if DATA["source"] == "synthetic" else [],
    output:
        f"{RUNS}/data/{{dataset}}.json",
    params:
        root=DATA["root"],
    log:
        f"{RUNS}/data/{{dataset}}.log",
    priority: 10
    shell:
        "svitt validate-data --root {params.root} --dataset {wildcards.dataset} --out {output}"
        " > {log} 2>&1"


rule check_pretrained:
    """Every tokenizer and weight path of the profile must exist (nothing is downloaded)."""
    input:
        generated=[DATA["root"]] if DATA["source"] == "synthetic" else [],
    output:
        f"{RUNS}/data/pretrained.txt",
    params:
        paths=pretrained_paths(),
    priority: 10
    shell:
        "for path in {params.paths:q}; do test -e \"$path\" || {{ echo \"pretrained weights /"
        " tokenizer not found: $path (set the paths in the profile config; nothing is"
        " downloaded)\" >&2; exit 1; }}; done; printf '%s\\n' {params.paths:q} > {output}"


rule data_ready:
    input:
        reports=[f"{RUNS}/data/{name}.json" for name in all_datasets()],
        pretrained=rules.check_pretrained.output,
    output:
        DATA_READY,
    shell:
        "printf '%s\\n' {input.reports:q} > {output}"
