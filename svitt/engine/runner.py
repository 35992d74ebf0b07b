"""What every stage shares: its options, the run directory, the training loop, the results.

A stage is `start_run` (config, checks, resume/finished detection, DDP, logging, MLflow),
then its own model and data, `train` (resumable) and/or its evaluation, then `finish_run`
(checkpoint.pt, metrics.json, artifacts). The training loop reads top to bottom like
nanoGPT's: one optimizer step per `grad_accum` micro-batches, cosine schedule per step,
a resumable `last.pt` every `optim.checkpoint_every` steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from svitt.config import ConfigError, ModelConfig, RunConfig, asdict, flatten, load_config
from svitt.config import parse_override as parse_override_text
from svitt.engine import distributed as dist_utils
from svitt.engine.allocator import retain_freed_memory
from svitt.engine.checkpoint import (
    CHECKPOINT,
    LAST,
    METRICS,
    finished_run,
    load_checkpoint,
    rng_state,
    run_identity,
    save_checkpoint,
    save_json,
    seed_everything,
    set_rng_state,
)
from svitt.engine.distributed import DistEnv, epoch_batches
from svitt.engine.optim import build_optimizer, build_scheduler
from svitt.engine.tracking import Tracker, git_commit
from svitt.errors import Interrupted, MissingFileError, OutputExistsError, UserError, stop_requests
from svitt.files import atomic_write_text

if TYPE_CHECKING:
    from svitt.data.tokenizer import TextTokenizer

log = logging.getLogger("svitt.engine")

LOG_FILE = "log.txt"
RESOLVED_CONFIG = "resolved_config.yaml"
LossFn = Callable[[nn.Module, dict[str, Any]], dict[str, Tensor]]


class StageError(UserError, RuntimeError):
    """A stage cannot run as asked; the message says what to change."""


# --- config ------------------------------------------------------------------------------------


def resolve_config(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, *(parse_override_text(text) for text in args.overrides))


def with_tokenizer(cfg: RunConfig, tokenizer: TextTokenizer) -> RunConfig:
    """Vocabulary size and special token ids come from the run's tokenizer, not the config."""
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "mask_token_id": tokenizer.mask_token_id,
    }
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ConfigError(
            f"data.tokenizer: {cfg.data.tokenizer} defines no {', '.join(missing)}; allowed: "
            "a BERT-style tokenizer with [PAD], [CLS], [SEP] and [MASK]"
        )
    text = dataclasses.replace(cfg.model.text, vocab_size=len(tokenizer), **ids)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, text=text))


def eval_model_config(cfg: RunConfig) -> tuple[ModelConfig, dict[str, Any]]:
    """The model to evaluate with the eval overrides applied, and the overrides used.

    Overrides change the model's config (keep rate, token order, clip length); the weights
    are then loaded (and inflated) into that model, so no forward-time flag exists.
    """
    ev, model = cfg.eval, cfg.model
    overrides: dict[str, Any] = {"frame_order": ev.frame_order}
    sparsity, vision = model.sparsity, model.vision
    if ev.visual_keep_rate is not None:
        sparsity = dataclasses.replace(sparsity, visual_keep_rate=ev.visual_keep_rate)
        overrides["visual_keep_rate"] = ev.visual_keep_rate
    if ev.token_order is not None:
        sparsity = dataclasses.replace(sparsity, token_order=ev.token_order)
        overrides["token_order"] = ev.token_order
    if ev.num_frames is not None:
        vision = dataclasses.replace(vision, num_frames=ev.num_frames)
        overrides["num_frames"] = ev.num_frames
    try:
        return dataclasses.replace(model, sparsity=sparsity, vision=vision), overrides
    except ConfigError as err:
        raise ConfigError(f"eval overrides {overrides}: model.{err}") from None


# --- weights -----------------------------------------------------------------------------------


def checkpoint_frames(state: Mapping[str, Any], path: Path) -> int:
    try:
        return int(state["config"]["model"]["vision"]["num_frames"])
    except (KeyError, TypeError):
        raise StageError(f"{path}: checkpoint records no config.model.vision.num_frames") from None


