"""Singularity baseline: frames encoded alone, late temporal pooling (Table A3 rows
Singularity*, Table A8).

The same `VisionTransformer` built for one frame encodes every frame separately. The video
embedding is the mean of the per-frame [CLS] tokens (projected); the multimodal encoder reads
the pooled [CLS] followed by every frame's tokens. Nothing depends on frame order: the frames are
put in a canonical order (sorted by a scalar of their [CLS] token) before pooling and
concatenation, so a clip and its frame-shuffled copy give bit-identical embeddings and VTM
scores (cross-attention is order-invariant in exact arithmetic; the canonical order makes it
so in floating point too). Two different frames whose [CLS] share the exact same first feature
would be ordered by position, which can change the last bits only.
"""

from __future__ import annotations

import dataclasses

import torch
from einops import rearrange
from torch import Tensor

from svitt.config import ConfigError, ModelConfig
from svitt.models.svitt import SViTT
from svitt.models.vision import VisionOutput, VisionTransformer


class Singularity(SViTT):
    def build_vision(self, cfg: ModelConfig) -> VisionTransformer:
        frame = dataclasses.replace(cfg.vision, num_frames=1)
        try:
            return VisionTransformer(frame, cfg.sparsity)
        except ConfigError as err:
            raise ConfigError(
                f"model.{err} (the singularity arch encodes each frame alone: "
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
        # Canonical frame order: by the first feature of each frame's [CLS] token, read as is
        # (a reduction as key would round differently with the frame's memory offset).
        order = tokens[:, :, 0, 0].argsort(dim=1, stable=True)  # [B, T]
        tokens = tokens.gather(1, order[:, :, None, None].expand_as(tokens))
        positions = positions.gather(1, order[:, :, None].expand_as(positions))
        pooled = tokens[:, :, 0].mean(dim=1, keepdim=True)
        tokens = torch.cat([pooled, rearrange(tokens[:, :, 1:], "b t n d -> b (t n) d")], dim=1)
        return tokens, rearrange(positions, "b t n -> b (t n)"), out
