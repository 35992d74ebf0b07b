"""`svitt figure keep-rate|tokens ...`: the supplement's Figure A1 and Figures A2/A3.

keep-rate  Figure A1: zero-shot mean recall of the dense 4- and 8-frame models against the
           visual keep rate q_v applied at evaluation, one panel per dataset, read from the
           metrics.json files of the sweep in `ablations/figure_A1.yaml`.
tokens     Figures A2/A3: a trained model runs on a few test clips; the visual tokens that
           survive node sparsity (q_v) and the video tokens kept by the cross-modal pruning
           (q_m, guided by the clip's caption) are drawn over the frames.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI
import matplotlib.pyplot as plt
import numpy as np

from svitt.config import load_config
from svitt.files import atomic_write
from svitt.plan.runs import figure_a1_runs
from svitt.plan.specs import load_datasets, load_spec
from svitt.report.intervals import Interval
from svitt.report.tables import cell, load_profile

DIMMED = 0.25  # brightness of pruned patches


def _save_atomic(fig: plt.Figure, out: Path) -> None:
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=150, bbox_inches="tight"))
    plt.close(fig)


# --- Figure A1 ------------------------------------------------------------------------------


Curves = dict[str, dict[int, list[tuple[float, Interval]]]]


def keep_rate_curves(profile_path: str | Path) -> Curves:
    """dataset -> frames -> [(keep rate, metric with its 95 % interval)], by keep rate; over
    several training seeds the pooled outcomes' mean and interval."""
    profile = load_profile(profile_path)
    spec = load_spec(profile.ablations, "figure_A1")
    curves: Curves = {}
    for runs in figure_a1_runs(profile, spec):
        run = runs[0]
        rate = float(run.probe.removeprefix("keep"))
        interval = cell(profile, runs, spec["metric"]).interval()
        curves.setdefault(run.dataset, {}).setdefault(run.frames, []).append((rate, interval))
    for by_frames in curves.values():
        for points in by_frames.values():
            points.sort()
    return curves


def plot_keep_rate(profile_path: str | Path, out: str | Path) -> None:
    profile = load_profile(profile_path)
    spec = load_spec(profile.ablations, "figure_A1")
    labels = load_datasets(profile.ablations)
    curves = keep_rate_curves(profile_path)
    fig, axes = plt.subplots(
        1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False, layout="constrained"
    )
    for ax, (dataset, by_frames) in zip(axes[0], curves.items(), strict=True):
        for frames, points in sorted(by_frames.items()):
            rates = [rate for rate, _ in points]
            values = np.array([i.value for _, i in points])
            below = values - [i.low for _, i in points]
            above = [i.high for _, i in points] - values
            ax.errorbar(
                rates, values, yerr=[below, above], marker="o", capsize=3, label=f"{frames} frames"
            )
        ax.set_title(f"{labels[dataset].label} ({profile.name})")
        ax.set_xlabel("visual keep rate $q_v$")
        ax.set_ylabel("mean recall (%)")
        ax.invert_xaxis()  # sparser to the right, as token pruning increases
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Figure A1. {spec['title']} (bars: 95 % bootstrap intervals over queries)")
    _save_atomic(fig, Path(out))


# --- Figures A2/A3 --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeptTokens:
    """One clip: frames for display and the raster positions kept by each kind of pruning."""

    frames: np.ndarray  # [T, H, W, 3] in [0, 1]
    caption: str
    visual: np.ndarray  # raster positions after the visual encoder's last pruning step
    cross: np.ndarray | None  # positions kept by the cross-modal pruning (None: not pruned)