def resized(
    weights: Mapping[str, Tensor], src_frames: int, model_cfg: ModelConfig, prefix: str
) -> dict[str, Tensor]:
    """`weights` of a `src_frames` model resized to `model_cfg`'s clip length if it differs
    (4 -> 8 -> 16 progressive training; evaluation with another number of frames).
    `prefix` names the visual encoder in the state dict."""
    from svitt.models.inflate import inflate_state_dict

    dst_frames = model_cfg.vision.num_frames
    # The frame-level baseline encodes every frame alone: its weights fit any clip length.
    if src_frames == dst_frames or model_cfg.frame_level:
        return dict(weights)
    _, h, w = model_cfg.vision.grid
    log.info("inflating weights from %d to %d frames", src_frames, dst_frames)
    return inflate_state_dict(dict(weights), src_frames, dst_frames, (h, w), prefix=prefix)


def load_strict(model: nn.Module, weights: Mapping[str, Tensor], source: str | Path) -> None:
    ours = model.state_dict()
    missing = [k for k in ours if k not in weights]
    unexpected = [k for k in weights if k not in ours]
    if missing or unexpected:
        raise StageError(
            f"{source} does not fit the configured model: {len(missing)} missing weights "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            "check model.arch and the model shape against the checkpoint's config"
        )
    reshaped = [k for k, v in weights.items() if v.shape != ours[k].shape]
    if reshaped:
        key = reshaped[0]
        raise StageError(
            f"{source} does not fit the configured model: {len(reshaped)} weights have another "
            f"shape (e.g. {key!r}: {list(weights[key].shape)}, the model's "
            f"{list(ours[key].shape)}); check the model shape against the checkpoint's config"
        )
    model.load_state_dict(weights)


def checkpoint_weights(path: Path, model_cfg: ModelConfig, prefix: str) -> dict[str, Tensor]:
    """The model weights of checkpoint `path`, inflated to `model_cfg`'s clip length."""
    state = load_checkpoint(path)
    try:
        return resized(state["model"], checkpoint_frames(state, path), model_cfg, prefix)
    except ValueError as err:  # inflation met weights of another shape
        raise StageError(
            f"{path} does not fit the configured model ({err}); check model.arch and the "
            "model shape against the checkpoint's config"
        ) from None


def load_into(model: nn.Module, path: Path, model_cfg: ModelConfig, prefix: str) -> None:
    load_strict(model, checkpoint_weights(path, model_cfg, prefix), path)


def autocast(env: DistEnv) -> Any:
    """bf16 on GPU; full precision on CPU (where bf16 matmuls are slow and inexact)."""
    if env.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# --- input checks (before any work) ------------------------------------------------------------


def check_datasets(cfg: RunConfig, names: Sequence[str], tasks: Sequence[str], split: str) -> None:
    """Each dataset is registered for one of `tasks` and its annotation file exists."""
    from svitt.data.annotations import DECLARATION, REGISTRY, dataset_paths, find_spec

    allowed = [name for name, spec in REGISTRY.items() if spec.task in tasks]
    key = "data.dataset" if len(tasks) == 1 and tasks[0] != "pretrain" else "data.train"
    if not names:
        raise ConfigError(f"{key}: got nothing; allowed: {allowed}")
    for name in names:
        spec = find_spec(name, cfg.data.root)
        if spec is None or spec.task not in tasks:
            raise ConfigError(
                f"{key}: got {name!r}; allowed: {allowed}, or a {'/'.join(tasks)} dataset "
                f"declared by {DECLARATION} in its folder under data.root"
            )
        annotation = dataset_paths(cfg.data.root, name).annotation(split)  # type: ignore[arg-type]
        if not annotation.is_file():
            root = repr(cfg.data.root) if cfg.data.root else "not set"
            raise MissingFileError(
                f"{key} {name!r}: annotation file not found: {annotation} (data.root: {root})"
            )


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Run:
    stage: str
    cfg: RunConfig
    out: Path
    env: DistEnv
    tokenizer: TextTokenizer
    identity: dict[str, Any]
    tracker: Tracker
    init_from: Path | None
    skipped: list[str] = field(default_factory=list)
    resume_state: dict[str, Any] | None = None


