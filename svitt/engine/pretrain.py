"""`svitt pretrain`: VTC + VTM + MLM on the caption datasets of `data.train`.

Starts from `--init-from` (a checkpoint of any clip length; inflated to this one), else from
`model.weights` (image weights are inflated to video by the model factory), else from scratch.
"""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from svitt.config import ModelConfig, RunConfig
from svitt.data.annotations import Task
from svitt.engine import lifecycle
from svitt.engine.distributed import gather_with_grad
from svitt.engine.loop import train
from svitt.engine.stage import (
    Results,
    Run,
    Stage,
    TrainSummary,
    base_metrics,
    check_datasets,
)


def check(cfg: RunConfig) -> None:
    check_datasets(cfg, cfg.data.train, ["pretrain", "retrieval"], "train")


def all_heads_trained(model: nn.Module, model_cfg: ModelConfig) -> bool:
    """False when a loss with weight 0 leaves its head (and maybe f_m) without gradients,
    which DDP must then look for every step."""
    if not getattr(model, "has_matching_head", False):
        return True
    return all(model_cfg.loss_weights.get(name) for name in ("vtc", "vtm", "mlm"))


def train_video_text(run: Run, task: Task) -> tuple[TrainSummary, Any] | None:
    """Train the SViTT model of `run` (from --init-from, `model.weights` or scratch) on the
    stage's caption data with its loss weights: the training summary and the dataset; None
    when stopped early (last.pt resumes)."""
    from svitt.data.datasets import training_data
    from svitt.models.checkpoints import load_checkpoint_weights
    from svitt.models.factory import create_model

    cfg = run.cfg
    model = create_model(cfg.model)
    if run.init_from is not None:
        load_checkpoint_weights(model, run.init_from)
    dataset, collate = training_data(cfg, run.tokenizer, task)
    summary = train(
        run,
        model,
        dataset,
        collate,
        lambda m, batch: m(batch, gather=gather_with_grad),
        all_heads_trained(model, cfg.model),
    )
    return None if summary is None else (summary, dataset)


def pretrain(run: Run) -> Results | None:
    trained = train_video_text(run, "pretrain")
    if trained is None:
        return None
    summary, dataset = trained
    metrics = base_metrics(run, run.cfg.model, overrides={})
    metrics.update(summary.as_metrics())
    metrics["num_videos"] = len(dataset.videos)
    metrics["num_pairs"] = len(dataset)
    return Results(metrics)


STAGE = Stage("pretrain", trains=True, evaluates=False, check=check, work=pretrain)


def run(args: argparse.Namespace) -> int:
    return lifecycle.run(STAGE, args)
