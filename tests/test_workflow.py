"""The Snakemake DAG: config validation, dry-runs, config-only tables, the CI-sized run.

Every test runs Snakemake in a scratch copy of the workflow, so the repository's results/
stay untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from svitt.data.annotations import REGISTRY
from svitt.models.archs import ARCH_NAMES
from svitt.plan.specs import load_datasets

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "ablations", ".test")
TABLES = [f"A{i}" for i in range(1, 9)]


def copy_workflow(root: Path) -> Path:
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name)
        else:
            shutil.copy(source, root / name)
    return root


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path)


def snakemake(
    cwd: Path, *args: str, cores: str | None = "2", timeout: int = 300
) -> subprocess.CompletedProcess:
    # Rules call `svitt`: the project's environment must be on PATH, as with `make tables`.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *(["--cores", cores] if cores else []), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` block of a dry-run: rule -> number of jobs."""
    block = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.MULTILINE)}


def planned_outputs(output: str) -> set[str]:
    """Every output file of the jobs a dry-run lists."""
    lines = re.findall(r"^\s+output: (.+)$", output, re.MULTILINE)
    return {path for line in lines for path in line.split(", ")}


PAPER = "--configfile=workflow/config/paper.yaml"
CI = ("--configfile", "workflow/config/default.yaml", ".test/config.yaml")


def test_schema_and_ablations_spell_the_library_names() -> None:
    """The schema's dataset and arch names, and the dataset table's, are the library's."""
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["definitions"]["dataset_name"]["enum"] == list(REGISTRY)
    assert list(schema["properties"]["archs"]["properties"]) == list(ARCH_NAMES)
    assert set(load_datasets(REPO / "ablations")) <= set(REGISTRY)


def test_schema_rejects_a_bad_key_in_one_line(workflow_copy: Path) -> None:
    config = yaml.safe_load((workflow_copy / "workflow/config/default.yaml").read_text())
    config["pretrain"]["epochz"] = 3
    (workflow_copy / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workflow_copy, "-n", "tables", "--configfile=bad.yaml")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "config: unknown key pretrain.epochz; allowed keys of pretrain: datasets, settings,"
        " by_frames, by_dataset, frames"
    ]
    # A bad key of a run config fragment: one line too, naming the key and the allowed ones;
    # also in a recipe's stage that only a pre-training chain (no target itself) reads.
    typos = {
        "run={model: {vision: {dept: 2}}}": (
            "unknown config key 'model.vision.dept'; allowed keys: image_size"
        ),
        "recipes={plain: {pretrain: {model: {vision: {dept: 2}}}}}": (
            "run pretrain/svitt-dense+plain/T8: unknown config key 'model.vision.dept'"
        ),
    }
    for typo, message in typos.items():
        result = snakemake(workflow_copy, "-n", "tables", "--config", typo)
        assert result.returncode != 0
        assert message in result.stderr.strip().splitlines()[-1]
        assert "Traceback" not in result.stderr
    # A partial config alone: the missing key and how to combine it.
    result = snakemake(workflow_copy, "-n", "tables", "--configfile=.test/config.yaml")
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "'sparsity_table' is a required property" in line and "goes after" in line


def test_config_overrides_typed_on_the_command_line(workflow_copy: Path) -> None:
    default = job_counts(snakemake(workflow_copy, "-n", "tables").stdout)
    # Nested numbers arrive from --config as strings; a new profile name keeps the defaults.
    overrides = ["profile=mine", "data={seed: 1}", "run={eval: {batch_size: 32}}"]
    result = snakemake(workflow_copy, "-n", "tables", "--config", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout) == default
    assert "results/mine/runs/pretrain/svitt-hybrid/T4/metrics.json" in result.stdout
    # The override documented in paper.yaml's header.
    data = "data={root: /elsewhere, tokenizer: /elsewhere/bert}"
    result = snakemake(workflow_copy, "-n", "-p", "tables", PAPER, "--config", data)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--root /elsewhere" in result.stdout