def start_run(
    args: argparse.Namespace, stage: str, check: Callable[[RunConfig], None], training: bool
) -> Run | None:
    """Everything before the work: config and input checks, tokenizer ids, finished/resume
    detection, process group, log file, MLflow. None if --out already holds this run."""
    from svitt.data.tokenizer import TextTokenizer

    cfg = resolve_config(args)
    check(cfg)
    if args.init_from is not None and not args.init_from.is_file():
        raise MissingFileError(f"--init-from: checkpoint not found: {args.init_from}")
    tokenizer = TextTokenizer.from_dir(cfg.data.tokenizer)
    cfg = with_tokenizer(cfg, tokenizer)
    out: Path = args.out
    source = str(args.init_from) if args.init_from is not None else None
    identity = run_identity(stage, asdict(cfg), source)
    if not args.force and finished_run(out, identity, needs_checkpoint=training):
        print(f"svitt {stage}: {out} already holds this finished run; nothing to do")
        return None
    resume_state = _resume_state(out / LAST, identity, args.force) if training else None

    env = dist_utils.init_distributed(cfg.device)
    _setup_logging(out, env)
    if env.device.type == "cpu":
        retain_freed_memory()
        deterministic_threads()
    seed_everything(cfg.seed + env.rank)
    resume_id = resume_state.get("tracking_run_id") if resume_state else None
    tracker = Tracker.start(
        cfg.tracking,
        run_name=f"{stage}:{out}",
        # CPU results depend on the thread count (see docs/engine.md, "Exact resume")
        params={**flatten(asdict(cfg)), "threads": torch.get_num_threads()},
        tags=_tags(stage, cfg, out, source),
        enabled=env.is_main,
        resume_run_id=resume_id,
    )
    log.info(
        "svitt %s -> %s (%s, %d threads, world size %d)%s",
        stage,
        out,
        env.device,
        torch.get_num_threads(),
        env.world_size,
        f", resuming at step {resume_state['step']}" if resume_state else "",
    )
    run = Run(stage, cfg, out, env, tokenizer, identity, tracker, args.init_from, [], resume_state)
    _ACTIVE.append(run)
    return run


