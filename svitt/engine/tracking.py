"""MLflow tracking for every stage: params, per-step curves, final metrics, artifacts, tags.

The URI is `tracking.uri` from the run config, else `$MLFLOW_TRACKING_URI`, else a local
sqlite file `results/mlflow.db` (relative to the working directory: the repo root when
Snakemake runs) with artifacts beside it in `results/mlartifacts`. A relative store records
that artifact directory relative too, so a copied or moved checkout logs into its own copy.
Stages that Snakemake runs
in parallel share that file: its creation (MLflow's schema migrations) happens under a file
lock, and writes that still meet "database is locked" are retried with backoff. Multi-node
cluster runs should use a tracking server (`http://host:5000`); one that does not answer
fails the stage at start, not after training.

MLflow is imported only when a tracker starts (it is slow to import), and only rank 0 logs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from svitt.config import TrackingConfig
from svitt.errors import UserError
from svitt.startup import permanent_imports

DEFAULT_URI = "sqlite:///results/mlflow.db"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on one param value
FLUSH_EVERY = 200  # buffered metric values per write
T = TypeVar("T")
_JITTER = random.Random()  # not the global generator: logging must not shift training's draws

log = logging.getLogger(__name__)


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used; the message names the URI and how to change it."""


def resolve_uri(cfg: TrackingConfig) -> str:
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///relative` or `sqlite:////absolute` URI."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return Path(uri[len(prefix) :].split("?", 1)[0])


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast on a tracking server that does not answer its health endpoint."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow server {uri}: {url} answered HTTP {response.status}")
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({err}); start it, or set "
            "tracking.uri / MLFLOW_TRACKING_URI to a reachable server or a sqlite:/// file"
        ) from None


def is_lock_error(err: BaseException) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database is busy" in text


def with_retry(call: Callable[[], T], attempts: int = 12, base_delay: float = 0.05) -> T:
    """Run `call`, retrying with jittered exponential backoff while sqlite reports a lock."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:
            if not is_lock_error(err) or attempt == attempts - 1:
                raise
            time.sleep(base_delay * 2**attempt * (1 + _JITTER.random()))
    raise AssertionError("unreachable")


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise first contact with a sqlite store: creating the schema is not concurrent-safe."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def git_commit(cwd: str | Path = ".") -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """One MLflow run. Disabled trackers (ranks other than 0) accept every call and do nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.uri = ""
        self.run_id: str | None = None
        self._client: Any = None
        self._pending: list[Any] = []

    @classmethod
    def start(
        cls,
        cfg: TrackingConfig,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        enabled: bool = True,
        resume_run_id: str | None = None,
    ) -> Tracker:
        """Open (or, with `resume_run_id`, reopen) a run and log its params and tags."""
        tracker = cls(enabled)
        if not enabled:
            return tracker
        tracker.uri = resolve_uri(cfg)
        check_reachable(tracker.uri)
        # The client imports MLflow, and its first store access the SQLAlchemy store.
        with permanent_imports():
            from mlflow.tracking import MlflowClient

            _quiet_mlflow()  # after the import: importing mlflow resets its loggers to INFO
            with store_lock(tracker.uri):
                client = MlflowClient(tracking_uri=tracker.uri)
                experiment_id = with_retry(
                    lambda: _experiment_id(client, tracker.uri, cfg.experiment)
                )
        tracker._client = client
        tracker.run_id = with_retry(
            lambda: _reopen_or_create(client, experiment_id, run_name, dict(tags), resume_run_id)
        )
        tracker.log_params(params)
        return tracker

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            with_retry(lambda chunk=chunk: self._client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Buffered: written every FLUSH_EVERY values and at `finish`."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.enabled or not self._pending:
            return
        batch, self._pending = self._pending, []
        for start in range(0, len(batch), 1000):
            chunk = batch[start : start + 1000]
            with_retry(lambda chunk=chunk: self._client.log_batch(self.run_id, metrics=chunk))

    def log_artifact(self, path: str | Path) -> None:
        if not self.enabled:
            return
        with_retry(lambda: self._client.log_artifact(self.run_id, str(path)))

    def finish(self, status: str = "FINISHED") -> None:
        """End the run: FINISHED, FAILED (an error) or KILLED (SIGINT/SIGTERM)."""
        if not self.enabled or self.run_id is None:
            return
        self.flush()
        with_retry(lambda: self._client.set_terminated(self.run_id, status))


def _experiment_id(client: Any, uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    db = sqlite_path(uri)
    if db is None:  # a server: its own --artifacts-destination
        return client.create_experiment(name)
    # Beside the database; MLflow would use ./mlruns of whatever the CWD is.
    artifacts = db.parent / "mlartifacts"
    experiment_id = client.create_experiment(name, artifact_location=artifacts.resolve().as_uri())
    if not db.is_absolute():
        _record_relative_location(db, experiment_id, artifacts)
    return experiment_id


def _record_relative_location(db: Path, experiment_id: str, artifacts: Path) -> None:
    """Store the artifact directory as written (relative to the working directory, like the
    database's URI): MLflow makes every local location absolute, which would send a copied
    store's artifacts back into the original directory. Runs take their artifact URI from
    this column, and MLflow resolves a relative one against the working directory."""
    with closing(sqlite3.connect(db, timeout=60)) as conn, conn:
        conn.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
            (artifacts.as_posix(), int(experiment_id)),
        )


def _reopen_or_create(
    client: Any, experiment_id: str, run_name: str, tags: dict[str, str], run_id: str | None
) -> str:
    if run_id is not None:
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception as err:
            if is_lock_error(err):
                raise
            log.warning("MLflow run %s cannot be reopened (%s); starting a new one", run_id, err)
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