def test_new_sparsity_row_adds_its_jobs(workflow_copy: Path) -> None:
    with (workflow_copy / "ablations/sparsity.tsv").open("a") as handle:
        handle.write("edge\tEdge only\tsparse\t1\t3\t56\t1.0\t1.0\t1.0\t1.0\t1.0\n")
    result = snakemake(workflow_copy, "-n", "tables")
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = set(re.findall(r"runs/([^\s,]*edge[^\s,]*)/metrics\.json", result.stdout))
    # Pre-training (SViTT at T = 4 -> 8 for A3/A5/A8, Frozen at T = 4 for A6), zero-shot A3 and
    # A6 (each zero-shot job evaluates every zero-shot dataset), fine-tuning A5 and A8, the
    # A8 shuffled-frame probes, and A8's plain-recipe runs of the new row.
    assert outputs == {
        "pretrain/svitt-edge/T4",
        "pretrain/svitt-edge/T8",
        "pretrain/frozen-edge/T4",
        "zero-shot/svitt-edge/T8/msrvtt/normal",
        "zero-shot/svitt-edge/T8/didemo/normal",
        "zero-shot/frozen-edge/T4/didemo/normal",
        "zero-shot/frozen-edge/T4/msrvtt/normal",
        "finetune-retrieval/svitt-edge/T8/charades",
        "finetune-retrieval/svitt-edge/T8/ssv2_label",
        "finetune-qa/svitt-edge/T8/anet_qa",
        "finetune-retrieval/svitt-edge/T8/ssv2_label/shuffle",
        "finetune-qa/svitt-edge/T8/anet_qa/shuffle",
        *plain_recipe_runs("edge"),
    }


def plain_recipe_runs(sparsity: str) -> set[str]:
    """Table A8's runs of the SViTT with the plain recipe: its pre-training chain to T = 8, the
    two fine-tunings and their shuffled-frame probes."""
    variant = f"svitt-{sparsity}+plain"
    tuned = [f"finetune-retrieval/{variant}/T8/ssv2_label", f"finetune-qa/{variant}/T8/anet_qa"]
    pretrain = [f"pretrain/{variant}/T4", f"pretrain/{variant}/T8"]
    return {*pretrain, *tuned, *(f"{run}/shuffle" for run in tuned)}


def test_a_recipe_row_adds_exactly_its_jobs(workflow_copy: Path) -> None:
    result = snakemake(workflow_copy, "-n", "tables", *CI)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = set(re.findall(r"runs/([^\s,]*\+plain[^\s,]*)/metrics\.json", result.stdout))
    assert outputs == plain_recipe_runs("dense") | plain_recipe_runs("hybrid")
    spec = workflow_copy / "ablations/A8.yaml"
    rows = [line for line in spec.read_text().splitlines(True) if "recipe: plain}" not in line]
    spec.write_text("".join(rows))
    without = snakemake(workflow_copy, "-n", "tables", *CI)
    assert without.returncode == 0, without.stderr[-3000:]
    counts, fewer = job_counts(result.stdout), job_counts(without.stdout)
    assert {rule: counts[rule] - fewer[rule] for rule in counts if counts[rule] != fewer[rule]} == {
        "pretrain": 4,
        "finetune": 4,
        "probe_finetuned": 4,
    }
    assert planned_outputs(without.stdout) == {
        path for path in planned_outputs(result.stdout) if "+plain" not in path
    }


SEEDS = ".test/seeds.yaml"  # seeds: [0, 1], over the CI config


def run_paths(output: str) -> set[str]:
    """The run of every metrics.json a dry-run plans."""
    return set(re.findall(r"runs/([^\s,]+)/metrics\.json", output))


def test_a_second_seed_adds_each_run_once_more(workflow_copy: Path) -> None:
    one = snakemake(workflow_copy, "-n", "tables", *CI)
    two = snakemake(workflow_copy, "-n", "tables", *CI, SEEDS)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-3000:] + two.stderr[-3000:]
    runs = run_paths(one.stdout)

    def seeded(path: str) -> str:
        task, model, *rest = path.split("/")
        return "/".join([task, f"{model}@seed1", *rest])

    assert run_paths(two.stdout) == runs | {seeded(path) for path in runs}
    counts, more = job_counts(one.stdout), job_counts(two.stdout)
    for rule in ("pretrain", "finetune", "probe_finetuned", "zero_shot"):
        assert more[rule] == 2 * counts[rule], rule
    assert more["validate_data"] == counts["validate_data"]  # the data are the seeds' own


