"""The training loop, top to bottom like nanoGPT's.

One optimizer step per `optim.grad_accum` micro-batches, the warm-up + cosine schedule
stepped per optimizer step, a resumable `last.pt` every `optim.checkpoint_every` steps and at
the last one. Exact resume: epoch e visits the samples in a permutation seeded by (seed, e),
a resumed run skips the micro-batches already done, and the RNG states are restored. SIGINT /
SIGTERM stop at the next step boundary, after writing last.pt there.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from svitt.config import ConfigError, RunConfig, asdict
from svitt.engine import distributed as dist_utils
from svitt.engine.checkpoint import LAST, rng_state, save_checkpoint, set_rng_state
from svitt.engine.distributed import DistEnv, epoch_batches
from svitt.engine.optim import build_optimizer, build_scheduler
from svitt.engine.stage import Run, StageError, TrainSummary, autocast, progress
from svitt.errors import Interrupted, stop_requests

log = logging.getLogger("svitt.engine")

LossFn = Callable[[nn.Module, dict[str, Any]], dict[str, Tensor]]


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


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


def _all_ranks(items: list[str]) -> list[str]:
    return sorted({item for rank_items in dist_utils.gather_objects(items) for item in rank_items})


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


def restore(
    run: Run,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, LossLog]:
    """The step and losses to start from: 0 for a new run; a resumed run's weights, optimizer,
    schedule, losses, skipped videos and RNG state from last.pt."""
    state, env = run.resume_state, run.env
    if state is None:
        return 0, LossLog()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
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
    return state["step"], LossLog(**state["losses"])


def train(
    run: Run,
    model: nn.Module,
    dataset: Dataset,
    collate: Callable,
    loss_fn: LossFn,
    all_parameters_used: bool = True,
) -> TrainSummary | None:
    """Train `model` in place; None when stopped early by `run.max_steps_this_run` (last.pt
    holds the state to resume from). The data order of epoch e is a permutation seeded by
    (seed, e), so a resumed run skips exactly the micro-batches it already did."""
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
    step, losses = restore(run, model, optimizer, scheduler)
    ddp = model
    if env.distributed:
        ddp = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[env.device.index] if env.device.type == "cuda" else None,
            find_unused_parameters=not all_parameters_used,
        )
    max_steps = run.max_steps_this_run
    stop_at = total if max_steps is None else min(total, step + max_steps)
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
                if not math.isfinite(logged["loss"]):
                    raise StageError(
                        f"training loss at step {step} is {logged['loss']}; training diverged"
                    )
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
