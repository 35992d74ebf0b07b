"""Model-level benchmark: what edge and node sparsity buy per training step.

Visual encoder (BEiT-B/16 by default) on one clip of T frames, forward + backward, four
sparsity settings interleaved per repetition:
- `dense`: full attention, no pruning;
- `edge`: block-sparse attention (K_l, K_r, G) = (1, 3, 56), no pruning;
- `node`: full attention, [CLS]-attention pruning after layers 3, 6, 9 at the paper's q_v;
- `hybrid`: both (SViTT, Table A1).
Reported: seconds per step (median), peak tensor memory, GFLOPs (FlopCounterMode, forward +
backward) and Eq. (1) visual edges, next to the dense ratios. Then the multimodal encoder
(3 BERT layers with cross-attention to the video tokens a hybrid encoder outputs), with and
without cross-modal pruning (q_m = 0.1 after multimodal layer 1): seconds per step.

Writes results/<profile>/tables/compute[_cuda].{csv,md} and figures/compute[_cuda].png.
Run: `python -m benchmarks.model` (`--quick` for a smoke run on a tiny model).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    bench_dtype,
    count_flops,
    median,
    peak_memory,
    save_figure,
    start_benchmark,
    table_suffix,
    time_interleaved,
    write_table,
)
from svitt.config import ModelConfig, SparsityConfig
from svitt.models.factory import paper_model_config, tiny_model_config
from svitt.models.text import TextEncoder
from svitt.models.vision import VisionTransformer
from svitt.sparsity import count_edges

KEEP_RATE = {4: 0.7, 8: 0.6, 16: 0.5}  # q_v of Table A1 by clip length
VARIANTS = ("dense", "edge", "node", "hybrid")


def model_config(frames: int, quick: bool) -> ModelConfig:
    """The paper's hybrid config at `frames` (a tiny model with `quick`)."""
    if not quick:
        return paper_model_config(frames)
    cfg = tiny_model_config()
    sparsity = dataclasses.replace(
        cfg.sparsity, attention="sparse", visual_keep_rate=KEEP_RATE.get(frames, 0.7)
    )
    sparsity = dataclasses.replace(sparsity, cross_keep_rate=0.1)
    vision = dataclasses.replace(cfg.vision, num_frames=frames)
    return dataclasses.replace(cfg, vision=vision, sparsity=sparsity)


def variant_sparsity(hybrid: SparsityConfig, variant: str) -> SparsityConfig:
    edge = variant in ("edge", "hybrid")
    node = variant in ("node", "hybrid")
    return dataclasses.replace(
        hybrid,
        attention="sparse" if edge else "dense",
        visual_keep_rate=hybrid.visual_keep_rate if node else 1.0,
    )


def vision_step(model: nn.Module, video: torch.Tensor) -> None:
    out = model.forward_features(video)
    out.tokens.float().square().mean().backward()
    model.zero_grad(set_to_none=True)


def multimodal_step(
    encoder: TextEncoder, text: torch.Tensor, mask: torch.Tensor, video: torch.Tensor
) -> None:
    out = encoder.forward_multimodal(text, mask, video)
    loss = out.hidden.float().square().mean()
    loss.backward()
    encoder.zero_grad(set_to_none=True)
    text.grad = video.grad = None


def measure(step: Any, device: torch.device) -> tuple[int, int]:
    """(peak bytes, FLOPs) of one call; this call doubles as the warm-up run."""
    flops: list[int] = []
    peak = peak_memory(lambda: flops.append(count_flops(step)), device)
    return peak, flops[0]


