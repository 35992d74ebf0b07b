"""Attention kernel benchmark: dense SDPA vs block-sparse attention, forward + backward.

Variants, all on the same q, k, v and output gradient, interleaved per repetition:
- `dense`: `torch.nn.functional.scaled_dot_product_attention` over all `1 + n` tokens;
- `sparse`: the library kernel `svitt.models.attention.sparse_attention`;
- `gather_sdpa`: our first library kernel, SDPA over token-level gathers
  (`benchmarks.naive_attention`);
- `loop`: the authors'-style Python loop over query blocks (`benchmarks.naive_attention`);
- `flex`, `flex_aligned` (CUDA only): the same pattern as a compiled FlexAttention mask, on
  the tokens as they are and on blocks moved to their own 64-token tiles
  (`benchmarks.flex_attention`); a variant that fails to compile is dropped with a note.

The process first keeps freed memory in the heap (`svitt.engine.allocator`, as training runs
on CPU do); `--default-malloc` measures with glibc's defaults instead.

Writes results/<profile>/tables/compute_attention[_cuda].{csv,md}.
Run: `python -m benchmarks.attention` (`--quick` for a smoke run on tiny shapes).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import (
    bench_dtype,
    count_flops,
    median,
    peak_memory,
    start_benchmark,
    table_suffix,
    time_interleaved,
    write_table,
)
from benchmarks.flex_attention import (
    ALIGNED_TILE,
    aligned_block_mask,
    flex_aligned_attention,
    flex_sparse_attention,
    pattern_block_mask,
)
from benchmarks.naive_attention import gather_sdpa_attention, loop_sparse_attention
from svitt.models import cpu_kernel
from svitt.models.attention import block_pattern, pattern_edges, sparse_attention

Kernel = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor | None]]


# --- benchmark --------------------------------------------------------------------------


def dense_kernel(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, None]:
    return F.scaled_dot_product_attention(q, k, v), None


def ops_kernel(sparse: Kernel) -> Kernel:
    """The library kernel with its C++ block part switched off: the PyTorch-op version (the
    backward follows the forward's choice)."""

    def kernel(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor | None]:
        with cpu_kernel.disabled():
            return sparse(q, k, v)

    return kernel


def kernels(
    key_blocks: Tensor, block_size: int, with_loop: bool, with_flex: bool, with_ops: bool
) -> dict[str, Kernel]:
    sparse = functools.partial(sparse_attention, key_blocks=key_blocks, block_size=block_size)
    out: dict[str, Kernel] = {
        "dense": dense_kernel,
        "sparse": sparse,
        "gather_sdpa": functools.partial(
            gather_sdpa_attention, key_blocks=key_blocks, block_size=block_size
        ),
    }
    if with_ops:
        out["sparse_ops"] = ops_kernel(sparse)
    if with_loop:
        out["loop"] = functools.partial(
            loop_sparse_attention, key_blocks=key_blocks, block_size=block_size
        )
    if with_flex:
        for name, kernel in (
            ("flex", flex_sparse_attention),
            ("flex_aligned", flex_aligned_attention),
        ):
            out[name] = functools.partial(kernel, key_blocks=key_blocks, block_size=block_size)
    return out


def flex_tiles(name: str, key_blocks: Tensor, block_size: int, n: int, device: torch.device) -> str:
    """How many of its score tiles a flex variant computes."""
    if name == "flex":
        mask = pattern_block_mask(key_blocks, block_size, 1 + n, device)
    else:
        mask, _ = aligned_block_mask(key_blocks, block_size, n, ALIGNED_TILE, device)
    return (
        f"{name} computes {100 - mask.sparsity():.1f}% of the {mask.BLOCK_SIZE[0]} x "
        f"{mask.BLOCK_SIZE[1]} score tiles over {mask.seq_lengths[0]} positions"
    )


def step(kernel: Kernel, q: Tensor, k: Tensor, v: Tensor, grad: Tensor) -> None:
    """One forward + backward; the gradients are dropped afterwards."""
    out, _ = kernel(q, k, v)
    out.backward(grad)
    q.grad = k.grad = v.grad = None


def try_once(run: Callable[[], None]) -> str | None:
    """Run (and so compile) a variant once; why it cannot run, or None."""
    try:
        run()
    except Exception as error:  # a compiler failure must not cost the other variants
        return f"{type(error).__name__}: {str(error)[:300]}"
    return None


def bench_length(
    args: argparse.Namespace, frames: int, batch: int, device: torch.device
) -> tuple[list[dict], list[str]]:
    """Rows of one clip length and batch size, and notes on them."""
    n = frames * args.patches
    num_blocks = -(-n // args.block_size)
    generator = torch.Generator().manual_seed(0)
    key_blocks = block_pattern(num_blocks, args.local_blocks, args.random_blocks, generator)
    dtype = bench_dtype(device)
    shape = (batch, args.heads, 1 + n, args.head_dim)
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in "qkv")
    grad = torch.randn(shape, device=device, dtype=dtype)
    with_flex = device.type == "cuda" and not args.no_flex
    with_ops = device.type == "cpu" and cpu_kernel.available()
    variants = kernels(key_blocks, args.block_size, not args.no_loop, with_flex, with_ops)
    runs = {
        name: functools.partial(step, kernel, q, k, v, grad) for name, kernel in variants.items()
    }
    notes = []
    for name in [name for name in runs if name.startswith("flex")]:
        failure = try_once(runs[name])
        if failure:
            del runs[name]
            q.grad = k.grad = v.grad = None
        note = f"T={frames} B={batch}: " + (
            f"{name} dropped: {failure}"
            if failure
            else flex_tiles(name, key_blocks, args.block_size, n, device)
        )
        print(note, flush=True)
        notes.append(note)
    reps = args.reps or default_reps(frames, device)
    warmup = args.warmup if args.warmup >= 0 else (3 if device.type == "cuda" else 1)
    times = time_interleaved(runs, reps=reps, warmup=warmup, device=device)
    dense_edges = batch * args.heads * (1 + n) ** 2
    sparse_edges = batch * args.heads * (pattern_edges(key_blocks, n, args.block_size) + (1 + n))
    rows = []
    dense_ms = median(times["dense"]) * 1e3
    for name, run in runs.items():
        ms = median(times[name]) * 1e3
        rows.append(
            {
                "frames": frames,
                "tokens": 1 + n,
                "batch": batch,
                "variant": name,
                "ms": round(ms, 3),
                "ms_min": round(min(times[name]) * 1e3, 3),
                "reps": reps,
                "speedup_vs_dense": round(dense_ms / ms, 2),
                "peak_mb": round(peak_memory(run, device) / 2**20, 1),
                # FlopCounterMode counts flex_attention as dense attention: not comparable.
                "gflops": "" if name.startswith("flex") else round(count_flops(run) / 1e9, 4),
                "edges_m": round((dense_edges if name == "dense" else sparse_edges) / 1e6, 3),
            }
        )
        print(
            f"T={frames:>2} B={batch} {name:>12}: {ms:9.3f} ms  x{dense_ms / ms:5.2f} vs dense",
            flush=True,
        )
    return rows, notes


def default_reps(frames: int, device: torch.device) -> int:
    """CPU: 7 at T = 4, else 5 (seconds per call); CUDA: 50 (milliseconds per call)."""
    if device.type == "cuda":
        return 50
    return {4: 7}.get(frames, 5)


def goal_notes(rows: list[dict]) -> list[str]:
    """Issue #7 goals: >= 8x faster than dense at T = 16, >= 4x at T = 8 (each batch size)."""
    notes = []
    for frames, goal in ((16, 8.0), (8, 4.0)):
        for row in rows:
            if row["frames"] == frames and row["variant"] == "sparse":
                got = row["speedup_vs_dense"]
                notes.append(
                    f"goal T={frames} (batch {row['batch']}): sparse >= {goal:g}x faster than "
                    f"dense: {'met' if got >= goal else 'MISSED'} (measured {got:g}x)"
                )
    return notes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--patches", type=int, default=196, help="tokens per frame")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=None, help="default: CPU 1; CUDA 1 and 8"
    )
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=56, help="G")
    parser.add_argument("--local-blocks", type=int, default=1, help="K_l")
    parser.add_argument("--random-blocks", type=int, default=3, help="K_r")
    parser.add_argument("--reps", type=int, default=0, help="0: CPU 7 at T=4, else 5; CUDA 50")
    parser.add_argument("--warmup", type=int, default=-1, help="-1: CPU 1, CUDA 3")
    parser.add_argument("--no-loop", action="store_true", help="skip the Python-loop baseline")
    parser.add_argument(
        "--no-flex", action="store_true", help="skip the FlexAttention variants on CUDA"
    )
    parser.add_argument(
        "--default-malloc", action="store_true", help="keep glibc's default allocator settings"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--profile", default="synthetic", help="results/<profile>/")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 reps (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.patches, args.heads, args.head_dim = [1, 2], 16, 2, 16
        args.block_size, args.reps = 4, 2
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device, info = start_benchmark(args.device, args.default_malloc)
    rows, length_notes = [], []
    for frames in args.frames:
        for batch in args.batch or ([1, 8] if device.type == "cuda" else [1]):
            got, notes = bench_length(args, frames, batch, device)
            rows += got
            length_notes += notes
    stem = args.results / args.profile / "tables" / f"compute_attention{table_suffix(device)}"
    notes = [
        "forward + backward of one attention call (all heads), median over repetitions, "
        "variants interleaved per repetition; speedup = dense ms / variant ms, same run",
        f"{args.heads} heads x {args.head_dim} dims, G={args.block_size}, "
        f"K_l={args.local_blocks}, K_r={args.random_blocks}, one [CLS], "
        f"dtype {bench_dtype(device)}",
        "peak_mb: tensor memory allocated above the inputs during the step (see "
        "benchmarks/common.py); edges_m: query-key pairs, [CLS] row and column included",
        "machine: " + ", ".join(f"{key} {value}" for key, value in info.items()),
        *length_notes,
        *goal_notes(rows),
    ]
    write_table(rows, stem, "Attention kernel: dense vs block-sparse", notes)
    for note in notes[3:]:
        print(note)
    print(f"wrote {stem}.csv and .md")
    return rows


if __name__ == "__main__":
    main()
