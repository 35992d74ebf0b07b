"""One process or `torchrun`: the same stage code runs in both.

A single process needs nothing. Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK in the
environment) the stage joins a process group (nccl on GPU, gloo on CPU), wraps its model in
DDP, shards every global batch across ranks, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from svitt.config import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """`auto` picks this rank's GPU when there is one; `cuda` without a GPU is an error."""
    allowed = ("auto", "cpu", "cuda")
    if preference not in allowed:
        raise ConfigError(f"device: got {preference!r}; allowed: {', '.join(allowed)}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "device: got 'cuda' but no CUDA device is available; allowed here: auto or cpu"
        )
    return torch.device("cuda", local_rank)


def init_distributed(device_preference: str = "auto") -> DistEnv:
    """Join the torchrun process group if RANK is set; otherwise a world of one."""
    if "RANK" not in os.environ:
        return DistEnv(0, 1, 0, resolve_device(device_preference))
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group() -> Iterator[None]:
    """The block in which runs join the process group (`init_distributed`, once); it is left
    at the end, however the block ends."""
    try:
        yield
    finally:
        shutdown()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces the gradient and keeps the local slice (public
    collectives only; torch.distributed.nn.functional.all_gather is deprecated)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, counts: list[int]) -> Tensor:
        ctx.counts, ctx.rank = counts, dist.get_rank()
        padded = tensor.contiguous()
        if len(tensor) < max(counts):
            pad = tensor.new_zeros((max(counts) - len(tensor), *tensor.shape[1:]))
            padded = torch.cat([padded, pad])
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]], None


def gather_with_grad(tensor: Tensor) -> Tensor:
    """All ranks' `tensor`s concatenated along dim 0, differentiable: VTC negatives then span
    the global batch (the authors' release contrasts within the local batch only).

    The backward pass sums every rank's gradient into the local slice; with DDP averaging the
    parameter gradients, a loss computed identically on every rank from gathered embeddings
    gets exactly the single-process gradient of the combined batch. Ranks may hold different
    numbers of rows (a training batch shrinks when its bad videos are dropped).
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    # nccl collectives need tensors on the GPU
    sizes = [
        torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())
    ]
    dist.all_gather(sizes, torch.tensor([len(tensor)], device=tensor.device))
    counts = [int(size) for size in sizes]
    return _GatherWithGrad.apply(tensor, counts)


def mean_across_ranks(value: Tensor) -> Tensor:
    """Average of a tensor over ranks (a copy; for logging, no gradient)."""
    value = value.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order (e.g. RNG states, skipped video lists)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any (e.g. one rank received SIGTERM)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def epoch_batches(
    num_samples: int, global_batch: int, seed: int, epoch: int, rank: int, world_size: int
) -> list[list[int]]:
    """This rank's micro-batches of one epoch: a permutation seeded by (seed, epoch), cut into
    global batches (the incomplete tail dropped so every batch has the same size), each split
    evenly across ranks. Pure, so a resumed run reproduces the exact order and can skip the
    batches it already did."""
    if global_batch % world_size:
        raise ConfigError(
            f"optim.batch_size: got {global_batch}; allowed: a multiple of the "
            f"{world_size} processes (it is the global batch, split across ranks)"
        )
    if num_samples < global_batch:
        raise ConfigError(
            f"optim.batch_size: got {global_batch}; allowed: at most the {num_samples} "
            "training samples of the dataset"
        )
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=generator).tolist()
    local = global_batch // world_size
    return [
        order[start + rank * local : start + (rank + 1) * local]
        for start in range(0, num_samples - global_batch + 1, global_batch)
    ]
