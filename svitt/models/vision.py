"""Space-time BEiT/ViT visual encoder with edge sparsity and node sparsity (SViTT f_v).

One transformer over all T*H*W patch tokens of a clip plus [CLS]. Position information is a
3D relative bias per layer (BEiT) and/or a learned absolute embedding (ViT, Frozen-in-Time).
Every token carries its original raster index `t*H*W + h*W + w`, so the bias stays right after
the token order permutation and after pruning. Parameter names follow timm's BEiT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.nn.init import trunc_normal_
from torch.utils.checkpoint import checkpoint

from svitt.config import SparsityConfig, VisionConfig
from svitt.models.attention import (
    BiasFn,
    block_pattern,
    dense_attention,
    pattern_edges,
    sparse_attention,
)
from svitt.models.order import token_order
from svitt.models.pruning import prune_tokens


@dataclass
class VisionOutput:
    tokens: Tensor  # [B, 1 + n, D] after the final (token) norm, [CLS] first
    positions: Tensor  # [B, n] long: raster index t*H*W + h*W + w of each kept token
    pooled: Tensor | None = None  # [B, D] the pooler's output: see VisionConfig.pool
    kept: list[Tensor] = field(default_factory=list)  # per pruning step: [B, n_kept]
    scores: list[Tensor] = field(default_factory=list)  # per pruning step: [B, n_before]
    scored_positions: list[Tensor] = field(default_factory=list)  # raster index of each score
    edges: int = 0  # query-key pairs attended per sample, summed over layers (Table A1 rule)


def num_relative_distance(grid: tuple[int, int, int]) -> int:
    """Rows of a 3D relative bias table: every (dt, dh, dw) offset plus 3 [CLS] entries."""
    t, h, w = grid
    return (2 * t - 1) * (2 * h - 1) * (2 * w - 1) + 3


def relative_position_index(
    query_pos: Tensor, key_pos: Tensor, grid: tuple[int, int, int]
) -> Tensor:
    """Bias table row of each (query, key) pair of raster positions; -1 marks [CLS].

    timm's BEiT layout, extended with time as the most significant axis: offset = query - key,
    then the last three rows are [CLS]->token, token->[CLS] and [CLS]->[CLS].
    """
    t, h, w = grid
    offsets = num_relative_distance(grid) - 3

    def split(pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return pos // (h * w), (pos // w) % h, pos % w

    qt, qh, qw = split(query_pos)
    kt, kh, kw = split(key_pos)
    index = ((qt - kt + t - 1) * (2 * h - 1) + qh - kh + h - 1) * (2 * w - 1) + qw - kw + w - 1
    query_cls, key_cls = query_pos < 0, key_pos < 0
    index = torch.where(key_cls, offsets + 1, index)
    index = torch.where(query_cls, offsets, index)
    return torch.where(query_cls & key_cls, offsets + 2, index)


class PatchEmbed(nn.Module):
    """Per-frame patch embedding: [B, T, 3, H, W] -> [B, T*h*w, D] in raster order."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, video: Tensor) -> Tensor:
        frames = video.shape[1]
        x = self.proj(rearrange(video, "b t c h w -> (b t) c h w"))
        return rearrange(x, "(b t) d h w -> b (t h w) d", t=frames)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """BEiT attention (q and v biases, no k bias) over [CLS] + tokens, dense or block-sparse."""

    def __init__(self, cfg: VisionConfig, sparsity: SparsityConfig, layer: int) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.grid = cfg.grid
        self.sparsity = sparsity
        self.layer = layer
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(cfg.dim))
        self.v_bias = nn.Parameter(torch.zeros(cfg.dim))
        self.relative_position_bias_table = (
            nn.Parameter(torch.zeros(num_relative_distance(cfg.grid), cfg.heads))
            if cfg.rel_pos_bias
            else None
        )
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def bias_fn(self, positions: Tensor) -> BiasFn | None:
        """Relative bias lookup for sequence indices; positions: [B or 1, n] raster indices."""
        table = self.relative_position_bias_table
        if table is None:
            return None
        with_cls = F.pad(positions, (1, 0), value=-1)

        def bias(query_index: Tensor, key_index: Tensor) -> Tensor:
            index = relative_position_index(
                with_cls[:, query_index][..., :, None],
                with_cls[:, key_index][..., None, :],
                self.grid,
            )
            return table[index].movedim(-1, 1)

        return bias

    def key_blocks(self, num_tokens: int) -> Tensor:
        """The random pattern: global RNG in training, a fixed seed per layer at evaluation."""
        sp = self.sparsity
        generator = None
        if not self.training:
            generator = torch.Generator().manual_seed(sp.pattern_seed * 1_000_003 + self.layer)
        return block_pattern(
            sp.num_blocks(num_tokens), sp.local_blocks, sp.random_blocks, generator
        )

    def forward(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, int]:
        """Output [B, 1+n, D], [CLS] attention [B, H, 1+n], edges of the non-[CLS] queries."""
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.heads)
        num_tokens = x.shape[1] - 1
        if self.sparsity.attention == "sparse":
            key_blocks = self.key_blocks(num_tokens)
            out, cls_attn = sparse_attention(
                q, k, v, key_blocks, self.sparsity.block_size, self.bias_fn(positions)
            )
            edges = pattern_edges(key_blocks, num_tokens, self.sparsity.block_size)
        else:
            out, cls_attn = dense_attention(q, k, v, self.bias_fn(positions))
            edges = num_tokens * (num_tokens + 1)
        return self.proj(rearrange(out, "b h n d -> b n (h d)")), cls_attn, edges


