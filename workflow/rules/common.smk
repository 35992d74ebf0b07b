# Config validation, run resolution and input functions shared by every rule file.
import shlex
import sys
from pathlib import Path

import jsonschema
import yaml

from svitt.config import FRAME_ORDERS
from svitt.plan.runs import (
    ALL_TABLES,
    RESULTS_TABLES,
    Profile,
    Run,
    Variant,
    figure_a1_runs,
    parse_model,
    run_chain,
    table_runs,
)
from svitt.plan.specs import SpecError, load_datasets, load_spec
from svitt.report.claims import claim_runs, load_claims
from svitt.report.outcomes import outcomes_path


def typed_scalar(text):
    """A --config value as YAML would read it in a config file: Snakemake types top-level
    values, but nested ones (`--config 'data={seed: 1}'`) arrive as strings."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None, "~": None}.get(text.lower(), text)


def apply_typed_overrides(target, overrides):
    """Re-type every nested string leaf that --config put into `target`."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            apply_typed_overrides(target[key], value)
        elif isinstance(value, str):
            target[key] = typed_scalar(value)
        elif isinstance(value, list):
            target[key] = [typed_scalar(v) if isinstance(v, str) else v for v in value]


def config_error(error):
    """One line naming the config key and what it allows (Snakemake's `validate` prints the
    whole schema)."""
    key = ".".join(map(str, error.absolute_path))
    if error.validator == "additionalProperties":
        allowed = ", ".join(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        names = ", ".join(f"{key}.{name}" if key else name for name in unknown)
        return f"config: unknown key {names}; allowed keys{f' of {key}' if key else ''}: {allowed}"
    if error.validator == "required" and not key:
        return (
            f"config: {error.message}; a partial config file (e.g. .test/config.yaml) goes after"
            " a complete one: --configfile workflow/config/default.yaml .test/config.yaml"
        )
    return f"config {key or '(top level)'}: {error.message}"


def check_config(config, schema_path):
    with open(schema_path) as handle:
        validator = jsonschema.Draft202012Validator(yaml.safe_load(handle))
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        sys.exit(config_error(error))


apply_typed_overrides(config, dict(workflow.config_settings.config))
check_config(config, workflow.source_path("../schemas/config.schema.yaml"))

# Spec and sparsity-table errors: one line, as the config's.
try:
    PROFILE = Profile(config)
    TOKENS_SPEC = load_spec(config["ablations"], "figure_tokens")
    FIGURE_A1_SPEC = load_spec(config["ablations"], "figure_A1")
    CLAIMS_SPEC = load_claims(config["ablations"])
except SpecError as err:
    sys.exit(str(err))
RESULTS = PROFILE.results
RUNS = PROFILE.runs_dir
DATA = config["data"]
ABLATIONS = config["ablations"]
PROFILE_DUMP = f"{RUNS}/profile.yaml"
PRETRAINED_CHECK = f"{RUNS}/data/pretrained.txt"
CLAIMS = {"markdown": f"{RESULTS}/claims.md", "csv": f"{RESULTS}/claims.csv"}
# The paper's recipe: the result tables name each row's settings that differ from it.
PAPER_PROFILE = "workflow/config/paper.yaml"
# Every rule's `conda:` (relative to workflow/rules/): the project installed with pip, for
# `--use-conda`; without it rules run in the environment Snakemake runs in (`make`: .venv).
ENV = "../envs/svitt.yaml"


wildcard_constraints:
    # the run path's model component: the variant and a training seed other than 0
    variant=r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+)*(\+[a-z0-9_]+)?(@seed[1-9][0-9]*)?",
    frames=r"[0-9]+",
    dataset=r"[a-z0-9_]+",
    probe="|".join(FRAME_ORDERS) + r"|keep[0-9.]+",
    table=r"A[0-9]+",


def evaluated_datasets():
    """Datasets whose test split an evaluation reads (every downstream dataset)."""
    return list(dict.fromkeys(config["retrieval"]["datasets"] + config["qa"]["datasets"]))


def validation_report(dataset):
    return f"{RUNS}/data/{dataset}.json"


def data_checks(*datasets):
    """What a job reading `datasets` waits for: each one's validation report and the
    pretrained-weights check. Per dataset, so re-validating one reruns only its dependents."""
    return [*map(validation_report, dict.fromkeys(datasets)), PRETRAINED_CHECK]


def pretrained_paths():
    """The tokenizer file and every weight file named by the profile."""
    fragments = [config["run"], *config["archs"].values()]
    weights = [f.get("model", {}).get("weights", {}) for f in fragments]
    paths = [w[key] for w in weights for key in ("vision", "text") if w.get(key)]
    return list(dict.fromkeys([f"{DATA['tokenizer']}/tokenizer.json", *paths]))


def run_of(wildcards, task, **fixed):
    """The Run named by a rule's wildcards."""
    keys = {k: wildcards.get(k) for k in ("dataset", "probe")}
    keys.update(fixed)
    variant, seed = parse_model(wildcards.variant)
    return Run(task, variant, int(wildcards.frames), **keys, seed=seed)


def init_checkpoint(task, **fixed):
    """Input function: the checkpoint a run starts from (none at the start of the chain)."""

    def checkpoint(wildcards):
        source = PROFILE.loads(run_of(wildcards, task, **fixed))
        return [] if source is None else PROFILE.checkpoint(source)

    return checkpoint


def init_flag(wildcards, input):
    return f"--init-from {input.init}" if input.get("init") else ""


def launcher(wildcards, threads, resources):
    """The command prefix of training/evaluation jobs (the SLURM profile sets torchrun)."""
    return config["launcher"].format(threads=threads, resources=resources)


