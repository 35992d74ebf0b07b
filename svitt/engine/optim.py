"""AdamW with decoupled weight decay groups, and the cosine schedule with linear warm-up."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from svitt.config import OptimConfig
from svitt.startup import permanent_imports


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters exempt from weight decay: biases, norm weights (any 1-d tensor) and
    whatever the model lists in `no_weight_decay()` (temperature, position tables)."""
    listed: Iterable[str] = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    listed = set(listed)
    return {
        name
        for name, param in model.named_parameters()
        if param.ndim <= 1
        or name.endswith(".bias")
        or any(name == entry or name.endswith(f".{entry}") for entry in listed)
    }


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    exempt = no_decay_names(model)
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if name in exempt else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    with permanent_imports():  # the first optimizer imports torch._dynamo (1.5 s)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based): linear
    warm-up from 0 over `warmup_steps`, then a cosine decay to `min_lr_ratio` at
    `total_steps` (the release's `min_lr_multi`)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step; its state (the step count) lives in checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, min_lr_ratio)
    )
