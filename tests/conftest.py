"""Fixtures and helpers shared by the test modules: the synthetic "ci" benchmark (written
once per session, read-only for the tests) and tiny-model run configs on it; the tiny model
shapes of the model tests (`from conftest import tiny_text, tiny_vision`); one torch thread;
whether this machine may host the one-node SLURM cluster."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from svitt.cli import main
from svitt.config import TextConfig, VisionConfig

VOCAB = 40  # the tiny models' vocabulary; ids 0-3 are the special tokens
SPECIAL_TOKENS = {"pad_token_id": 0, "cls_token_id": 1, "sep_token_id": 2, "mask_token_id": 3}


def tiny_vision(**changes: Any) -> VisionConfig:
    """A 4-frame clip of 16 px frames in 8 px patches (16 tokens), 2 layers of width 32."""
    shape = {"image_size": 16, "patch_size": 8, "num_frames": 4, "dim": 32, "depth": 2, "heads": 4}
    return VisionConfig(**{**shape, **changes})


def tiny_text(**changes: Any) -> TextConfig:
    """A 3-layer BERT of width 32 over VOCAB ids, the last 2 layers multimodal."""
    shape = {"vocab_size": VOCAB, "dim": 32, "depth": 3, "cross_depth": 2, "heads": 4}
    shape |= {"mlp_dim": 64, "max_positions": 16, **SPECIAL_TOKENS}
    return TextConfig(**{**shape, **changes})


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Tiny shapes run fastest on one thread; two contend badly on a busy 2-core machine."""
    import torch  # here, not at the top: the workflow tests never load torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cluster_skip_reason() -> str | None:
    """Why this machine may not host the one-node SLURM cluster of tests/cluster/ (None: it
    may)."""
    if os.environ.get("SVITT_SKIP_CLUSTER"):
        return "SVITT_SKIP_CLUSTER is set"
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "the SLURM tests need root on Linux (they start munged, slurmctld, slurmd)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and not conf.is_symlink():
        return f"{conf} exists: a real SLURM installation, which the test leaves alone"
    return None


REPO = Path(__file__).resolve().parents[1]

TINY: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "model": {
        "vision": {
            "image_size": 16,
            "patch_size": 8,
            "num_frames": 4,
            "dim": 32,
            "depth": 2,
            "heads": 2,
        },
        "text": {
            "dim": 32,
            "depth": 2,
            "cross_depth": 1,
            "heads": 2,
            "mlp_dim": 64,
            "max_positions": 32,
        },
        "sparsity": {
            "attention": "sparse",
            "block_size": 4,
            "random_blocks": 1,
            "visual_keep_rate": 0.75,
            "visual_drop_layers": [0],
            "cross_drop_layers": [0],
        },
        "embed_dim": 16,
        "qa_decoder_depth": 1,
    },
    "data": {"num_workers": 0, "text_max_len": 16, "train": ["webvid"]},
    "optim": {
        "lr": 0.002,
        "epochs": 2,
        "warmup_epochs": 0.5,
        "batch_size": 8,
        "checkpoint_every": 2,
    },
    "eval": {"batch_size": 16, "k_test": 4, "answer_top_k": 8},
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the specs in a scratch directory that is the working directory."""
    shutil.copytree(REPO / "ablations", tmp_path / "ablations")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def ci_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The "ci" synthetic benchmark, written by the CLI as the workflow does."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    assert main(["synthetic", "--out", str(root), "--size", "ci", "--seed", "0"]) == 0
    return root


@pytest.fixture(scope="session")
def make_bench(
    tmp_path_factory: pytest.TempPathFactory, ci_root: Path
) -> Callable[[str], dict[str, Any]]:
    """`make_bench(name)`: a folder with a TINY config on the ci benchmark and its own MLflow
    store: {"base": folder, "root": data root, "config": config path, "db": the store's sqlite
    file}."""

    def make(name: str) -> dict[str, Any]:
        base = tmp_path_factory.mktemp(name)
        config = dict(
            TINY,
            data={**TINY["data"], "root": str(ci_root), "tokenizer": str(ci_root / "tokenizer")},
        )
        config["tracking"] = {"uri": f"sqlite:///{base}/mlflow/mlflow.db"}
        path = base / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        db = base / "mlflow" / "mlflow.db"
        return {"base": base, "root": ci_root, "config": str(path), "db": db}

    return make
