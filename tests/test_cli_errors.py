"""Every user error of every command ends as one line on stderr and exit status 2.

Each case runs through the CLI (`svitt.cli.main`, in-process; one representative case in a
subprocess, as Snakemake runs it) on small files in the real formats, and checks: status 2,
exactly one stderr line `svitt <command>: error: ...` naming the file / key / row, no
traceback, and never torch's advice to load a user's file with `weights_only=False`.
"""

from __future__ import annotations

import argparse
import errno
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import svitt
from svitt.cli import main
from svitt.config import ConfigError, asdict, load_config, with_tokenizer
from svitt.data.annotations import AnnotationError, DatasetError
from svitt.data.datasets import BadVideosError
from svitt.data.validate import BadDatasetError
from svitt.data.video_files import VideoError
from svitt.engine.stage import StageError
from svitt.engine.tracking import TrackingError
from svitt.errors import (
    DiskFullError,
    MissingFileError,
    OutputExistsError,
    UnreadableFileError,
    UserError,
)
from svitt.models.release import CheckpointFormatError
from svitt.models.weights import WeightsError
from svitt.plan.specs import SpecError

REPO = Path(__file__).resolve().parents[1]


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The single stderr line of a failed command, without its `svitt <command>: error: `."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "weights_only" not in err
    prefix = f"svitt {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0].removeprefix(prefix)


@pytest.fixture(scope="module")
def bench(make_bench):
    return make_bench("cli-errors")


