"""The SLURM profile and the one-node test cluster, without running the DAG.

- the profile resolves per-rule GPUs, memory and the torchrun launcher (a Snakemake dry run;
  no SLURM needed);
- tests/cluster/cluster.sh starts a real munged + slurmctld + slurmd, runs a batch job with a
  job step, and stops every daemon again (root only; a few seconds).
The full DAG on the cluster, with a fault, is in tests/test_faults.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cluster_skip_reason

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "cluster" / "cluster.sh"
PROFILE = "workflow/profiles/slurm"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
DAG = ["--configfile", "workflow/config/default.yaml", ".test/config.yaml", "--", "tables"]


def dry_run(**env_overrides: str) -> dict[str, list[tuple[str, str]]]:
    """rule name -> [(resources line, shell command)] of a dry run through the profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SVITT_SLURM_", "SNAKEMAKE_"))}
    env.update(env_overrides)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [*SNAKEMAKE, "--profile", PROFILE, "--dry-run", "--printshellcmds", *DAG],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs: dict[str, list[tuple[str, str]]] = {}
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout)
    for block in blocks:
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        resources = re.search(r"resources: (.*)", block)
        shell = re.search(r"Shell command: (.*?)(?:\n\n|\Z)", block, re.S)
        jobs.setdefault(head.group(1), []).append(
            (resources.group(1) if resources else "", shell.group(1) if shell else "")
        )
    return jobs


def test_profile_gpu_cluster():
    jobs = dry_run(SVITT_SLURM_GPUS="2", SVITT_SLURM_PARTITION="gpu", SVITT_SLURM_ACCOUNT="lab")
    for resources, shell in jobs["pretrain"]:
        assert "gpu=2" in resources and "cpus_per_gpu=8" in resources
        assert "mem_mb=64000," in resources and "slurm_partition=gpu" in resources
        assert "slurm_account=lab" in resources
        assert f"{TORCHRUN}=2 --no-python svitt pretrain " in shell, shell
    for resources, shell in jobs["zero_shot"]:
        assert "gpu=1" in resources
        assert f"{TORCHRUN}=1 --no-python svitt eval-retrieval " in shell, shell
    for resources, _ in jobs["table"]:
        assert "gpu=" not in resources and "runtime=10" in resources


def test_profile_cpu_only_cluster():
    jobs = dry_run(SVITT_SLURM_GPUS="0")
    for resources, shell in jobs["pretrain"] + jobs["finetune"]:
        assert "gpu=0" in resources and "mem_mb=4000," in resources
        assert "slurm_partition" not in resources and "slurm_account" not in resources
        assert "torchrun" not in shell, shell
        assert re.search(r"(^|[;&|]) *svitt (pretrain|finetune-)", shell), shell


TORCHRUN = "torchrun --standalone --nnodes=1 --nproc-per-node"
SBATCH = ["sbatch", "--wait", "--parsable", "--mem=100", "--cpus-per-task=1", "-t", "2"]


def daemon_pids(state: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(state) in cmdline:
                pids.append(int(proc.name))
    return pids


@pytest.mark.cluster
def test_one_node_cluster_runs_a_job_and_stops(tmp_path):
    reason = cluster_skip_reason()
    if reason:
        pytest.skip(reason)
    subprocess.run([str(CLUSTER), "install"], check=True, timeout=600)
    state = tmp_path / "slurm"
    env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"))
    try:
        up = subprocess.run(
            [str(CLUSTER), "up", str(state)], capture_output=True, text=True, timeout=180
        )
        assert up.returncode == 0, up.stderr
        assert f"export SLURM_CONF={state}/slurm.conf" in up.stdout
        out = tmp_path / "job.out"
        # A batch job with a job step, as the Snakemake plugin submits them.
        subprocess.run(
            [*SBATCH, "-o", str(out), "--wrap", "srun -n1 echo step-ok"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert out.read_text().strip() == "step-ok"
    finally:
        down = subprocess.run(
            [str(CLUSTER), "down", str(state)], capture_output=True, text=True, timeout=120
        )
    assert down.returncode == 0, down.stderr
    assert not daemon_pids(state), "a daemon outlived `cluster.sh down`"
    assert not Path("/etc/slurm/slurm.conf").is_symlink()