class DropPath(nn.Module):
    """Stochastic depth: drops a sample's residual branch with probability `rate` in training.

    Our own few lines rather than timm's, so importing the model does not import timm (and,
    through it, torchvision and torch._dynamo): seconds per process in a DAG of short jobs.
    """

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    def __init__(
        self, cfg: VisionConfig, sparsity: SparsityConfig, layer: int, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg, sparsity, layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio))
        scale = cfg.layer_scale_init
        self.gamma_1 = nn.Parameter(torch.full((cfg.dim,), scale)) if scale else None
        self.gamma_2 = nn.Parameter(torch.full((cfg.dim,), scale)) if scale else None

    def forward(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, int]:
        attn, cls_attn, edges = self.attn(self.norm1(x), positions)
        if self.gamma_1 is not None:
            attn = self.gamma_1 * attn
        x = x + self.drop_path(attn)
        mlp = self.mlp(self.norm2(x))
        if self.gamma_2 is not None:
            mlp = self.gamma_2 * mlp
        return x + self.drop_path(mlp), cls_attn, edges


class VisionTransformer(nn.Module):
    """SViTT's visual encoder f_v; `forward_features` returns a `VisionOutput`.

    `norm` normalises every output token. With `pool: cls` the pooled output is the normalised
    [CLS]; with `pool: mean` it is `fc_norm(mean of the patch tokens)` (timm's and HF's BEiT
    mean pooling), and `norm` is the release's separate `vision_layernorm` for f_m's input.
    """

    def __init__(self, cfg: VisionConfig, sparsity: SparsityConfig) -> None:
        super().__init__()
        for layer in sparsity.visual_drop_layers:
            if sparsity.visual_keep_rate < 1.0 and not 0 <= layer < cfg.depth:
                raise ValueError(
                    f"sparsity.visual_drop_layers: got {layer}; allowed: layer indices in "
                    f"[0, {cfg.depth - 1}] (vision.depth={cfg.depth})"
                )
        sparsity.check_fits(cfg.num_patches)
        self.cfg = cfg
        self.sparsity = sparsity
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, cfg.dim)) if cfg.abs_pos_emb else None
        )
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(cfg, sparsity, layer, rate) for layer, rate in enumerate(rates)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.fc_norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps) if cfg.pool == "mean" else None
        self.register_buffer("order", token_order(cfg.grid, sparsity.token_order), persistent=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith(("cls_token", "relative_position_bias_table")):
                trunc_normal_(param, std=0.02)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=cfg.pos_init_std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=self.cfg.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        return {
            name
            for name, _ in self.named_parameters()
            if name.endswith(("cls_token", "pos_embed", "relative_position_bias_table"))
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _check_input(self, video: Tensor) -> None:
        cfg = self.cfg
        expected = (cfg.num_frames, 3, cfg.image_size, cfg.image_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"VisionTransformer: video must be [B, T, 3, H, W] = "
                f"[B, {', '.join(map(str, expected))}] "
                f"(vision.num_frames={cfg.num_frames}, vision.image_size={cfg.image_size}); "
                f"got {list(video.shape)}"
            )

    def _keep_scores(self, cls_attn: Tensor, layer: int) -> Tensor:
        """[B, n] scores of the non-[CLS] tokens; the top ones survive pruning."""
        if self.sparsity.keep_strategy == "cls":
            return cls_attn[:, :, 1:].mean(dim=1)
        batch, num_tokens = cls_attn.shape[0], cls_attn.shape[2] - 1
        generator = None
        if not self.training:
            seed = self.sparsity.pattern_seed * 1_000_003 + 1_000 + layer
            generator = torch.Generator().manual_seed(seed)
        return torch.rand(batch, num_tokens, generator=generator).to(cls_attn.device)

    def forward_features(self, video: Tensor) -> VisionOutput:
        self._check_input(video)
        x = self.patch_embed(video)
        batch = x.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1).to(x.dtype), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = torch.cat([x[:, :1], x[:, 1:].index_select(1, self.order)], dim=1)
        positions = self.order[None]  # [1, n] until pruning makes it per sample
        out = VisionOutput(tokens=x, positions=positions)
        sp = self.sparsity
        for layer, block in enumerate(self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x, cls_attn, edges = checkpoint(block, x, positions, use_reentrant=False)
            else:
                x, cls_attn, edges = block(x, positions)
            out.edges += edges
            if layer in sp.visual_drop_layers and sp.visual_keep_rate < 1.0:
                scores = self._keep_scores(cls_attn.detach(), layer)
                before = positions.expand(batch, -1)
                x, positions = prune_tokens(x, before, scores, sp.visual_keep_rate)
                out.scores.append(scores)
                out.scored_positions.append(before)
                out.kept.append(positions)
        out.tokens = self.norm(x)
        out.positions = positions.expand(batch, -1)
        if self.fc_norm is None:
            out.pooled = out.tokens[:, 0]
        else:
            out.pooled = self.fc_norm(x[:, 1:].mean(dim=1))
        return out