def deterministic_threads() -> None:
    """Bit-exact repeats (and resumes) on CPU at any thread count. With several threads the
    accumulating backward of an index lookup (the relative-bias table) adds in whatever order
    the threads meet; torch's deterministic kernels do not. One thread is deterministic
    already and keeps its kernels, so the DAG's runs (1 thread each) are unchanged."""
    if torch.get_num_threads() > 1:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _resume_state(last: Path, identity: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
    if not last.is_file() or force:
        return None
    state = load_checkpoint(last)
    if state.get("identity") != identity:
        raise OutputExistsError(
            f"{last} belongs to a run with a different stage, config or starting checkpoint; "
            "pass --force to start over (it will be replaced) or use another --out"
        )
    return state


def _setup_logging(out: Path, env: DistEnv) -> None:
    _close_log_file()  # the previous run's, when one process evaluates several
    root = logging.getLogger()
    if not env.is_main:
        root.setLevel(logging.WARNING)
        return
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    _LOG_HANDLERS.append(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def _tags(stage: str, cfg: RunConfig, out: Path, source: str | None) -> dict[str, str]:
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


_ACTIVE: list[Run] = []  # this process's run, so that a crash marks its MLflow run failed
_LOG_HANDLERS: list[logging.Handler] = []  # the current run's log file


def run_stage(args: argparse.Namespace, body: Callable[[argparse.Namespace, str], int]) -> int:
    """`body(args, stage)` on each --config/--out pair in turn (one for training stages),
    guarded; the first failure stops the rest."""
    configs, outs = args.config, args.out
    if not isinstance(configs, list):
        configs, outs = [configs], [outs]

    def each() -> int:
        if len(configs) != len(outs):
            raise StageError(
                f"{len(configs)} --config but {len(outs)} --out: give one --out per --config"
            )
        for config, out in zip(configs, outs, strict=True):
            body(argparse.Namespace(**{**vars(args), "config": config, "out": out}), args.command)
        return 0

    return guarded(each)


def guarded(body: Callable[[], int]) -> int:
    """Run a stage; whatever ends it early ends its MLflow run too (KILLED on an interrupt,
    FAILED otherwise). Its log file and torch's determinism setting (`deterministic_threads`)
    end with it. The CLI turns the exception into its line."""
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        return body()
    except (Interrupted, KeyboardInterrupt):
        _abort_active("KILLED")
        raise
    except BaseException:
        _abort_active("FAILED")
        raise
    finally:
        dist_utils.shutdown()
        _close_log_file()
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def _close_log_file() -> None:
    while _LOG_HANDLERS:
        handler = _LOG_HANDLERS.pop()
        logging.getLogger().removeHandler(handler)
        handler.close()


def _abort_active(status: str) -> None:
    while _ACTIVE:
        _ACTIVE.pop().tracker.finish(status)


# --- training ---------------------------------------------------------------------------------


@dataclass
class TrainSummary:
    steps: int
    epochs: list[dict[str, float]]  # mean losses of each epoch, in order

    def as_metrics(self) -> dict[str, Any]:
        first, final = self.epochs[0], self.epochs[-1]
        return {
            "train_steps": self.steps,
            "train_loss_first_epoch": first,
            "train_loss_last_epoch": final,
            "train_loss_per_epoch": self.epochs,
        }


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


def progress(env: DistEnv, **kwargs: Any) -> tqdm:
    """Rate and ETA on a terminal; silent in log files (see ProgressLog) and on ranks
    other than 0."""
    quiet = not env.is_main or not sys.stderr.isatty()
    return tqdm(disable=quiet, dynamic_ncols=True, mininterval=1.0, **kwargs)


class ProgressLog:
    """Where no terminal shows the bar (a Snakemake job's log file): a log line about every
    `every_s` seconds with step/total, rate and ETA."""

    def __init__(self, env: DistEnv, start: int, total: int, every_s: float = 30.0) -> None:
        self.enabled = env.is_main and not sys.stderr.isatty()
        self.start, self.total, self.every_s = start, total, every_s
        self.started = self.last = time.monotonic()

    def update(self, step: int, loss: float) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < self.every_s and step < self.total):
            return
        self.last = now
        rate = (step - self.start) / max(now - self.started, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        log.info(
            "step %d/%d  %.2f steps/s  ETA %s  loss %.4f",
            step,
            self.total,
            rate,
            time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?",
            loss,
        )


@dataclass
class LossLog:
    """Per-epoch means of the logged losses; its state is part of last.pt so that a resumed
    run reports exactly the epoch means of an uninterrupted one."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, losses: Mapping[str, float]) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def close_epoch(self) -> dict[str, float]:
        self.epochs.append({name: total / self.count for name, total in self.sums.items()})
        self.sums, self.count = {}, 0
        return self.epochs[-1]


def save_last(
    run: Run,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    steps_per_epoch: int,
    losses: LossLog,
) -> None:
    """Write the resumable last.pt (rank 0) with every process's RNG state."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "data": {"epoch": step // steps_per_epoch, "steps_per_epoch": steps_per_epoch},
        "losses": dataclasses.asdict(losses),
        "skipped": _all_ranks(run.skipped),
        "rng": dist_utils.gather_objects(rng_state()),
        "config": asdict(run.cfg),
        "identity": run.identity,
        "stage": run.stage,
        "tracking_run_id": run.tracker.run_id,
        "threads": torch.get_num_threads(),
    }
    if run.env.is_main:
        save_checkpoint(run.out / LAST, state)
    dist_utils.barrier()
    run.resume_state = state


def epoch_loader(
    dataset: Dataset, collate: Callable, batches: list[list[int]], cfg: RunConfig, epoch: int
) -> DataLoader:
    """The micro-batches `batches` (from `epoch_batches`) of training epoch `epoch`, with that
    epoch's frame and crop draws."""
    dataset.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        # Worker seeds from this generator, not the global RNG: a resumed run that builds its
        # loader mid-epoch draws the same random numbers as an uninterrupted one.
        generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch),
    )


