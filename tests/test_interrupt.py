"""Ctrl-C and SIGTERM lose nothing: a real signal mid-run, then the same command resumes.

A tiny pre-training run is interrupted by SIGINT (Ctrl-C), resumed and interrupted again by
SIGTERM (`timeout`, `scancel`), then resumed to the end. Each interrupted run stops at an
optimizer-step boundary with last.pt saved there, ends its MLflow run as KILLED, prints one
line saying how to resume and exits with 130 / 143; the final weights equal those of an
uninterrupted run, bit for bit (one CPU thread in every run, so that they all run the same
kernels as the in-process reference).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from svitt.cli import main

# 24 pairs of the ci benchmark's msrvtt, 4 per step: 6 steps per epoch, 90 in all, each a
# few milliseconds: enough steps for the signal to land mid-run.
SETTINGS = [
    "data.train=[msrvtt]",
    "optim.batch_size=4",
    "optim.epochs=15",
    "optim.checkpoint_every=2",
]
TOTAL = 90


@pytest.fixture(scope="module")
def bench(make_bench):
    return make_bench("interrupt")


OVERRIDES = [arg for setting in SETTINGS for arg in ("--set", setting)]


def start(bench: dict, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "svitt", "pretrain", "--config", bench["config"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*command, "--out", str(out), *OVERRIDES],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def interrupt_when(process: subprocess.Popen, ready, signum: int) -> tuple[int, str]:
    """Send `signum` once `ready()` holds (training has made progress), then wait."""
    deadline = time.monotonic() + 90
    while not ready():
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "no training progress"
        time.sleep(0.02)
    process.send_signal(signum)
    return finish(process)


def saved_step(out: Path) -> int:
    return torch.load(out / "last.pt", weights_only=True)["step"]


def mlflow_status(bench: dict, out: Path) -> list[str]:
    db = sqlite3.connect(bench["db"])
    rows = db.execute(
        "select status from runs join tags on runs.run_uuid = tags.run_uuid "
        "where tags.key = 'out' and tags.value = ?",
        (str(out),),
    ).fetchall()
    return [status for (status,) in rows]


def error_lines(err: str) -> list[str]:
    """stderr without the log records (the log goes to stderr too)."""
    return [line for line in err.strip().splitlines() if " INFO " not in line]


def test_interrupted_runs_save_at_a_step_and_resume_exactly(bench):
    straight = bench["base"] / "straight"  # in this process, also at one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            main(["pretrain", "--config", bench["config"], "--out", str(straight), *OVERRIDES]) == 0
        )
    finally:
        torch.set_num_threads(threads)

    out = bench["base"] / "interrupted"
    code, err = interrupt_when(start(bench, out), (out / "last.pt").is_file, signal.SIGINT)
    first = saved_step(out)
    assert code == 130 and 2 <= first < TOTAL
    assert "Traceback" not in err
    assert error_lines(err) == [
        f"svitt pretrain: SIGINT: stopped at step {first} of {TOTAL}, saved in "
        f"{out / 'last.pt'}; rerun the same command to resume from there"
    ]
    assert mlflow_status(bench, out) == ["KILLED"]

    written = (out / "last.pt").stat().st_mtime_ns
    code, err = interrupt_when(
        start(bench, out), lambda: (out / "last.pt").stat().st_mtime_ns != written, signal.SIGTERM
    )
    second = saved_step(out)
    assert code == 143 and first < second < TOTAL
    assert error_lines(err)[0].startswith(f"svitt pretrain: SIGTERM: stopped at step {second} ")
    assert f"resuming at step {first}" in (out / "log.txt").read_text()
    assert mlflow_status(bench, out) == ["KILLED"]  # the same MLflow run, reopened

    assert finish(start(bench, out))[0] == 0
    assert f"resuming at step {second}" in (out / "log.txt").read_text()
    assert mlflow_status(bench, out) == ["FINISHED"]
    weights = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    resumed = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    for name, value in weights.items():
        assert torch.equal(value, resumed[name]), name
