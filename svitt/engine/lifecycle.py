"""The one lifecycle of every stage: `run(stage, args)`.

For each --config/--out pair (one for training stages, several for evaluations, evaluated in
turn in one process, each as if alone):

    config + overrides -> input checks -> tokenizer ids -> run identity
    -> finished already? (nothing to do) -> last.pt to resume from? (training stages)
    -> with process group, log file, CPU determinism, seed, MLflow run:
           results = stage.work(run)
           checkpoint.pt, outcomes.json, metrics.json, artifacts, MLflow run FINISHED
       an error ends the MLflow run FAILED, SIGINT/SIGTERM KILLED; the block's exit closes
       the log file and restores torch's determinism setting.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from svitt.config import (
    RunConfig,
    TrackingConfig,
    asdict,
    flatten,
    load_config,
    parse_override,
    with_tokenizer,
)
from svitt.engine import distributed as dist_utils
from svitt.engine.allocator import retain_freed_memory
from svitt.engine.checkpoint import (
    CHECKPOINT,
    LAST,
    METRICS,
    OUTCOMES,
    finished_run,
    run_identity,
    save_checkpoint,
    save_json,
    seed_everything,
)
from svitt.engine.distributed import DistEnv
from svitt.engine.stage import Results, Run, Stage, StageError
from svitt.engine.tracking import Tracker, git_commit
from svitt.errors import Interrupted, MissingFileError, OutputExistsError
from svitt.files import atomic_write_text
from svitt.models.checkpoints import load_checkpoint
from svitt.startup import permanent_imports

log = logging.getLogger("svitt.engine")

LOG_FILE = "log.txt"
RESOLVED_CONFIG = "resolved_config.yaml"


def run(stage: Stage, args: argparse.Namespace) -> int:
    """`stage` on each --config/--out pair of `args` in turn; the first failure stops the rest
    (the CLI turns it into its line and exit status)."""
    configs, outs = args.config, args.out
    if not isinstance(configs, list):
        configs, outs = [configs], [outs]
    # The process group a run joins (`init_distributed`) serves every pair of the command.
    with dist_utils.process_group():
        if len(configs) != len(outs):
            raise StageError(
                f"{len(configs)} --config but {len(outs)} --out: give one --out per --config"
            )
        for config, out in zip(configs, outs, strict=True):
            run_once(stage, argparse.Namespace(**{**vars(args), "config": config, "out": out}))
    return 0


def run_once(stage: Stage, args: argparse.Namespace) -> None:
    """One run of `stage` into `args.out`."""
    from svitt.data.tokenizer import TextTokenizer

    cfg = load_config(args.config, *(parse_override(text) for text in args.overrides))
    stage.check(cfg)
    if args.init_from is not None and not args.init_from.is_file():
        raise MissingFileError(f"--init-from: checkpoint not found: {args.init_from}")
    tokenizer = TextTokenizer.from_dir(cfg.data.tokenizer)
    cfg = with_tokenizer(cfg, tokenizer)
    out: Path = args.out
    source = str(args.init_from) if args.init_from is not None else None
    identity = run_identity(stage.name, asdict(cfg), source)
    finished = finished_run(
        out, identity, needs_checkpoint=stage.trains, needs_outcomes=stage.evaluates
    )
    if not args.force and finished:
        print(f"svitt {stage.name}: {out} already holds this finished run; nothing to do")
        return
    resume_state = resume_from(out / LAST, identity, args.force) if stage.trains else None

    env = dist_utils.init_distributed(cfg.device)
    with log_file(out, env), deterministic_threads(env.device):
        if env.device.type == "cpu":
            retain_freed_memory()
        seed_everything(cfg.seed + env.rank)
        with tracked(
            cfg.tracking,
            run_name=f"{stage.name}:{out}",
            # CPU results depend on the thread count (see docs/engine.md, "Exact resume")
            params={**flatten(asdict(cfg)), "threads": torch.get_num_threads()},
            tags=tags(stage.name, cfg, out, source),
            enabled=env.is_main,
            resume_run_id=resume_state.get("tracking_run_id") if resume_state else None,
        ) as tracker:
            log.info(
                "svitt %s -> %s (%s, %d threads, world size %d)%s",
                stage.name,
                out,
                env.device,
                torch.get_num_threads(),
                env.world_size,
                f", resuming at step {resume_state['step']}" if resume_state else "",
            )
            run = Run(
                stage.name,
                cfg,
                out,
                env,
                tokenizer,
                identity,
                tracker,
                args.init_from,
                max_steps_this_run=getattr(args, "max_steps_this_run", None),  # training only
                resume_state=resume_state,
            )
            results = stage.work(run)
            if results is None:  # stopped early: last.pt resumes, and reopens the MLflow run
                return
            write_results(run, results, stage.trains)
    dist_utils.barrier()


def resume_from(last: Path, identity: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
    """The state of `last` (last.pt) to resume from, if it exists and is this run's."""
    if not last.is_file() or force:
        return None
    state = load_checkpoint(last)
    if state.get("identity") != identity:
        raise OutputExistsError(
            f"{last} belongs to a run with a different stage, config or starting checkpoint; "
            "pass --force to start over (it will be replaced) or use another --out"
        )
    return state


