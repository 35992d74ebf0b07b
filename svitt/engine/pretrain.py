"""`svitt pretrain`: VTC + VTM + MLM on the caption datasets of `data.train`.

Starts from `--init-from` (a checkpoint of any clip length; inflated to this one), else from
`model.weights` (image weights are inflated to video by the model factory), else from scratch.
"""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from svitt.config import RunConfig
from svitt.data.annotations import Task
from svitt.engine import runner
from svitt.engine.distributed import gather_with_grad


def check(cfg: RunConfig) -> None:
    runner.check_datasets(cfg, cfg.data.train, ["pretrain", "retrieval"], "train")


def run(args: argparse.Namespace) -> int:
    return runner.guarded(lambda: _run(args))


def train_video_text(
    run: runner.Run, task: Task, max_steps_this_run: int | None
) -> tuple[nn.Module, runner.TrainSummary, Any] | None:
    """The SViTT model of `run` (from --init-from, `model.weights` or scratch) trained on the
    stage's caption data with its loss weights; None when stopped early (last.pt resumes)."""
    from svitt.data.datasets import training_data
    from svitt.models.factory import create_model

    cfg = run.cfg
    model = create_model(cfg.model)
    if run.init_from is not None:
        runner.load_into(model, run.init_from, cfg.model, prefix="vision.")
    dataset, collate = training_data(cfg, run.tokenizer, task)
    summary = runner.train(
        run,
        model,
        dataset,
        collate,
        lambda m, batch: m(batch, gather=gather_with_grad),
        max_steps_this_run,
        runner.all_heads_trained(model, cfg.model),
    )
    return None if summary is None else (model, summary, dataset)


def _run(args: argparse.Namespace) -> int:
    run = runner.start_run(args, "pretrain", check, training=True)
    if run is None:
        return 0
    trained = train_video_text(run, "pretrain", args.max_steps_this_run)
    if trained is None:
        return 0
    _, summary, dataset = trained
    metrics = runner.base_metrics(run, run.cfg.model, overrides={})
    metrics.update(summary.as_metrics())
    metrics["num_videos"] = len(dataset.videos)
    metrics["num_pairs"] = len(dataset)
    runner.finish_run(run, metrics, training=True)
    return 0
