"""Timing, memory and FLOP helpers shared by the benchmark scripts.

- Time: every variant runs once per repetition, in a rotated order, after warm-up runs, so
  machine noise hits all variants alike; we report the median, and ratios are computed
  within one run.
- Peak memory, CPU: the PyTorch profiler's allocator events (`profile_memory=True`): every
  tensor allocation and free by the CPU allocator, in order; the peak of their running sum
  during one call is the call's peak of tensor memory above what was live before it (no
  Python objects, no allocator caching, no RSS). CUDA: `torch.cuda.max_memory_allocated`
  above the memory allocated before the call.
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` (matmuls and attention; elementwise ops
  count zero), forward + backward.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from svitt.engine.allocator import retain_freed_memory
from svitt.files import atomic_write, atomic_write_text
from svitt.models import cpu_kernel


def pick_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def bench_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU, bf16 on CUDA (the training precision there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def table_suffix(device: torch.device) -> str:
    """Tables and figures measured on CUDA get a `_cuda` suffix, CPU ones none."""
    return "_cuda" if device.type == "cuda" else ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def set_allocator(default_malloc: bool) -> str:
    """Apply the allocator the training runs use on CPU, unless told not to; describe it."""
    if default_malloc:
        return "glibc defaults"
    return "freed memory kept" if retain_freed_memory() else "default (no glibc mallopt)"


def machine_info(device: torch.device) -> dict[str, str]:
    info = {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "device": device.type,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def start_benchmark(device_name: str, default_malloc: bool) -> tuple[torch.device, dict[str, str]]:
    """The benchmark's device and its machine description, printed; on CPU with the allocator
    the training runs use (unless `default_malloc`)."""
    device = pick_device(device_name)
    info = machine_info(device)
    if device.type == "cpu":
        info["malloc"] = set_allocator(default_malloc)
    print(", ".join(f"{key}: {value}" for key, value in info.items()), flush=True)
    return device, info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    variants: dict[str, Callable[[], Any]],
    reps: int,
    warmup: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Seconds per call of each variant; one call of every variant per repetition."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:  # rotate: no variant always runs first
            sync(device)
            start = time.perf_counter()
            variants[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes of tensor memory allocated during `fn()` above the memory live before it."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return peak


def _cpu_sdpa_flops(q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(q, k, v)


def _cpu_sdpa_backward_flops(grad: Any, q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad, q, k, v)


# FlopCounterMode has no formula for the CPU flash-attention ops: it would count dense SDPA
# on CPU as zero FLOPs. These use its CUDA SDPA formulas (the same matmuls).
_CPU_SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def _block_matmul_flops(q: Any, key_blocks: Any, block_size: int) -> int:
    """One [G, d] x [d, K*G] matmul per query block, batch and head."""
    batch, heads, _, dim = q
    num_blocks, keys = key_blocks
    return 2 * batch * heads * num_blocks * block_size * keys * block_size * dim


def _cpp_forward_flops(q: Any, k: Any, v: Any, key_blocks: Any, mask: Any, block_size: int,
                       *args: Any, **kwargs: Any) -> int:  # fmt: skip
    return 2 * _block_matmul_flops(q, key_blocks, block_size)  # scores, then values


def _cpp_backward_flops(grad: Any, q: Any, k: Any, v: Any, key_blocks: Any, probs: Any,
                        cls_probs: Any, rows: Any, with_dlogits: bool, block_size: int,
                        *args: Any, **kwargs: Any) -> int:  # fmt: skip
    return 4 * _block_matmul_flops(q, key_blocks, block_size)  # dP, dQ, dK, dV


def _flop_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas FlopCounterMode lacks: the CPU flash-attention ops and, when it is built, the
    C++ block-sparse kernel (the same matmuls as the PyTorch-op kernel, which it counts)."""
    formulas = dict(_CPU_SDPA)
    if cpu_kernel.available():
        formulas[torch.ops.svitt_block_sparse.forward] = _cpp_forward_flops
        formulas[torch.ops.svitt_block_sparse.backward] = _cpp_backward_flops
    return formulas


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of `fn()` (forward and backward if it runs both)."""
    with FlopCounterMode(display=False, custom_mapping=_flop_formulas()) as counter:
        fn()
    return counter.get_total_flops()


def write_table(rows: list[dict[str, Any]], stem: Path, title: str, notes: list[str]) -> None:
    """`stem`.csv and `stem`.md (a title, the notes as a list, then the table), atomically."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    atomic_write_text(stem.with_suffix(".csv"), frame.to_csv(index=False))
    lines = [f"# {title}", "", *[f"- {note}" for note in notes], ""]
    lines.append(frame.to_markdown(index=False, floatfmt="g"))
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure atomically (its format from the file's extension)."""
    fmt = path.suffix.lstrip(".")
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=150, bbox_inches="tight"))