def test_revalidating_one_dataset_reruns_only_its_jobs(workflow_copy: Path) -> None:
    # Every output of the CI-sized DAG as an empty file, then `--touch` puts them in DAG order:
    # a finished run, as far as Snakemake can tell.
    planned = snakemake(workflow_copy, "-n", "tables", *CI)
    assert planned.returncode == 0, planned.stderr[-3000:]
    everything = planned_outputs(planned.stdout)
    for path in everything:
        target = workflow_copy / path
        if path == "results/ci/data":  # the synthetic data root, a directory output
            target.mkdir(parents=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    assert snakemake(workflow_copy, "--touch", "tables", *CI).returncode == 0
    assert "Nothing to be done" in snakemake(workflow_copy, "-n", "tables", *CI).stdout

    # A re-validated dataset: new content (Snakemake compares checksums of small inputs), newer.
    report = workflow_copy / "results/ci/runs/data/charades.json"
    report.write_text('{"dataset": "charades"}\n')
    later = max((workflow_copy / path).stat().st_mtime for path in everything) + 1
    os.utime(report, (later, later))
    rerun = planned_outputs(snakemake(workflow_copy, "-n", "tables", *CI).stdout)
    report = {path for path in rerun if "/runs/report/" in path}  # the HTML report's copies
    runs = {path for path in rerun if "/runs/" in path} - report
    # Exactly the runs on Charades (fine-tuning and its probes), none of pre-training or of
    # other datasets; the tables that read them, A2 (statistics of every dataset) and the
    # claims report (A5's hybrid-vs-dense claim on Charades).
    assert runs == {p for p in everything if "/runs/" in p and "/charades/" in p}
    assert runs and all("finetune-retrieval/" in path for path in runs)
    tables = {Path(path).stem for path in rerun - runs - report}
    assert tables == {"A2", "A5", "claims"}
    assert {Path(path).name for path in report} == {"claims.md"}


def test_paper_a1_a4_need_no_data(workflow_copy: Path) -> None:
    targets = ["results/paper/tables/A1.csv", "results/paper/tables/A4.csv"]
    result = snakemake(workflow_copy, *targets, PAPER)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validate_data" not in result.stderr + result.stdout
    a1 = pd.read_csv(workflow_copy / targets[0], dtype=str)
    ours = a1[(a1.source == "paper") & (a1.config == "Hybrid")]
    reported = a1[a1.source == "reported"]
    assert list(ours.edges_m) == list(reported.edges_m) == ["1.48", "2.60", "4.61"]
    assert list(ours.sparsity) == list(reported.sparsity) == ["0.80", "0.91", "0.96"]
    a4 = pd.read_csv(workflow_copy / targets[1], dtype=str)
    ours = a4[a4.source == "paper"].drop(columns="source").reset_index(drop=True)
    reported = a4[a4.source == "reported"].drop(columns="source").reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, reported)


def test_paper_dry_run_lists_the_whole_dag(workflow_copy: Path) -> None:
    result = snakemake(workflow_copy, "-n", "tables", PAPER)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    # The embedded default's 15 less its 4 plain-recipe ones (the paper profile's recipe is the
    # plain one), and Singularity-temporal at T = 4 (Table A8, paper profile only).
    assert counts["pretrain"] == 12 and counts["validate_data"] == 8
    assert counts["table"] == 8


def test_paper_without_data_stops_before_training(workflow_copy: Path, tmp_path: Path) -> None:
    # Weights and tokenizer present, the data root missing.
    weights = tmp_path / "weights"
    weights.mkdir()
    config = yaml.safe_load((workflow_copy / "workflow/config/paper.yaml").read_text())
    for fragment in (config["run"], config["archs"]["frozen"]):
        for key in ("vision", "text"):
            if fragment["model"]["weights"].get(key):
                path = weights / Path(fragment["model"]["weights"][key]).name
                path.touch()
                fragment["model"]["weights"][key] = str(path)
    (weights / "tokenizer.json").touch()
    config["data"]["tokenizer"] = str(weights)
    missing = tmp_path / "no-such-data"
    config["data"]["root"] = str(missing)
    (workflow_copy / "paper-here.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workflow_copy, "tables", "--configfile=paper-here.yaml")
    assert result.returncode != 0
    logs = "".join(p.read_text() for p in (workflow_copy / "results/paper/runs/data").glob("*.log"))
    assert str(missing) in logs
    # Run configs may have been written; no training started.
    assert not list((workflow_copy / "results/paper/runs").glob("*/*/*/stage.log"))
    assert not list((workflow_copy / "results/paper/runs").rglob("checkpoint.pt"))


@pytest.mark.slow
def test_ci_dag_runs_end_to_end(workflow_copy: Path) -> None:
    configs = ["--configfile", "workflow/config/default.yaml", ".test/config.yaml"]
    result = snakemake(workflow_copy, "tables", *configs, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    tables = workflow_copy / "results/ci/tables"
    for name in TABLES:
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0
    a3 = pd.read_csv(tables / "A3.csv")
    assert a3[a3.source == "ci"]["MSR-VTT Mean"].notna().all()
    again = snakemake(workflow_copy, "tables", *configs)
    assert "Nothing to be done" in again.stdout + again.stderr
    # A second seed: Table A8 over both, with the seed-0 runs reused.
    seeds = snakemake(workflow_copy, "results/ci/tables/A8.csv", *configs, SEEDS, timeout=600)
    assert seeds.returncode == 0, seeds.stderr[-5000:]
    assert "runs/pretrain/svitt-hybrid/T4/" not in seeds.stdout + seeds.stderr
    a8 = pd.read_csv(tables / "A8.csv")
    ours = a8[(a8.source == "ci") & a8["SSv2-Label N std"].notna()]
    assert len(ours) == 5  # every model row; the baselines have no seeds
    assert "± " in (tables / "A8.md").read_text()