# --- what surrounds the work -------------------------------------------------------------------


@contextmanager
def log_file(out: Path, env: DistEnv) -> Iterator[None]:
    """Rank 0 logs to `out`/log.txt (appended on resume) until the block ends; the other
    ranks log warnings only."""
    root = logging.getLogger()
    if not env.is_main:
        root.setLevel(logging.WARNING)
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


@contextmanager
def deterministic_threads(device: torch.device) -> Iterator[None]:
    """Bit-exact repeats (and resumes) on CPU at any thread count, restored after the block.

    With several threads the accumulating backward of an index lookup (the relative-bias
    table) adds in whatever order the threads meet; torch's deterministic kernels do not. One
    thread is deterministic already and keeps its kernels, so the DAG's runs (1 thread each)
    are unchanged."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if device.type == "cpu" and torch.get_num_threads() > 1:
        with permanent_imports():  # the first call imports torch._inductor
            torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        now = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        if now != before:  # only then: setting it imports torch._inductor (~1 s per job)
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@contextmanager
def tracked(cfg: TrackingConfig, **start: Any) -> Iterator[Tracker]:
    """The run's MLflow run (`Tracker.start(cfg, **start)`). Whatever ends the block early
    ends it too: KILLED on SIGINT/SIGTERM, FAILED otherwise. A normal end leaves it to the
    stage: FINISHED in `write_results`, still running when training stopped early."""
    tracker = Tracker.start(cfg, **start)
    try:
        yield tracker
    except (Interrupted, KeyboardInterrupt):
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise


def tags(stage: str, cfg: RunConfig, out: Path, source: str | None) -> dict[str, str]:
    sp = cfg.model.sparsity
    sparsity = (
        f"{sp.attention} K_l={sp.local_blocks} K_r={sp.random_blocks} G={sp.block_size} "
        f"q_v={sp.visual_keep_rate} q_m={sp.cross_keep_rate} order={sp.token_order}"
    )
    tags = {
        "stage": stage,
        "arch": cfg.model.arch,
        "sparsity": sparsity,
        "num_frames": str(cfg.model.vision.num_frames),
        "dataset": cfg.data.dataset or "+".join(cfg.data.train),
        "git_commit": git_commit(),
        "out": str(out),
        "init_from": source or "",
    }
    return {**tags, **cfg.tags}


# --- results -----------------------------------------------------------------------------------


def write_results(run: Run, results: Results, trains: bool) -> None:
    """checkpoint.pt (training stages) and outcomes.json (evaluations), then metrics.json:
    once metrics.json exists the stage is done. last.pt goes last, so a kill in between
    still resumes."""
    metrics = {**results.metrics, "skipped_videos": sorted(set(run.skipped)), "run": run.identity}
    if run.env.is_main:
        if trains:
            assert run.resume_state is not None
            save_checkpoint(run.out / CHECKPOINT, run.resume_state)
        if results.outcomes is not None:
            save_json(run.out / OUTCOMES, results.outcomes)
            run.tracker.log_artifact(run.out / OUTCOMES)
        save_json(run.out / METRICS, metrics)
        scalars = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        run.tracker.log_metrics(scalars, step=metrics.get("train_steps", 0))
        run.tracker.log_artifact(run.out / METRICS)
        # Not config.yaml: the workflow keeps its input config under that name in --out.
        config_path = run.out / RESOLVED_CONFIG
        atomic_write_text(config_path, yaml.safe_dump(asdict(run.cfg), sort_keys=False))
        run.tracker.log_artifact(config_path)
        run.tracker.log_artifact(run.out / LOG_FILE)
        (run.out / LAST).unlink(missing_ok=True)
        log.info("wrote %s", run.out / METRICS)
    run.tracker.finish()
