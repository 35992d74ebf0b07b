# SViTT experiment DAG: data -> progressive pre-training (T = 4 -> 8 -> 16) -> zero-shot and
# fine-tuned retrieval, video QA, probes -> the supplement's Tables A1-A8 and Figures A1-A3.
# Targets: `tables`, `figures`, `all`. Docs: docs/workflow.md.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default unless the command line names config files (--configfile): Snakemake
# would otherwise merge a profile over the default's keys (e.g. the tiny model). `--config`
# values merge over whichever it is.
if not workflow.config_settings.configfiles:

    configfile: "workflow/config/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/downstream.smk"
include: "workflow/rules/ablations.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule tables:
    input:
        table_files(),
        claims_files(),


rule figures:
    input:
        figure_files(),


rule all:
    default_target: True
    input:
        rules.tables.input,
        rules.figures.input,
        [PROFILE.metrics(run) for run in extra_runs()],
