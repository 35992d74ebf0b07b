"""Faults survived, nothing lost: the CI-sized DAG (`.test/config.yaml`), up to Table A8.

One uninterrupted run is the reference for everything else:
- a second clean run gives the same tables, byte for byte (determinism on CPU);
- a second `snakemake ... tables` after the complete run executes nothing;
- a run killed with SIGKILL (Snakemake and its jobs) while a pre-training job is between two
  checkpoints, then rerun with the same command, resumes that job at a step > 0 and gives the
  same tables;
- the same DAG through the SLURM profile on a live one-node cluster (tests/cluster/run.sh,
  root only), with a training job SIGKILLed and retried with twice the memory, gives the same
  tables.

Each run works in its own copy of the source tree (no results, no venv), so the checkout's
results/ is never touched. Set SVITT_SKIP_CLUSTER=1 to leave out the SLURM test.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cluster_skip_reason

# Several full runs of the CI-sized DAG: run by .ci/run after `make test` (`make test-faults`).
pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]
# Every run below adds this overlay, so that even the CI-sized stages (a few optimizer steps)
# leave a resumable last.pt between two steps: the window in which the kill lands.
OVERLAY_NAME = "faults-overlay.yaml"
OVERLAY = "run:\n  optim:\n    checkpoint_every: 1\n"
CONFIGFILES = ["workflow/config/default.yaml", ".test/config.yaml", OVERLAY_NAME]
# The part of the CI-sized DAG behind Table A8: every kind of job (data, the 4 -> 8 pre-training
# chain, fine-tuning, frame-order probes, a table) in 30 of the 65 jobs of `tables`, so that
# four runs fit in CI. SVITT_FAULTS_TARGET=tables runs the whole DAG each time.
PROFILE = "ci"  # .test/config.yaml
TARGET = os.environ.get("SVITT_FAULTS_TARGET", f"results/{PROFILE}/tables/A8.csv")
DAG = ["--cores", "all", "--configfile", *CONFIGFILES, "--", TARGET]
DAG_TIMEOUT = int(os.environ.get("SVITT_DAG_TIMEOUT", "1500"))  # seconds, one DAG run
RESUMED = re.compile(r"resuming at step (\d+)")


def copy_tree(dest: Path) -> Path:
    """The checkout's tracked and untracked-but-not-ignored files (what a clone would hold)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / OVERLAY_NAME).write_text(OVERLAY)
    return dest


def dag_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def start_dag(workdir: Path, *extra: str) -> subprocess.Popen:
    """Snakemake in its own session, so that the whole tree can be signalled at once."""
    log = open(workdir / "dag.log", "ab")  # noqa: SIM115 (closed by finish_dag)
    return subprocess.Popen(
        [sys.executable, "-m", "snakemake", *extra, *DAG],
        cwd=workdir,
        env=dag_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_tree(proc: subprocess.Popen, workdir: Path) -> None:
    """SIGKILL Snakemake's session, then any of its jobs still working in `workdir`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(50):
        left = [pid for pid in pids_in(workdir) if pid != os.getpid()]
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise AssertionError(f"processes in {workdir} survived SIGKILL: {pids_in(workdir)}")


def pids_in(workdir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == workdir:
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def finish_dag(proc: subprocess.Popen, workdir: Path, timeout: float = DAG_TIMEOUT) -> str:
    """Wait for a DAG run; its output, or a failure with the end of it."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # Snakemake cancels its jobs on SIGINT
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_tree(proc, workdir)
    output = (workdir / "dag.log").read_text(errors="replace")
    assert proc.returncode == 0, (
        f"snakemake exited {proc.returncode} in {workdir}:\n" + (output[-6000:])
    )
    return output


def run_dag(workdir: Path, *extra: str) -> str:
    return finish_dag(start_dag(workdir, *extra), workdir)


def tables_dir(workdir: Path) -> Path:
    """The CI profile's tables (the copied tree also holds the committed synthetic ones)."""
    tables = workdir / "results" / PROFILE / "tables"
    assert tables.is_dir(), f"no {tables}"
    return tables


def assert_same_tables(reference: Path, other: Path) -> None:
    names = sorted(p.name for p in reference.iterdir())
    assert names, f"no tables in {reference}"
    assert names == sorted(p.name for p in other.iterdir()), "different table files"
    _, mismatch, errors = filecmp.cmpfiles(reference, other, names, shallow=False)
    assert not mismatch and not errors, f"tables differ from the reference run: {mismatch}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One clean, uninterrupted run of the CI-sized DAG."""
    workdir = copy_tree(tmp_path_factory.mktemp("reference"))
    started = time.monotonic()
    run_dag(workdir)
    print(f"reference DAG run: {time.monotonic() - started:.0f} s")
    return workdir


def test_rerun_after_complete_run_executes_nothing(reference):
    before = {p: p.stat().st_mtime_ns for p in (reference / "results").rglob("*") if p.is_file()}
    output = run_dag(reference)
    assert "Nothing to be done" in output, output[-3000:]
    after = {p: p.stat().st_mtime_ns for p in (reference / "results").rglob("*") if p.is_file()}
    changed = [str(p) for p in after if before.get(p) != after[p]]
    assert not changed, f"a no-op rerun wrote files: {changed[:10]}"


def test_two_clean_runs_give_identical_tables(reference, tmp_path):
    workdir = copy_tree(tmp_path)
    run_dag(workdir)
    assert_same_tables(tables_dir(reference), tables_dir(workdir))


def first_interrupted_training(workdir: Path) -> Path | None:
    """A pre-training run directory with a resumable last.pt and no final checkpoint yet."""
    for last in sorted(workdir.glob("results/*/runs/pretrain/*/T*/last.pt")):
        if not (last.parent / "checkpoint.pt").exists():
            return last.parent
    return None


def test_sigkill_mid_training_then_rerun_resumes(reference, tmp_path):
    workdir = copy_tree(tmp_path)
    proc = start_dag(workdir)
    deadline = time.monotonic() + DAG_TIMEOUT
    victim = None
    while victim is None and proc.poll() is None and time.monotonic() < deadline:
        victim = first_interrupted_training(workdir)
        time.sleep(0.1)
    if victim is None:
        kill_tree(proc, workdir)
        pytest.fail(
            "no pre-training job was seen between two checkpoints (a last.pt and no checkpoint.pt)"
        )
    kill_tree(proc, workdir)  # Snakemake and every job: a lost machine, not a failed job
    assert not (victim / "checkpoint.pt").exists()

    # What a user does after a crash: unlock, then the same command again.
    run_dag(workdir, "--unlock")
    output = run_dag(workdir, "--rerun-incomplete")
    assert "rule pretrain" in output

    log = (victim / "log.txt").read_text()
    steps = [int(step) for step in RESUMED.findall(log)]
    assert steps and steps[-1] > 0, f"{victim} did not resume from last.pt:\n{log[-2000:]}"
    assert_same_tables(tables_dir(reference), tables_dir(workdir))


def test_slurm_cluster_survives_sigkill_and_matches_local_run(reference):
    reason = cluster_skip_reason()
    if reason:
        pytest.skip(reason)
    script = ROOT / "tests" / "cluster" / "run.sh"
    result = subprocess.run(
        [str(script), "--reference", str(tables_dir(reference)), "--target", TARGET]
        + ["--profile", PROFILE]
        + ["--configfile"]
        + [str(reference / name) for name in CONFIGFILES],
        cwd=ROOT,
        env=dag_env(),
        capture_output=True,
        text=True,
        timeout=DAG_TIMEOUT + 300,
    )
    print(result.stderr[-4000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