def write_checkpoint(bench: dict, path: Path, **model_changes: dict) -> Path:
    """A checkpoint.pt as a stage writes it (model weights and resolved config), of the
    bench's tiny model with `model_changes` merged into its config."""
    from svitt.data.tokenizer import TextTokenizer
    from svitt.models.factory import create_model

    cfg = load_config(bench["config"], {"model": model_changes})
    cfg = with_tokenizer(cfg, TextTokenizer.from_dir(cfg.data.tokenizer))
    torch.save({"model": create_model(cfg.model).state_dict(), "config": asdict(cfg)}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(bench) -> Path:
    return write_checkpoint(bench, bench["base"] / "checkpoint.pt")


def stage(bench: dict, command: str, out: Path, *extra: str) -> int:
    return main([command, "--config", bench["config"], "--out", str(out), *extra])


# --- config, device, checkpoints, weights ---------------------------------------------------


def test_yaml_syntax_error_in_a_config_file(bench, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  vision: {dim: [32\n")
    assert main(["pretrain", "--config", str(bad), "--out", str(tmp_path / "out")]) == 2
    message = one_error_line(capsys, "pretrain")
    assert message.startswith(f"{bad}: not valid YAML (") and "line 3" in message


def test_yaml_syntax_error_in_a_set_override(bench, tmp_path, capsys):
    assert stage(bench, "pretrain", tmp_path / "out", "--set", "optim.lr=[0.1") == 2
    assert one_error_line(capsys, "pretrain").startswith("override 'optim.lr=[0.1': not valid YAML")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", "device: got 'gpu'; allowed: auto, cpu, cuda"),
        ("cuda", "device: got 'cuda' but no CUDA device is available; allowed here: auto or cpu"),
    ],
)
def test_bad_device(bench, tmp_path, capsys, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert stage(bench, "pretrain", tmp_path / "out", "--set", f"device={device}") == 2
    assert one_error_line(capsys, "pretrain") == message


@pytest.mark.parametrize("command", ["pretrain", "eval-retrieval", "eval-qa"])
def test_truncated_checkpoint(bench, checkpoint, tmp_path, capsys, command):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    data = [] if command == "pretrain" else ["--set", f"data.dataset={DATASETS[command][0]}"]
    assert stage(bench, command, tmp_path / "out", "--init-from", str(truncated), *data) == 2
    message = one_error_line(capsys, command)
    assert message.startswith(f"{truncated}: not a svitt checkpoint (or truncated)")


def test_a_pickle_that_is_no_checkpoint_never_shows_weights_only_advice(bench, tmp_path, capsys):
    foreign = tmp_path / "foreign.pt"
    torch.save(argparse.Namespace(model=1), foreign)  # torch refuses it with weights_only=True
    assert stage(bench, "pretrain", tmp_path / "out", "--init-from", str(foreign)) == 2
    assert one_error_line(capsys, "pretrain").startswith(
        f"{foreign}: not a svitt checkpoint (or truncated)"
    )  # and one_error_line checks that "weights_only" appears nowhere


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(bench, tmp_path, capsys, monkeypatch):
    def full(obj, handle, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "out"
    assert stage(bench, "pretrain", out) == 2
    message = one_error_line(capsys, "pretrain")
    assert message.startswith(f"{out / 'last.pt'}: cannot write it: No space left on device")
    assert not list(out.glob(".*.tmp"))


def test_checkpoint_of_another_shape(bench, tmp_path, capsys):
    wider = write_checkpoint(bench, tmp_path / "wide.pt", vision={"dim": 48, "heads": 2})
    assert stage(bench, "pretrain", tmp_path / "out", "--init-from", str(wider)) == 2
    message = one_error_line(capsys, "pretrain")
    assert message.startswith(f"{wider} does not fit the configured model: ")
    assert "another shape (e.g. 'vision.cls_token': [1, 1, 48], the model's [1, 1, 32])" in message


def test_checkpoint_with_missing_weights(bench, checkpoint, tmp_path, capsys):
    state = torch.load(checkpoint, weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("text.")}
    partial = tmp_path / "partial.pt"
    torch.save(state, partial)
    assert stage(bench, "pretrain", tmp_path / "out", "--init-from", str(partial)) == 2
    message = one_error_line(capsys, "pretrain")
    assert message.startswith(f"{partial} does not fit the configured model: ")
    assert "missing weights (e.g. ['text." in message


def test_image_weights_that_do_not_fit_the_encoder(bench, tmp_path, capsys):
    weights = tmp_path / "beit.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 32)}}, weights)
    extra = ["--set", f"model.weights.vision={weights}"]
    assert stage(bench, "pretrain", tmp_path / "out", *extra) == 2
    message = one_error_line(capsys, "pretrain")
    assert message.startswith(f"{weights} (beit_timm): no weights for ")


# --- annotation files, in every stage ------------------------------------------------------

DATASETS = {  # the dataset each stage reads and the annotation file it reads first
    "pretrain": ("webvid", "train"),
    "finetune-retrieval": ("msrvtt", "train"),
    "eval-retrieval": ("msrvtt", "test"),
    "finetune-qa": ("msrvtt_qa", "train"),
    "eval-qa": ("msrvtt_qa", "test"),
}


def bad_root(bench: dict, tmp_path: Path, name: str, split: str, text: str) -> Path:
    """A copy of one dataset of the benchmark (annotations only) whose `split` file is `text`."""
    source = bench["root"] / name / "annotations"
    annotations = tmp_path / "data" / name / "annotations"
    annotations.mkdir(parents=True)
    for file in source.iterdir():
        (annotations / file.name).write_bytes(file.read_bytes())
    (annotations / f"{split}.json").write_text(text)
    return tmp_path / "data"


@pytest.mark.parametrize("command", list(DATASETS))
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"video": "a.mp4", "caption": "x"', "not valid JSON (Expecting"),
        ('[{"video": "a.mp4"}]', "entry 0: missing field "),
    ],
)
def test_bad_annotation_file_in_every_stage(
    bench, checkpoint, tmp_path, capsys, command, text, expected
):
    name, split = DATASETS[command]
    root = bad_root(bench, tmp_path, name, split, text)
    data = ["--set", f"data.root={root}"]
    data += ["--set", f"data.train=[{name}]"] if command == "pretrain" else []
    data += [] if command == "pretrain" else ["--set", f"data.dataset={name}"]
    if command.startswith("eval"):
        data += ["--init-from", str(checkpoint)]
    assert stage(bench, command, tmp_path / "out", *data) == 2
    message = one_error_line(capsys, command)
    assert message.startswith(f"{root / name / 'annotations' / split}.json: {expected}")


# --- validate-data, synthetic, table, figure ------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "unknown dataset 'kinetics'; known datasets: webvid"),
        ("no-annotations", "dataset 'didemo': no annotation file in "),
        ("invalid-json", "test.json: not valid JSON"),
        ("no-split", "--splits: dataset 'webvid' has no split 'test'; allowed: train"),
    ],
)
def test_validate_data_errors(tmp_path, capsys, case, message):
    root = tmp_path / "data"
    dataset = {"unknown": "kinetics", "no-split": "webvid"}.get(case, "didemo")
    (root / "didemo" / "annotations").mkdir(parents=True)
    if case == "invalid-json":
        (root / "didemo" / "annotations" / "test.json").write_text("[{")
    args = ["validate-data", "--root", str(root), "--dataset", dataset, "--out"]
    args += [str(tmp_path / "report.json"), "--workers", "1"]
    args += ["--splits", "test"] if case == "no-split" else []
    assert main(args) == 2
    assert message in one_error_line(capsys, "validate-data")


def test_synthetic_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    assert main(["synthetic", "--out", str(tmp_path / "mine"), "--size", "ci"]) == 2
    message = one_error_line(capsys, "synthetic")
    assert message.startswith(f"{tmp_path / 'mine'} exists and is not the synthetic benchmark")


