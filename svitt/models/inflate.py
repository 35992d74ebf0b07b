"""Temporal expansion of position parameters on state dicts (supplement Eq. 4-7, 10, 11).

An image checkpoint is a 1-frame checkpoint: its relative bias table has
`(2*1-1)(2H-1)(2W-1) + 3` rows and its absolute embedding `1 + H*W` rows, so image -> video
and T1 -> T2 are one operation:
- absolute embedding (Eq. 7, frames counted from 1): frame t of T2 copies frame
  `floor(t * T1 / T2 + 1/2)` of T1 (clamped to [1, T1]); for T1 = 1 that is Eq. 6's copy.
- relative bias (Eq. 10-11): the temporal offset dt of T2 frames reads offset
  `sign(dt) * min(floor(|dt| * T1 / T2 + 1/2), T1 - 1)` of T1, the same nearest-neighbour rule
  applied to time differences (symmetric in dt, so forward and backward stay mirror images).
- the [CLS]-key entries (token->[CLS], [CLS]->[CLS]) gain `log(T2 / T1)`: each spatial key now
  appears T2 / T1 times as often, and this keeps [CLS]'s share of the attention. With it, an
  image model and its inflated T-frame model give the same output on a clip of one repeated
  frame (exactly, for relative-bias models); without it [CLS] would be diluted T-fold.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CLS_ROWS = 3  # [CLS]->token, token->[CLS], [CLS]->[CLS]; the table's last rows


def frame_source_index(src_frames: int, dst_frames: int) -> list[int]:
    """Eq. 7, 0-indexed: which source frame each of the `dst_frames` frames copies."""
    return [
        min(max((2 * t * src_frames + dst_frames) // (2 * dst_frames), 1), src_frames) - 1
        for t in range(1, dst_frames + 1)
    ]


def offset_source_index(src_frames: int, dst_frames: int) -> list[int]:
    """Which source temporal offset (index 0 .. 2*T1-2) each destination offset copies."""
    index = []
    for offset in range(-(dst_frames - 1), dst_frames):
        size = (2 * abs(offset) * src_frames + dst_frames) // (2 * dst_frames)
        size = min(size, src_frames - 1)
        index.append((size if offset >= 0 else -size) + src_frames - 1)
    return index


def _check_frames(src_frames: int, dst_frames: int) -> None:
    if src_frames < 1 or dst_frames < 1:
        raise ValueError(
            f"inflate: frame counts must be >= 1; got src_frames={src_frames}, "
            f"dst_frames={dst_frames}"
        )


def inflate_rel_pos_table(
    table: Tensor, src_frames: int, dst_frames: int, grid_hw: tuple[int, int], key: str = "table"
) -> Tensor:
    """[(2*T1-1)(2H-1)(2W-1) + 3, heads] -> [(2*T2-1)(2H-1)(2W-1) + 3, heads]."""
    _check_frames(src_frames, dst_frames)
    h, w = grid_hw
    spatial = (2 * h - 1) * (2 * w - 1)
    expected = (2 * src_frames - 1) * spatial + CLS_ROWS
    if table.ndim != 2 or table.shape[0] != expected:
        raise ValueError(
            f"{key}: expected a relative bias table of {expected} rows for {src_frames} frames "
            f"of a {h}x{w} grid, got shape {list(table.shape)}"
        )
    offsets = table[:-CLS_ROWS].reshape(2 * src_frames - 1, spatial, table.shape[1])
    offsets = offsets[offset_source_index(src_frames, dst_frames)].reshape(-1, table.shape[1])
    cls = table[-CLS_ROWS:].clone()
    cls[1:] += math.log(dst_frames / src_frames)  # rows token->[CLS] and [CLS]->[CLS]
    return torch.cat([offsets, cls])


def inflate_pos_embed(
    pos_embed: Tensor, src_frames: int, dst_frames: int, grid_hw: tuple[int, int], key: str = "pos"
) -> Tensor:
    """[1, 1 + T1*H*W, D] -> [1, 1 + T2*H*W, D], [CLS] first, frames copied by Eq. 7."""
    _check_frames(src_frames, dst_frames)
    area = grid_hw[0] * grid_hw[1]
    if pos_embed.ndim != 3 or pos_embed.shape[1] != 1 + src_frames * area:
        raise ValueError(
            f"{key}: expected [1, {1 + src_frames * area}, D] for {src_frames} frames of a "
            f"{grid_hw[0]}x{grid_hw[1]} grid, got shape {list(pos_embed.shape)}"
        )
    frames = pos_embed[:, 1:].reshape(pos_embed.shape[0], src_frames, area, -1)
    frames = frames[:, frame_source_index(src_frames, dst_frames)]
    return torch.cat([pos_embed[:, :1], frames.flatten(1, 2)], dim=1)


def inflate_state_dict(
    state_dict: dict[str, Tensor],
    src_frames: int,
    dst_frames: int,
    grid_hw: tuple[int, int],
    prefix: str = "",
) -> dict[str, Tensor]:
    """A copy of `state_dict` with the visual encoder under `prefix` resized T1 -> T2 frames.

    Touches `{prefix}pos_embed` and every `{prefix}...relative_position_bias_table`; all other
    entries are passed through unchanged.
    """
    out = dict(state_dict)
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        if key.endswith("relative_position_bias_table"):
            out[key] = inflate_rel_pos_table(value, src_frames, dst_frames, grid_hw, key)
        elif key == f"{prefix}pos_embed":
            out[key] = inflate_pos_embed(value, src_frames, dst_frames, grid_hw, key)
    return out
