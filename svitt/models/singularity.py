"""Singularity baselines: frames encoded alone, late temporal pooling (Table A3 rows
Singularity*, Table A8).

The same `VisionTransformer` built for one frame encodes every frame separately; the
multimodal encoder reads a pooled [CLS] followed by every frame's tokens, and the video
embedding is the projected pooled [CLS].

`Singularity` (arch `singularity`) pools by the mean of the per-frame [CLS] tokens. Nothing
depends on frame order: the frames are put in a canonical order (sorted by a scalar of their
[CLS] token) before pooling and concatenation, so a clip and its frame-shuffled copy give
bit-identical embeddings and VTM scores (cross-attention is order-invariant in exact
arithmetic; the canonical order makes it so in floating point too). Two different frames whose
[CLS] share the exact same first feature would be ordered by position, which can change the
last bits only.

`SingularityTemporal` (arch `singularity_temporal`, Singularity's README: "Singularity-temporal")
adds a learned temporal position embedding to every token of frame t and runs a small
(`TEMPORAL_DEPTH`-layer) BERT-style transformer over the per-frame [CLS] tokens before the mean,
so it sees frame order. Its temporal embedding is sized for `vision.num_frames`: it evaluates
at its training clip length.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from svitt.config import ConfigError, ModelConfig
from svitt.models.bert import BertLayer, init_bert_weights
from svitt.models.svitt import SViTT
from svitt.models.vision import VisionOutput, VisionTransformer

TEMPORAL_DEPTH = 2  # Singularity-temporal's temporal encoder


class Singularity(SViTT):
    def build_vision(self, cfg: ModelConfig) -> VisionTransformer:
        frame = dataclasses.replace(cfg.vision, num_frames=1)
        try:
            return VisionTransformer(frame, cfg.sparsity)
        except ConfigError as err:
            raise ConfigError(
                f"model.{err} (the {cfg.arch} arch encodes each frame alone: "
                f"{frame.num_patches} tokens per sequence)"
            ) from None

    def forward_video(self, video: Tensor) -> tuple[Tensor, Tensor, VisionOutput]:
        """video [B, T, 3, H, W] -> tokens [B, 1 + T*n, Dv], positions [B, T*n], per-frame out.

        The returned VisionOutput is the per-frame one (batch B*T, one frame each).
        """
        frames = video.shape[1]
        out = self.vision.forward_features(rearrange(video, "b t c h w -> (b t) 1 c h w"))
        tokens = rearrange(out.tokens, "(b t) n d -> b t n d", t=frames)
        frame_start = torch.arange(frames, device=video.device) * self.vision.cfg.num_patches
        positions = rearrange(out.positions, "(b t) n -> b t n", t=frames) + frame_start[:, None]
        tokens, positions, pooled = self.pool_frames(tokens, positions)
        tokens = torch.cat([pooled, rearrange(tokens[:, :, 1:], "b t n d -> b (t n) d")], dim=1)
        return tokens, rearrange(positions, "b t n -> b (t n)"), out

    def pool_frames(self, tokens: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-frame tokens [B, T, 1 + n, D] and positions [B, T, n] -> the frames as f_m
        reads them (same shapes) and the pooled [CLS] [B, 1, D]."""
        # Canonical frame order: by the first feature of each frame's [CLS] token, read as is
        # (a reduction as key would round differently with the frame's memory offset).
        order = tokens[:, :, 0, 0].argsort(dim=1, stable=True)  # [B, T]
        tokens = tokens.gather(1, order[:, :, None, None].expand_as(tokens))
        positions = positions.gather(1, order[:, :, None].expand_as(positions))
        return tokens, positions, tokens[:, :, 0].mean(dim=1, keepdim=True)


class SingularityTemporal(Singularity):
    def __init__(self, cfg: ModelConfig, pretraining_heads: bool = True) -> None:
        super().__init__(cfg, pretraining_heads)
        vision = cfg.vision
        self.temporal_embed = nn.Parameter(torch.zeros(1, vision.num_frames, 1, vision.dim))
        # Small random values, not Singularity's zeros: at zero the model starts exactly
        # order-blind (a transformer without positions, then a mean, is permutation-invariant).
        trunc_normal_(self.temporal_embed, std=vision.pos_init_std)
        self.temporal = nn.ModuleList(
            BertLayer(vision.dim, vision.heads, round(vision.dim * vision.mlp_ratio))
            for _ in range(TEMPORAL_DEPTH)
        )
        self.temporal.apply(partial(init_bert_weights, std=vision.init_std))

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"temporal_embed"}

    def pool_frames(self, tokens: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        frames = tokens.shape[1]
        if frames != self.temporal_embed.shape[1]:
            raise ValueError(
                f"singularity_temporal: a clip of {frames} frames; its temporal embedding has "
                f"{self.temporal_embed.shape[1]} (model.vision.num_frames; evaluate at the "
                "training clip length)"
            )
        tokens = tokens + self.temporal_embed
        frame_cls = tokens[:, :, 0]  # [B, T, D]
        for layer in self.temporal:
            frame_cls = layer(frame_cls)
        return tokens, positions, frame_cls.mean(dim=1, keepdim=True)