def kept_tokens(
    checkpoint: str | Path, config: str | Path, clips: Sequence[int]
) -> list[KeptTokens]:
    """Run the checkpoint's model (with the run config's sparsity) on test clips `clips`."""
    # The model stack (torch, models) loads only here: Figure A1 reads JSON files alone.
    import torch

    from svitt.config import eval_model_config, with_tokenizer
    from svitt.data.datasets import clip_loader, retrieval_eval_set
    from svitt.data.tokenizer import TextTokenizer
    from svitt.models.checkpoints import load_checkpoint_weights
    from svitt.models.factory import create_model

    torch.set_grad_enabled(False)
    cfg = load_config(config)
    tokenizer = TextTokenizer.from_dir(cfg.data.tokenizer)
    cfg = with_tokenizer(cfg, tokenizer)
    model_cfg, _ = eval_model_config(cfg)
    model = create_model(model_cfg).eval()
    load_checkpoint_weights(model, Path(checkpoint))

    data = retrieval_eval_set(cfg.data.root, cfg.data.dataset)
    loader = clip_loader(cfg, train=False)
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    out = []
    for index in clips:
        if not 0 <= index < len(data.texts):
            raise IndexError(f"clip {index}: the test split has {len(data.texts)} queries")
        caption = data.texts[index]
        video_index = min(data.ground_truth[index])
        clip = loader(data.videos[video_index], video_index)
        video = model.encode_video(clip[None])
        ids, mask = tokenizer.encode([caption], cfg.data.text_max_len)
        text = model.encode_text(ids, mask)
        cross = None
        if model.has_matching_head:
            fused = model.fuse(video.tokens, text.hidden, mask, video.positions)
            cross = fused.kept[-1][0].numpy() if fused.kept else None
        frames = (clip * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        out.append(KeptTokens(frames, caption, video.positions[0].numpy(), cross))
    return out


def _patch_mask(positions: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(grid[0] * grid[1] * grid[2], dtype=bool)
    mask[positions] = True
    return mask.reshape(grid)


def _overlay(
    frame: np.ndarray, keep: np.ndarray, patch: int, tint: np.ndarray | None
) -> np.ndarray:
    """Pruned patches dimmed; kept ones optionally tinted."""
    pixels = np.kron(keep, np.ones((patch, patch)))[..., None]
    image = frame * (DIMMED + (1 - DIMMED) * pixels)
    if tint is not None:
        image = image * (1 - 0.45 * pixels) + tint * 0.45 * pixels
    return image


def plot_tokens(
    checkpoint: str | Path, config: str | Path, clips: Sequence[int], out: str | Path
) -> None:
    cfg = load_config(config)
    vision = cfg.model.vision
    grid = (vision.num_frames, *vision.grid[1:])
    results = kept_tokens(checkpoint, config, clips)
    rows = []
    for result in results:  # per clip: the visual row, then its cross-modal row
        rows.append(("visual", result, result.visual))
        if result.cross is not None:
            rows.append(("cross-modal", result, result.cross))
    frames = grid[0]
    fig, axes = plt.subplots(
        len(rows), frames, figsize=(1.3 * frames, 1.5 * len(rows)), squeeze=False
    )
    red = np.array([1.0, 0.1, 0.1])
    for (kind, result, positions), row_axes in zip(rows, axes, strict=True):
        keep = _patch_mask(positions, grid)
        for t, ax in enumerate(row_axes):
            tint = red if kind == "cross-modal" else None
            ax.imshow(
                _overlay(result.frames[t], keep[t], vision.patch_size, tint),
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
        sp = cfg.model.sparsity
        rate = f"q_v={sp.visual_keep_rate:g}" if kind == "visual" else f"q_m={sp.cross_keep_rate:g}"
        row_axes[0].set_ylabel(f"{kind}\n{rate}", fontsize=7)
        row_axes[0].set_title(result.caption, fontsize=7, loc="left")
    _save_atomic(fig, Path(out))


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True)
    keep = kinds.add_parser("keep-rate", help="Figure A1 from the keep-rate sweep's metrics")
    keep.add_argument(
        "--profile",
        required=True,
        help="workflow config as run (results/<profile>/runs/profile.yaml)",
    )
    keep.add_argument("--out", required=True, help="PNG file")
    tokens = kinds.add_parser("tokens", help="Figures A2/A3: kept tokens on test clips")
    tokens.add_argument("--checkpoint", required=True, help="a trained checkpoint.pt")
    tokens.add_argument(
        "--config", required=True, help="run config: model sparsity, data root and test dataset"
    )
    tokens.add_argument(
        "--clips", type=int, nargs="+", default=[0, 1, 2], help="test query indices to draw"
    )
    tokens.add_argument("--out", required=True, help="PNG file")


def run(args: argparse.Namespace) -> int:
    if args.kind == "keep-rate":
        plot_keep_rate(args.profile, args.out)
    else:
        plot_tokens(args.checkpoint, args.config, args.clips, args.out)
    print(args.out)
    return 0