def bench_vision(args: argparse.Namespace, frames: int, device: torch.device) -> list[dict]:
    cfg = model_config(frames, args.quick)
    dtype = bench_dtype(device)
    torch.manual_seed(0)
    size = cfg.vision.image_size
    video = torch.randn(args.batch, frames, 3, size, size, device=device, dtype=dtype)
    steps, stats, edges = {}, {}, {}
    for variant in VARIANTS:
        sparsity = variant_sparsity(cfg.sparsity, variant)
        torch.manual_seed(0)
        model = VisionTransformer(cfg.vision, sparsity).to(device=device, dtype=dtype).train()
        steps[variant] = functools.partial(vision_step, model, video)
        stats[variant] = measure(steps[variant], device)
        counted = count_edges(dataclasses.replace(cfg, sparsity=sparsity), args.text_len)
        edges[variant] = counted.visual_edges
        print(f"T={frames:>2} {variant:>6}: measured memory and FLOPs", flush=True)
    reps = args.reps or (20 if device.type == "cuda" else {16: 3, 8: 3}.get(frames, 5))
    # The memory call was the warm-up run; CUDA gets two more (autotuning, lazy handles).
    warmup = 2 if device.type == "cuda" else 0
    times = time_interleaved(steps, reps=reps, warmup=warmup, device=device)
    base_s, base_mem = median(times["dense"]), stats["dense"][0]
    rows = []
    for variant in VARIANTS:
        sparsity = variant_sparsity(cfg.sparsity, variant)
        seconds, (peak, flops) = median(times[variant]), stats[variant]
        rows.append(
            {
                "part": "vision",
                "frames": frames,
                "variant": variant,
                "attention": sparsity.attention,
                "q_v": sparsity.visual_keep_rate,
                "q_m": "",
                "s_per_step": round(seconds, 3),
                "s_min": round(min(times[variant]), 3),
                "reps": reps,
                "speedup_vs_dense": round(base_s / seconds, 2),
                "peak_mb": round(peak / 2**20, 1),
                "memory_vs_dense": round(peak / base_mem, 3),
                "gflops": round(flops / 1e9, 2),
                "edges_m": round(edges[variant] / 1e6, 3),
                "edges_vs_dense": round(edges[variant] / edges["dense"], 4),
            }
        )
        print(
            f"T={frames:>2} {variant:>6}: {seconds:8.2f} s/step  x{base_s / seconds:5.2f}  "
            f"peak {peak / 2**20:8.1f} MB  {flops / 1e9:8.1f} GFLOPs",
            flush=True,
        )
    return rows


def bench_multimodal(args: argparse.Namespace, frames: int, device: torch.device) -> list[dict]:
    cfg = model_config(frames, args.quick)
    dtype = bench_dtype(device)
    counts = {}
    steps = {}
    torch.manual_seed(0)
    video_tokens = count_edges(cfg, args.text_len).multimodal_tokens[0]  # after f_v pruning
    shape = (args.mm_batch, args.text_len, cfg.text.dim)
    text = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    mask = torch.ones(args.mm_batch, args.text_len, device=device, dtype=torch.long)
    video = torch.randn(
        args.mm_batch, 1 + video_tokens, cfg.vision.dim, device=device, dtype=dtype
    ).requires_grad_()
    for name, q_m in (("no_cross_pruning", 1.0), ("cross_pruning", cfg.sparsity.cross_keep_rate)):
        sparsity = dataclasses.replace(cfg.sparsity, cross_keep_rate=q_m)
        torch.manual_seed(0)
        encoder = TextEncoder(cfg.text, sparsity, video_dim=cfg.vision.dim)
        encoder = encoder.to(device=device, dtype=dtype).train()
        steps[name] = functools.partial(multimodal_step, encoder, text, mask, video)
        counts[name] = count_edges(dataclasses.replace(cfg, sparsity=sparsity), args.text_len)
    reps = args.reps or (20 if device.type == "cuda" else 5)
    times = time_interleaved(steps, reps=reps, warmup=1, device=device)
    base = median(times["no_cross_pruning"])
    rows = []
    for name, step in steps.items():
        peak, flops = measure(step, device)
        seconds = median(times[name])
        rows.append(
            {
                "part": "multimodal",
                "frames": frames,
                "variant": name,
                "attention": "cross",
                "q_v": "",
                "q_m": 1.0 if name == "no_cross_pruning" else cfg.sparsity.cross_keep_rate,
                "s_per_step": round(seconds, 4),
                "s_min": round(min(times[name]), 4),
                "reps": reps,
                "speedup_vs_dense": round(base / seconds, 2),
                "peak_mb": round(peak / 2**20, 1),
                "memory_vs_dense": "",
                "gflops": round(flops / 1e9, 2),
                "edges_m": round(counts[name].multimodal_edges / 1e6, 4),
                "edges_vs_dense": round(
                    counts[name].multimodal_edges / counts["no_cross_pruning"].multimodal_edges, 4
                ),
            }
        )
        print(f"T={frames:>2} multimodal {name}: {seconds * 1e3:8.1f} ms/step", flush=True)
    return rows


