"""Sparsity accounting of the supplement's Eq. (1)-(3) and Table A1, as pure functions.

Counting convention (the one that reproduces Table A1 to the printed digits):
- N_v counts the non-[CLS] visual tokens (T * H * W patches before any pruning).
- Each visual layer counts the rows of its non-[CLS] tokens only; each such token attends to
  `(K_l + K_r) * G` block keys plus the [CLS] key. The [CLS] row (which sees every key) is not
  counted. When the local and random blocks cover every block (few tokens left after pruning),
  a token sees all `n + 1` keys, as in dense attention.
- Each multimodal layer counts `N_m * N_t` cross-attention edges (text queries x kept
  non-[CLS] video tokens), N_m being pruned after the layers in `cross_drop_layers`.
- The dense reference uses the same convention (`N_v * (N_v + 1)` per visual layer), so a dense
  config has sparsity exactly 0. Table A1 rounds identically with Eq. (3)'s `N_v^2`.

Pruning after layer `l` (0-indexed) changes the token count seen by layers `l + 1` onwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from svitt.config import ModelConfig, SparsityConfig
from svitt.models.archs import ARCHS

# The archs with a space-time graph to count (the frame-level ones encode frames separately).
SPACE_TIME_ARCHS = tuple(name for name, arch in ARCHS.items() if not arch.frame_level)


def keep_count(num_tokens: int, keep_rate: float) -> int:
    """`ceil(q * n)` tokens survive pruning; the epsilon absorbs float error (0.1 * 270)."""
    return max(1, math.ceil(keep_rate * num_tokens - 1e-9))


def tokens_per_layer(
    num_tokens: int, depth: int, keep_rate: float, drop_layers: tuple[int, ...]
) -> list[int]:
    """Input token count (without [CLS]) of each of `depth` layers."""
    counts = []
    for layer in range(depth):
        counts.append(num_tokens)
        if layer in drop_layers:
            num_tokens = keep_count(num_tokens, keep_rate)
    return counts


def keys_per_token(num_tokens: int, sparsity: SparsityConfig) -> int:
    """Keys one non-[CLS] query attends to in a visual layer of `num_tokens` tokens."""
    blocks = sparsity.local_blocks + sparsity.random_blocks
    if sparsity.attention == "dense" or blocks >= sparsity.num_blocks(num_tokens):
        return num_tokens + 1
    return blocks * sparsity.block_size + 1


def visual_edges(num_tokens: int, sparsity: SparsityConfig) -> int:
    """Eq. (1): edges of one visual layer, [CLS] key included, [CLS] row excluded."""
    return num_tokens * keys_per_token(num_tokens, sparsity)


@dataclass(frozen=True)
class EdgeCount:
    """Table A1 quantities for one model configuration (per sample)."""

    visual_tokens: list[int]  # per visual layer, without [CLS]
    multimodal_tokens: list[int]  # video tokens seen by each multimodal layer
    visual_edges: int
    multimodal_edges: int
    dense_edges: int  # the same model with dense attention and no pruning

    @property
    def edges(self) -> int:
        return self.visual_edges + self.multimodal_edges

    @property
    def sparsity(self) -> float:
        """Eq. (3): the fraction of the dense model's edges removed."""
        return 1.0 - self.edges / self.dense_edges


def count_edges(model: ModelConfig, text_len: int) -> EdgeCount:
    """Table A1 row of `model` with text length `text_len` (N_t)."""
    if model.frame_level:
        raise ValueError(
            f"count_edges: model.arch {model.arch!r} encodes frames separately and has no "
            f"space-time graph to count; allowed: {', '.join(map(repr, SPACE_TIME_ARCHS))}"
        )
    if text_len < 1:
        raise ValueError(f"count_edges: text_len must be >= 1, got {text_len}")
    sp = model.sparsity
    num_patches = model.vision.num_patches
    visual = tokens_per_layer(
        num_patches, model.vision.depth, sp.visual_keep_rate, sp.visual_drop_layers
    )
    final = visual[-1]
    if model.vision.depth - 1 in sp.visual_drop_layers:
        final = keep_count(final, sp.visual_keep_rate)
    cross_depth = model.text.cross_depth if ARCHS[model.arch].multimodal else 0
    multimodal = tokens_per_layer(final, cross_depth, sp.cross_keep_rate, sp.cross_drop_layers)
    dense_visual = model.vision.depth * num_patches * (num_patches + 1)
    return EdgeCount(
        visual_tokens=visual,
        multimodal_tokens=multimodal,
        visual_edges=sum(visual_edges(n, sp) for n in visual),
        multimodal_edges=sum(n * text_len for n in multimodal),
        dense_edges=dense_visual + cross_depth * num_patches * text_len,
    )