def train(
    run: Run,
    model: nn.Module,
    dataset: Dataset,
    collate: Callable,
    loss_fn: LossFn,
    max_steps_this_run: int | None = None,
    all_parameters_used: bool = True,
) -> TrainSummary | None:
    """Train `model` in place; None when stopped early by `max_steps_this_run` (last.pt holds
    the state to resume from). The data order of epoch e is a permutation seeded by (seed, e),
    so a resumed run skips exactly the micro-batches it already did."""
    cfg, env, opt = run.cfg, run.env, run.cfg.optim
    micro_per_epoch = len(
        epoch_batches(len(dataset), opt.batch_size, cfg.seed, 0, 0, env.world_size)
    )
    steps_per_epoch = micro_per_epoch // opt.grad_accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"optim.grad_accum: got {opt.grad_accum}; allowed: at most the {micro_per_epoch} "
            f"batches of {opt.batch_size} in one epoch"
        )
    total = steps_per_epoch * opt.epochs
    model.to(env.device)
    optimizer = build_optimizer(model, opt)
    scheduler = build_scheduler(
        optimizer, round(opt.warmup_epochs * steps_per_epoch), total, opt.min_lr_ratio
    )
    step, losses = 0, LossLog()
    if run.resume_state is not None:
        state = run.resume_state
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses = state["step"], LossLog(**state["losses"])
        run.skipped.extend(state["skipped"])
        rng = state["rng"]
        if len(rng) != env.world_size:
            raise StageError(
                f"{run.out / LAST} was written by {len(rng)} processes, this run has "
                f"{env.world_size}; resume with the same number or pass --force"
            )
        set_rng_state(rng[env.rank])
        if state.get("threads", torch.get_num_threads()) != torch.get_num_threads():
            log.warning(
                "%s was written with %d CPU threads, this run has %d: on CPU the resumed "
                "run is not bit-exact (set OMP_NUM_THREADS=%d for that)",
                run.out / LAST,
                state["threads"],
                torch.get_num_threads(),
                state["threads"],
            )
    ddp = model
    if env.distributed:
        ddp = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[env.device.index] if env.device.type == "cuda" else None,
            find_unused_parameters=not all_parameters_used,
        )
    stop_at = total if max_steps_this_run is None else min(total, step + max_steps_this_run)
    bar = progress(env, total=total, initial=step, desc=f"{run.stage} train", unit="step")
    progress_log = ProgressLog(env, step, total)
    # A signal only asks to stop: the step in flight finishes (all its micro-batches), then
    # last.pt is written at that step boundary, so the rerun resumes exactly there.
    with stop_requests() as stop:
        while step < stop_at:
            epoch = step // steps_per_epoch
            batches = epoch_batches(
                len(dataset), opt.batch_size, cfg.seed, epoch, env.rank, env.world_size
            )
            batches = batches[: steps_per_epoch * opt.grad_accum]
            done = (step % steps_per_epoch) * opt.grad_accum
            loader = epoch_loader(dataset, collate, batches[done:], cfg, epoch)
            ddp.train()
            step_losses: dict[str, Tensor] = {}
            for micro, batch in enumerate(loader, start=done):
                run.skipped.extend(batch["skipped"])
                if len(batch["video"]) == 0:
                    raise StageError(
                        f"every video of a training batch failed to load: {batch['skipped']}"
                    )
                batch = to_device(batch, env.device)
                boundary = (micro + 1) % opt.grad_accum == 0
                sync = nullcontext() if boundary or not env.distributed else ddp.no_sync()
                with sync:
                    with autocast(env):
                        terms = loss_fn(ddp, batch)
                    (terms["loss"] / opt.grad_accum).backward()
                for name, value in terms.items():
                    step_losses[name] = (
                        step_losses.get(name, 0.0) + value.detach().float() / opt.grad_accum
                    )
                if not boundary:
                    continue
                if opt.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                names = sorted(step_losses)
                means = dist_utils.mean_across_ranks(torch.stack([step_losses[n] for n in names]))
                logged = dict(zip(names, means.tolist(), strict=True))
                step_losses = {}
                losses.add(logged)
                check_finite(logged["loss"], f"training loss at step {step}")
                lr = scheduler.get_last_lr()[0]
                run.tracker.log_metrics(
                    {**{f"train/{k}": v for k, v in logged.items()}, "lr": lr}, step
                )
                bar.update(1)
                bar.set_postfix(loss=f"{logged['loss']:.4f}", lr=f"{lr:.2e}")
                if step % steps_per_epoch == 0:
                    means_of_epoch = losses.close_epoch()
                    log.info(
                        "epoch %d/%d  step %d/%d  %s  lr %.3g  skipped videos %d",
                        epoch + 1,
                        opt.epochs,
                        step,
                        total,
                        "  ".join(f"{k} {v:.4f}" for k, v in sorted(means_of_epoch.items())),
                        lr,
                        len(run.skipped),
                    )
                progress_log.update(step, logged["loss"])
                stopping = dist_utils.any_rank(stop.signum is not None)
                if step % opt.checkpoint_every == 0 or step == stop_at or stopping:
                    save_last(run, model, optimizer, scheduler, step, steps_per_epoch, losses)
                if stopping:
                    raise Interrupted(
                        stop.signum or signal.SIGTERM,
                        f"stopped at step {step} of {total}, saved in {run.out / LAST}; rerun the "
                        "same command to resume from there",
                    )
                if step >= stop_at:
                    break
    bar.close()
    if step < total:
        log.info("stopped after step %d of %d; rerun the same command to resume", step, total)
        run.tracker.flush()
        return None
    run.skipped = _all_ranks(run.skipped)
    return TrainSummary(total, losses.epochs)


