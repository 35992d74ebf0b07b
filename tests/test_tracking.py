"""MLflow tracking: local sqlite store, concurrent writers, unreachable servers fail fast."""

import multiprocessing as mp
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from svitt.config import TrackingConfig
from svitt.engine.tracking import (
    DEFAULT_URI,
    Tracker,
    TrackingError,
    check_reachable,
    resolve_uri,
    sqlite_path,
    with_retry,
)


def _log_run(uri: str, name: str, steps: int, barrier) -> None:
    barrier.wait()  # both processes hit the fresh database (schema creation) together
    tracker = Tracker.start(
        TrackingConfig(uri=uri), name, {"a.b": 1, "name": name}, {"stage": name}
    )
    for step in range(steps):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        tracker.flush()  # one write per step: the worst case for lock contention
    tracker.finish()


def test_two_processes_log_to_one_fresh_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_log_run, args=(uri, f"run{i}", 25, barrier)) for i in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
    assert [proc.exitcode for proc in procs] == [0, 0]

    db = sqlite3.connect(tmp_path / "store" / "mlflow.db")
    runs = db.execute("select name, status from runs order by name").fetchall()
    assert runs == [("run0", "FINISHED"), ("run1", "FINISHED")]
    counts = db.execute("select count(*) from metrics where key = 'loss'").fetchone()[0]
    assert counts == 50
    location = db.execute(
        "select artifact_location from experiments where name = 'svitt'"
    ).fetchone()[0]
    # An absolute store: an absolute location beside it.
    assert location == (tmp_path / "store" / "mlartifacts").as_uri()


def test_uri_resolution_order(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(TrackingConfig()) == DEFAULT_URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert resolve_uri(TrackingConfig()) == "http://server:5000"
    assert resolve_uri(TrackingConfig(uri="sqlite:///x.db")) == "sqlite:///x.db"
    assert str(sqlite_path("sqlite:////abs/x.db")) == "/abs/x.db"
    assert str(sqlite_path("sqlite:///results/mlflow.db")) == "results/mlflow.db"
    assert sqlite_path("http://server:5000") is None


def test_unreachable_server_fails_at_start():
    # Port 9 (discard) on localhost is closed: connection refused without waiting.
    with pytest.raises(TrackingError, match=r"unreachable.*MLFLOW_TRACKING_URI"):
        check_reachable("http://127.0.0.1:9", timeout=2.0)
    with pytest.raises(TrackingError, match="unreachable"):
        Tracker.start(TrackingConfig(uri="http://127.0.0.1:9"), "x", {}, {})


def test_retry_recovers_from_lock_errors_and_reraises_others():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert with_retry(flaky, base_delay=0.001) == "ok"
    assert len(calls) == 3
    with pytest.raises(ValueError, match="other"):
        with_retry(lambda: (_ for _ in ()).throw(ValueError("other")), base_delay=0.001)


def test_disabled_tracker_writes_nothing(tmp_path):
    tracker = Tracker.start(
        TrackingConfig(uri=f"sqlite:///{tmp_path}/x.db"), "r", {"a": 1}, {}, enabled=False
    )
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.finish()
    assert not (tmp_path / "x.db").exists()


def test_artifacts_live_next_to_the_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    tracker = Tracker.start(TrackingConfig(uri="sqlite:///results/mlflow.db"), "r", {}, {})
    tracker.log_artifact(tmp_path / "metrics.json")
    tracker.finish()
    assert list((tmp_path / "results" / "mlartifacts").rglob("metrics.json"))
    assert not (tmp_path / "mlruns").exists()
    # Reopening the same run (a resumed stage) continues it instead of starting another.
    again = Tracker.start(
        TrackingConfig(uri="sqlite:///results/mlflow.db"), "r", {}, {}, resume_run_id=tracker.run_id
    )
    assert again.run_id == tracker.run_id
    again.finish()


def _log_one_artifact(cwd: Path, name: str) -> None:
    """A stage's run in the default store of `cwd`, with one artifact (in a process of its own,
    as a stage is: MLflow keeps one database connection per URI and process)."""
    os.chdir(cwd)
    Path("metrics.json").write_text("{}")
    tracker = Tracker.start(TrackingConfig(uri="sqlite:///results/mlflow.db"), name, {}, {})
    tracker.log_artifact("metrics.json")
    tracker.finish()


def _in_own_process(cwd: Path, name: str) -> str:
    proc = mp.get_context("spawn").Process(target=_log_one_artifact, args=(cwd, name))
    proc.start()
    proc.join(timeout=240)
    assert proc.exitcode == 0
    db = sqlite3.connect(cwd / "results/mlflow.db")
    return db.execute("select run_uuid from runs where name = ?", (name,)).fetchone()[0]


def test_a_copied_store_logs_artifacts_into_the_copy(tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    first = _in_own_process(original, "first")
    shutil.copytree(original / "results", copy / "results")
    second = _in_own_process(copy, "second")
    # The second run's artifact is in the copy, and nothing of it in the original.
    assert (copy / f"results/mlartifacts/{second}/artifacts/metrics.json").is_file()
    assert not (original / f"results/mlartifacts/{second}").exists()
    assert (original / f"results/mlartifacts/{first}/artifacts/metrics.json").is_file()
    db = sqlite3.connect(copy / "results/mlflow.db")
    uris = dict(db.execute("select name, artifact_uri from runs").fetchall())
    assert uris["second"] == f"results/mlartifacts/{second}/artifacts"