def table_files():
    return [f"{RESULTS}/tables/{t}.{ext}" for t in ALL_TABLES for ext in ("csv", "md", "tex")]


def claims_files():
    """The claims report and its copy for the HTML report."""
    return [*CLAIMS.values(), f"{RUNS}/report/claims.md"]


def figure_files():
    return [f"{RESULTS}/figures/{name}.png" for name in ["A1", *TOKENS_SPEC["figures"]]]


def table_metrics(wildcards):
    """metrics.json and outcomes.json (the intervals) of every run the table reads."""
    runs = table_runs(PROFILE, wildcards.table)
    return [f(PROFILE, run) for run in runs for f in (Profile.metrics, outcomes_path)]


def claims_outcomes(wildcards):
    """The per-query outcomes of every run a claim this profile can check compares."""
    return [outcomes_path(PROFILE, run) for run in claim_runs(PROFILE, CLAIMS_SPEC)]


def figure_a1_metrics(wildcards):
    runs = [run for point in figure_a1_runs(PROFILE, FIGURE_A1_SPEC) for run in point]
    # The error bars come from the per-query outcomes.
    return [f(PROFILE, run) for run in runs for f in (Profile.metrics, outcomes_path)]


def table_inputs(wildcards):
    spec = load_spec(ABLATIONS, wildcards.table)
    inputs = {
        "profile": PROFILE_DUMP,
        "paper": PAPER_PROFILE,
        "spec": f"{ABLATIONS}/{wildcards.table}.yaml",
        "sparsity": config["sparsity_table"],
        "metrics": table_metrics(wildcards),
    }
    if wildcards.table == "A2":
        inputs["datasets"] = f"{ABLATIONS}/datasets.tsv"
        # Statistics of every dataset of the table (the weights play no part).
        inputs["data"] = [validation_report(name) for name in load_datasets(ABLATIONS)]
    # The reference rows (chance, majority answer, question-only prior) read the annotations.
    compared = [*spec.get("datasets", []), *(c["dataset"] for c in spec.get("columns", []))]
    if compared:
        inputs["data"] = [validation_report(name) for name in dict.fromkeys(compared)]
    return inputs


def tokens_run(figure):
    model = TOKENS_SPEC["model"]
    variant = Variant(model["arch"], model["sparsity"])
    dataset = TOKENS_SPEC["figures"][figure]["dataset"]
    # A picture of one model: the first seed's.
    return Run("tokens", variant, int(model["frames"]), dataset, seed=PROFILE.seeds[0])


def extra_runs():
    """Runs of `all` beyond the tables: the end of every chain and QA on every dataset, each
    once per training seed."""
    runs = [Run("pretrain", Variant("svitt", s), t) for s in PROFILE.sparsity for t in PROFILE.chain]
    qa_frames = [int(key[1:]) for key in config["qa"]["by_frames"]]
    runs += [
        Run("finetune-qa", Variant("svitt", s), t, d)
        for s in PROFILE.sparsity
        for t in qa_frames
        for d in config["qa"]["datasets"]
    ]
    return [seeded for run in runs for seeded in PROFILE.replicates(run)]


def run_config(task, **fixed):
    """Params function: the run's resolved RunConfig as YAML text (svitt.plan.runs).

    Each stage writes it to the run's config.yaml in its own shell command (a separate
    config job would cost a Snakemake subprocess per run). As a param, a changed config reruns
    the run (Snakemake's params rerun trigger).
    """

    def text(wildcards):
        resolved = PROFILE.resolve(run_of(wildcards, task, **fixed))
        return yaml.safe_dump(resolved, sort_keys=False)

    return text


# Writes {params.config} to {output.config}, then runs the stage on it.
WRITE_CONFIG = "printf '%s' {params.config:q} > {output.config} && "


def table_and_figure_runs():
    """Every run whose metrics a table or Figure A1 reads."""
    runs = [run for table in ALL_TABLES for run in table_runs(PROFILE, table)]
    return runs + [run for point in figure_a1_runs(PROFILE, FIGURE_A1_SPEC) for run in point]


def check_runs():
    """Resolve every run of the targets once at start-up: a bad RunConfig key anywhere (e.g.
    `run.model.vision.dept`) stops the workflow with one line naming it, where an input
    function's error would come as a traceback in the middle of the DAG. With the runs they
    start from: a recipe's pre-training chain is no target of its own."""
    try:
        runs = table_and_figure_runs() + extra_runs()
        runs += [tokens_run(figure) for figure in TOKENS_SPEC["figures"]]
        for run in dict.fromkeys(step for run in runs for step in run_chain(PROFILE, run)):
            PROFILE.resolve(run)
    except SpecError as err:
        sys.exit(str(err))


check_runs()


def zero_shot_datasets():
    """Every dataset that a zero-shot run of the tables or figures evaluates."""
    return sorted({run.dataset for run in table_and_figure_runs() if run.task == "zero-shot"})


ZERO_SHOT_DATASETS = zero_shot_datasets()


def zero_shot_outputs(name):
    return expand(
        f"{RUNS}/zero-shot/{{{{variant}}}}/T{{{{frames}}}}/{{dataset}}/{{{{probe}}}}/{name}",
        dataset=ZERO_SHOT_DATASETS,
    )


def write_zero_shot_configs(wildcards, output):
    """Params function: the shell commands that write each dataset's run config (as
    `run_config`, one per output; a changed config reruns the job)."""
    commands = []
    for dataset, path in zip(ZERO_SHOT_DATASETS, output.config, strict=True):
        text = run_config("zero-shot", dataset=dataset)(wildcards)
        commands.append(f"printf '%s' {shlex.quote(text)} > {shlex.quote(path)}")
    return " && ".join(commands)
