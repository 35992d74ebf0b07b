# Data and pretrained weights: generate (synthetic) or check (files) every dataset. Each job
# waits for the validation reports of the datasets it reads and for `check_pretrained`
# (`data_checks` in common.smk), so a missing dataset or weight file stops the run before the
# training that needs it, and re-validating one dataset reruns only that dataset's jobs. The
# config-only tables (A1, A4) do not depend on these rules.
# Priority: the checks run first, so a failure stops the run before other work piles up.

# Shell commands throughout: a `run:` block costs a Snakemake subprocess per job.


localrules:
    profile_config,
    check_pretrained,
    claims_report,


rule profile_config:
    """The workflow config as run (config files and --config overrides), for the report code."""
    output:
        PROFILE_DUMP,
    params:
        # A function, so Snakemake does not expand `{resources.gpu}` in the profile's launcher.
        config=lambda wildcards: yaml.safe_dump(dict(config), sort_keys=False),
    log:
        f"{RUNS}/logs/profile_config.log",
    conda:
        ENV
    shell:
        "printf '%s' {params.config:q} > {output}.tmp 2> {log} && mv {output}.tmp {output}"


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
        # A function: `workflow.cores` is unset where nothing runs (`snakemake --report`).
        threads: lambda wildcards: workflow.cores
        priority: 10
        conda:
            ENV
        shell:
            "svitt synthetic --out {output} --size {params.size} --seed {params.seed}"
            " > {log} 2>&1"


rule validate_data:
    """Decode every video of a dataset and check its annotations; fails naming a missing path.
    Strict for the test split of the datasets that an evaluation reads (a bad test video fails
    the job), since evaluation refuses bad videos: better now than after pre-training.
    Training skips bad videos, so a bad training video is only listed in the report."""
    input:
        generated=[DATA["root"]] if DATA["source"] == "synthetic" else [],
    output:
        validation_report("{dataset}"),
    params:
        # A function: for `files` the root is no input of the job (a missing root must fail in
        # the job, whose log names it), and the linter asks for inputs over hardcoded prefixes.
        root=lambda wildcards: DATA["root"],
        strict=lambda wildcards: (
            "--strict test" if wildcards.dataset in evaluated_datasets() else ""
        ),
    log:
        f"{RUNS}/data/{{dataset}}.log",
    priority: 10
    conda:
        ENV
    shell:
        "svitt validate-data --root {params.root} --dataset {wildcards.dataset} --out {output}"
        " {params.strict} > {log} 2>&1"


rule check_pretrained:
    """Every tokenizer and weight path of the profile must exist (nothing is downloaded)."""
    input:
        generated=[DATA["root"]] if DATA["source"] == "synthetic" else [],
    output:
        PRETRAINED_CHECK,
    params:
        paths=pretrained_paths(),
    log:
        f"{RUNS}/data/pretrained.log",
    priority: 10
    conda:
        ENV
    shell:
        ": > {log}; for path in {params.paths:q}; do test -e \"$path\" || {{ echo \"pretrained"
        " weights / tokenizer not found: $path (set the paths in the profile config; nothing is"
        " downloaded)\" | tee {log} >&2; exit 1; }}; done; printf '%s\\n' {params.paths:q} > {output}"