def _all_ranks(items: list[str]) -> list[str]:
    return sorted({item for rank_items in dist_utils.gather_objects(items) for item in rank_items})


def all_heads_trained(model: nn.Module, model_cfg: ModelConfig) -> bool:
    """False when a loss with weight 0 leaves its head (and maybe f_m) without gradients,
    which DDP must then look for every step."""
    if not getattr(model, "has_matching_head", False):
        return True
    return all(model_cfg.loss_weights.get(name) for name in ("vtc", "vtm", "mlm"))


# --- results ----------------------------------------------------------------------------------


def base_metrics(run: Run, model_cfg: ModelConfig, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every metrics.json has besides the metrics themselves."""
    from svitt.sparsity import count_edges

    metrics: dict[str, Any] = {
        "stage": run.stage,
        "dataset": run.cfg.data.dataset or "+".join(run.cfg.data.train),
        "arch": model_cfg.arch,
        "num_frames": model_cfg.vision.num_frames,
        "sparsity": asdict(model_cfg.sparsity),
        "overrides": dict(overrides),
    }
    if not model_cfg.frame_level:
        edges = count_edges(model_cfg, run.cfg.data.text_max_len)
        metrics["edges"] = edges.edges
        metrics["edge_sparsity"] = edges.sparsity
    return metrics


def finish_run(run: Run, metrics: dict[str, Any], training: bool) -> None:
    """checkpoint.pt (training stages), then metrics.json: once metrics.json exists the stage
    is done. last.pt goes last, so a kill in between still resumes."""
    metrics = {**metrics, "skipped_videos": sorted(set(run.skipped)), "run": run.identity}
    if run.env.is_main:
        if training:
            assert run.resume_state is not None
            save_checkpoint(run.out / CHECKPOINT, run.resume_state)
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
    _ACTIVE.remove(run)
    dist_utils.barrier()


def check_finite(value: float, name: str) -> None:
    if not math.isfinite(value):
        raise StageError(f"{name} is {value}; training diverged")