def profile_with_sparsity(tmp_path: Path, row: str) -> Path:
    """The default profile config with a sparsity table of one `row` (cells after the name)."""
    config = yaml.safe_load((REPO / "workflow" / "config" / "default.yaml").read_text())
    table = tmp_path / "sparsity.tsv"
    header = "name\tlabel\tattention\tK_l\tK_r\tG\tq_v_T4\tq_v_T8\tq_v_T16\tq_m\tq_m_qa\n"
    table.write_text(header + f"x\tX\tsparse\t{row}\n")
    config.update(sparsity_table=str(table), ablations=str(REPO / "ablations"))
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1\t-1\t56\t1\t1\t1\t1\t1", " ('x'), column 'K_r': an integer >= 0 is required, got -1"),
        ("2\t3\t56\t1\t1\t1\t1\t1", " ('x'), column 'K_l': an integer odd >= 1 is required, got 2"),
        ("1\t3\t0\t1\t1\t1\t1\t1", " ('x'), column 'G': an integer >= 1 is required, got 0"),
        ("1\t3\t56\t1\t1\t1\t1\t1\t7", " has more cells than the 11 columns of the header"),
    ],
)
def test_table_reports_a_bad_sparsity_row_by_row_and_column(tmp_path, capsys, row, message):
    profile = profile_with_sparsity(tmp_path, row)
    assert main(["table", "A1", "--profile", str(profile), "--out-dir", str(tmp_path)]) == 2
    line = one_error_line(capsys, "table")
    assert line.startswith(f"{tmp_path / 'sparsity.tsv'}: row 1{message}")


def test_table_names_a_metrics_file_not_yet_written(tmp_path, capsys, monkeypatch):
    config = yaml.safe_load((REPO / "workflow" / "config" / "default.yaml").read_text())
    config.update(
        sparsity_table=str(REPO / "ablations" / "sparsity.tsv"), ablations=str(REPO / "ablations")
    )
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # results/ of the profile: empty here
    paper_config = yaml.safe_load((REPO / "workflow" / "config" / "paper.yaml").read_text())
    paper_config.update(sparsity_table=config["sparsity_table"], ablations=config["ablations"])
    paper_profile = tmp_path / "paper.yaml"
    paper_profile.write_text(yaml.safe_dump(paper_config))
    paper = ["--paper-profile", str(paper_profile)]
    args = ["table", "A3", "--profile", str(profile), *paper, "--out-dir", str(tmp_path)]
    assert main(args) == 2
    message = one_error_line(capsys, "table")
    assert message.startswith("metrics file not found: results/") and message.endswith(
        "/metrics.json (run its job first)"
    )


@pytest.mark.parametrize("command", ["table", "figure"])
def test_report_commands_name_a_missing_profile(tmp_path, capsys, command):
    missing = tmp_path / "profile.yaml"
    args = ["A1", "--out-dir", str(tmp_path)] if command == "table" else ["keep-rate"]
    args += ["--profile", str(missing)] + ([] if command == "table" else ["--out", "x.png"])
    assert main([command, *args]) == 2
    assert one_error_line(capsys, command) == f"profile config not found: {missing}"


# --- one case as Snakemake runs it, and the error classes themselves -------------------------


def test_a_subprocess_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: [\n")
    done = subprocess.run(
        [sys.executable, "-m", "svitt", "pretrain", "--config", str(bad), "--out", "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"svitt pretrain: error: {bad}: not valid YAML (expected the node content, but found "
        "'<stream end>' at line 2, column 1)"
    ]


USER_ERRORS = [
    AnnotationError("a.json: entry 0: missing field 'caption'"),
    DatasetError("unknown dataset 'x'"),
    VideoError("videos/a.mp4", "file not found"),
    BadVideosError(["videos/a.mp4", "videos/b.mp4"]),
    BadDatasetError("didemo: 2 of 5 videos are bad"),
    ConfigError("optim.lr: got -1; allowed: a positive number"),
    StageError("stage"),
    TrackingError("http://x: unreachable"),
    WeightsError("w.pth: no weights"),
    SpecError("sparsity.tsv: row 1"),
    MissingFileError("config file not found: x.yaml"),
    OutputExistsError("out exists"),
    UnreadableFileError("x.pt: not a svitt checkpoint"),
    CheckpointFormatError("release.pth: unmapped keys ['x']"),
    DiskFullError("out/checkpoint.pt: cannot write it: No space left on device"),
]


@pytest.mark.parametrize("error", USER_ERRORS, ids=lambda e: type(e).__name__)
def test_user_errors_survive_pickling(error):
    """Worker processes send errors back pickled: each class must rebuild with its fields."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and isinstance(copy, UserError)
    assert str(copy) == str(error) and vars(copy) == vars(error)


def test_every_user_error_class_is_covered():
    """A new UserError subclass must be added to USER_ERRORS (and so be tested above)."""

    def subclasses(cls: type) -> set[type]:
        return {s for c in cls.__subclasses__() for s in {c, *subclasses(c)}}

    defined = {c for c in subclasses(UserError) if c.__module__.startswith("svitt.")}
    assert defined == {type(e) for e in USER_ERRORS}


# --- the CLI's own options -------------------------------------------------------------------


def test_version_and_stage_help_import_neither_torch_nor_mlflow(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"svitt {svitt.__version__}\n"
    script = (
        "import sys\nfrom svitt.cli import main\ntry:\n    main(['finetune-qa', '--help'])\n"
        "except SystemExit as end:\n    assert end.code == 0\n"
        "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--max-steps-this-run" in done.stdout and done.stdout.endswith("[]\n")