def goal_notes(rows: list[dict], frames: int) -> list[str]:
    """Issue #7 goal at the longest clip: hybrid >= 2.5x faster, <= 0.5x peak memory."""
    found = [r for r in rows if r["part"] == "vision" and r["frames"] == frames]
    hybrid = [r for r in found if r["variant"] == "hybrid"]
    if not hybrid:
        return []
    speed, memory = hybrid[0]["speedup_vs_dense"], hybrid[0]["memory_vs_dense"]
    return [
        f"goal T={frames}: hybrid >= 2.5x faster than dense per step: "
        f"{'met' if speed >= 2.5 else 'MISSED'} (measured {speed:g}x)",
        f"goal T={frames}: hybrid peak memory <= 0.5x dense: "
        f"{'met' if memory <= 0.5 else 'MISSED'} (measured {memory:g}x)",
    ]


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vision = [r for r in rows if r["part"] == "vision"]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), gridspec_kw={"wspace": 0.32})
    for variant in VARIANTS:
        pts = sorted(
            (r["frames"], r["s_per_step"], r["peak_mb"]) for r in vision if r["variant"] == variant
        )
        if not pts:
            continue
        frames = [p[0] for p in pts]
        axes[0].plot(frames, [p[1] for p in pts], marker="o", label=variant)
        axes[1].plot(frames, [p[2] / 1024 for p in pts], marker="o", label=variant)
    for ax, label in zip(
        axes, ("seconds per training step", "peak tensor memory (GiB)"), strict=True
    ):
        ax.set_xlabel("frames T")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.set_xticks(sorted({r["frames"] for r in vision}))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--batch", type=int, default=1, help="clips per visual step")
    parser.add_argument("--mm-batch", type=int, default=8, help="pairs per multimodal step")
    parser.add_argument("--text-len", type=int, default=32, help="N_t")
    parser.add_argument("--reps", type=int, default=0, help="0: CPU 3 at T>=8, else 5; CUDA 20")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--default-malloc", action="store_true", help="keep glibc's default allocator settings"
    )
    parser.add_argument("--profile", default="synthetic", help="results/<profile>/")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--quick", action="store_true", help="tiny model, T = 2, 4 (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.reps, args.mm_batch = [2, 4], 2, 2
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device, info = start_benchmark(args.device, args.default_malloc)
    rows = [row for frames in args.frames for row in bench_vision(args, frames, device)]
    rows += bench_multimodal(args, max(args.frames), device)
    suffix = table_suffix(device)
    root = args.results / args.profile
    model = "tiny model (--quick)" if args.quick else "BEiT-B/16 + BERT-base multimodal layers"
    notes = [
        f"{model}, batch {args.batch} clip(s), dtype {bench_dtype(device)}, training mode; one "
        "step = forward + backward of a squared-mean loss on the output tokens",
        "s_per_step: median over repetitions, variants interleaved per repetition; "
        "speedup and memory ratios are against dense in the same run",
        "peak_mb: peak tensor memory above the inputs and weights during the step (CPU: "
        "allocator events of the PyTorch profiler; CUDA: max_memory_allocated)",
        "gflops: FlopCounterMode, forward + backward; edges_m: Eq. (1) visual edges summed "
        f"over layers (multimodal rows: Eq. (2) with N_t = {args.text_len})",
        f"multimodal rows: {args.mm_batch} text-video pairs, video tokens of a hybrid "
        f"T={max(args.frames)} encoder",
        "machine: " + ", ".join(f"{key} {value}" for key, value in info.items()),
        *goal_notes(rows, max(args.frames)),
    ]
    write_table(rows, root / "tables" / f"compute{suffix}", "Compute: sparsity per step", notes)
    plot(rows, root / "figures" / f"compute{suffix}.png", f"{model}, {info['device']}")
    for note in notes[-2:]:
        print(note)
    print(f"wrote {root}/tables/compute{suffix}.csv, .md and figures/compute{suffix}.png")
    return rows


if __name__ == "__main__":
    main()
