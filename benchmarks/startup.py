"""Start-up of the embedded DAG's jobs: each job kind timed as a whole process, the way
Snakemake starts it (one thread), stopped before its first optimizer step.

    python -m benchmarks.startup [--results results/ci] [--checkout DIR] [--repeat 5]

`--results` is a finished CI-sized DAG run (`snakemake --cores 2 tables --configfile
workflow/config/default.yaml .test/config.yaml` writes `results/ci`): the jobs read its
data, run configs and checkpoints, and write only into a temporary folder (their own
MLflow store included, created by an untimed first run of each kind). Training jobs run with
`--max-steps-this-run 0`: everything but the training steps. `eval-retrieval` is the whole
zero-shot job on one dataset: its evaluation takes well under a second at this size.

`--checkout DIR` times the `svitt` of another checkout (put first on PYTHONPATH), so two
calls give a before/after comparison on the same inputs. Prints a table of median [min-max]
seconds per job kind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    kind: str  # the svitt command
    run: str  # run directory under <results>/runs whose config.yaml it uses
    init: str  # checkpoint it starts from, under <results>/runs
    trains: bool


# One job per kind of the embedded DAG, each the SViTT (hybrid) variant of its table.
JOBS = (
    Job("pretrain", "pretrain/svitt-hybrid/T8", "pretrain/svitt-hybrid/T4/checkpoint.pt", True),
    Job(
        "finetune-retrieval",
        "finetune-retrieval/svitt-hybrid/T8/charades",
        "pretrain/svitt-hybrid/T8/checkpoint.pt",
        True,
    ),
    Job(
        "finetune-qa",
        "finetune-qa/svitt-hybrid/T8/anet_qa",
        "pretrain/svitt-hybrid/T8/checkpoint.pt",
        True,
    ),
    Job(
        "eval-retrieval",
        "zero-shot/svitt-hybrid/T8/didemo/normal",
        "pretrain/svitt-hybrid/T8/checkpoint.pt",
        False,
    ),
)
# What Snakemake exports to a rule with `threads: 1` (every training and evaluation rule).
ONE_THREAD = {
    name: "1"
    for name in (
        "OMP_NUM_THREADS",
        "GOTO_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    )
}


def job_command(job: Job, runs: Path, out: Path) -> list[str]:
    command = [sys.executable, "-m", "svitt.cli", job.kind, "--config"]
    command += [str(runs / job.run / "config.yaml"), "--out", str(out)]
    command += ["--init-from", str(runs / job.init)]
    return command + (["--max-steps-this-run", "0"] if job.trains else [])


def job_environment(checkout: Path) -> dict[str, str]:
    path = [str(checkout)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, **ONE_THREAD, "PYTHONPATH": os.pathsep.join(path)}


def check_inputs(results: Path) -> Path:
    runs = results / "runs"
    needed = [results / "data"] + [runs / job.run / "config.yaml" for job in JOBS]
    needed += [runs / job.init for job in JOBS]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise SystemExit(
            f"--results {results}: not a finished CI-sized DAG run (missing {missing[0]}); "
            "build it with `snakemake --cores 2 tables --configfile workflow/config/default.yaml "
            ".test/config.yaml` or pass another --results"
        )
    return runs


def time_job(job: Job, runs: Path, work: Path, env: dict[str, str], attempt: str) -> float:
    """Seconds from start to exit of one fresh run of `job` (a new --out, so no resume)."""
    out = work / "out" / f"{job.kind}-{attempt}"
    start = time.perf_counter()
    done = subprocess.run(job_command(job, runs, out), cwd=work, env=env, capture_output=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise SystemExit(f"svitt {job.kind} failed with status {done.returncode}: {tail}")
    shutil.rmtree(out)
    return seconds


def svitt_location(checkout: Path, env: dict[str, str], work: Path) -> str:
    code = "import svitt; print(svitt.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True
    )
    location = done.stdout.strip()
    if done.returncode != 0 or not Path(location).resolve().is_relative_to(checkout.resolve()):
        raise SystemExit(f"--checkout {checkout}: `import svitt` finds {location or 'nothing'}")
    return location


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results/ci"))
    parser.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per job kind")
    parser.add_argument("--jobs", nargs="+", choices=[job.kind for job in JOBS])
    args = parser.parse_args(argv)
    runs = check_inputs(args.results.resolve())
    env = job_environment(args.checkout)
    jobs = [job for job in JOBS if args.jobs is None or job.kind in args.jobs]
    with tempfile.TemporaryDirectory(prefix="svitt-startup-") as folder:
        work = Path(folder)  # also the working directory: the checkout's own files stay out
        print(f"svitt from {svitt_location(args.checkout, env, work)}", file=sys.stderr)
        # The configs name their data as results/ci/data, relative to the working directory.
        (work / "results" / "ci").mkdir(parents=True)
        (work / "results" / "ci" / "data").symlink_to(args.results.resolve() / "data")
        for job in jobs:  # untimed: creates the MLflow store, loads the C++ kernel once
            time_job(job, runs, work, env, "warm-up")
        # Job kinds in turn, so that a slow spell of the machine hits all of them alike.
        seconds: dict[str, list[float]] = {job.kind: [] for job in jobs}
        for attempt in range(args.repeat):
            for job in jobs:
                seconds[job.kind].append(time_job(job, runs, work, env, str(attempt)))
    print("| job | median s | min-max s |\n|---|---|---|")
    for kind, values in seconds.items():
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"| {kind} | {statistics.median(values):.2f} | {spread} |")


if __name__ == "__main__":
    main()
