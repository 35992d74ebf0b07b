"""Fixtures shared by the test modules: the synthetic "ci" benchmark (written once per
session, read-only for the tests) and tiny-model run configs on it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from svitt.cli import main

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
