"""Dense and block-sparse attention over a `[CLS] + n tokens` sequence.

Sparse pattern (supplement A.1, BigBird-style): the n non-[CLS] tokens are cut into blocks of
G; each query block attends to a centred window of `K_l` blocks, to `K_r` other blocks drawn at
random, and to [CLS]; [CLS] attends to every key. The padded tail of the last block is masked.

Both paths take the additive bias through a `BiasFn`, so the relative position bias is
gathered only for the query-key pairs that are actually computed: no N x N tensor in the
sparse path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

# (query_index [*, Nq], key_index [*, Nk]) -> additive bias [B or 1, H, *, Nq, Nk].
# Indices are positions in the current sequence, 0 being [CLS].
BiasFn = Callable[[Tensor, Tensor], Tensor]


def block_pattern(
    num_blocks: int,
    local_blocks: int,
    random_blocks: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Key blocks of each query block: [num_blocks, K] long on CPU, local blocks first.

    With `generator=None` the random blocks come from torch's global RNG. When the local and
    random blocks would cover every block, every query block sees all blocks (dense).
    """
    if local_blocks + random_blocks >= num_blocks:
        return torch.arange(num_blocks).expand(num_blocks, num_blocks).clone()
    # A centred window, shifted inward at the ends so it always holds `local_blocks` blocks.
    start = (torch.arange(num_blocks) - local_blocks // 2).clamp(0, num_blocks - local_blocks)
    local = start[:, None] + torch.arange(local_blocks)
    noise = torch.rand(num_blocks, num_blocks, generator=generator)
    noise.scatter_(1, local, 2.0)  # above any uniform draw: local blocks are never drawn
    drawn = noise.topk(random_blocks, dim=1, largest=False).indices
    return torch.cat([local, drawn], dim=1)


def block_sizes(num_tokens: int, block_size: int) -> Tensor:
    """Real (unpadded) tokens of each block: [num_blocks]."""
    starts = torch.arange(0, num_tokens, block_size)
    return (num_tokens - starts).clamp(max=block_size)


def pattern_edges(key_blocks: Tensor, num_tokens: int, block_size: int) -> int:
    """Query-key pairs of the non-[CLS] queries under `key_blocks`, [CLS] key included."""
    sizes = block_sizes(num_tokens, block_size)
    keys = sizes[key_blocks].sum(dim=1) + 1
    return int((sizes * keys).sum())


def _cls_row(q: Tensor, k: Tensor, v: Tensor, bias_fn: BiasFn | None) -> tuple[Tensor, Tensor]:
    """[CLS] output [B, H, 1, d] and its attention over all keys [B, H, N]."""
    logits = (q[:, :, :1] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if bias_fn is not None:
        keys = torch.arange(k.shape[2], device=q.device)
        logits = logits + bias_fn(keys[:1], keys)
    probs = logits.softmax(dim=-1)
    return probs @ v, probs[:, :, 0]


def dense_attention(
    q: Tensor, k: Tensor, v: Tensor, bias_fn: BiasFn | None = None
) -> tuple[Tensor, Tensor]:
    """Full attention through SDPA; returns the output and [CLS]'s attention [B, H, N]."""
    bias = None
    if bias_fn is not None:
        index = torch.arange(q.shape[2], device=q.device)
        bias = bias_fn(index, index).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    _, cls_attn = _cls_row(q, k, v, bias_fn)
    return out, cls_attn


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_blocks: Tensor,
    block_size: int,
    bias_fn: BiasFn | None = None,
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention; q, k, v: [B, H, 1 + n, d], [CLS] first.

    `key_blocks` ([num_blocks, K], from `block_pattern`) is shared by the batch and the heads.
    Returns the output [B, H, 1 + n, d] and [CLS]'s attention over all keys [B, H, 1 + n].
    """
    heads, length = q.shape[1], q.shape[2]
    n = length - 1
    num_blocks = key_blocks.shape[0]
    if num_blocks != -(-n // block_size):
        raise ValueError(
            f"sparse_attention: key_blocks has {num_blocks} rows, but {n} tokens make "
            f"{-(-n // block_size)} blocks of {block_size}"
        )
    device = q.device
    offsets = torch.arange(block_size, device=device)
    key_index = rearrange(
        key_blocks.to(device)[:, :, None] * block_size + offsets, "nb k g -> nb (k g)"
    )
    key_index = torch.cat([key_index.new_zeros(num_blocks, 1), key_index + 1], dim=1)
    query_index = 1 + torch.arange(num_blocks * block_size, device=device).view(num_blocks, -1)
    # Positions past the last token (the padded tail of the last block) are clamped onto a real
    # token so the gathers stay in range; as keys they are masked, as queries dropped.
    key_index, key_pad = key_index.clamp(max=n), key_index > n
    query_index = query_index.clamp(max=n)
    mask = None
    if bias_fn is not None:
        mask = bias_fn(query_index, key_index).to(q.dtype)
    if num_blocks * block_size > n:  # from sizes, not the tensor: no device sync
        padding = torch.zeros(key_pad.shape, device=device, dtype=q.dtype)
        padding = padding.masked_fill(key_pad, float("-inf"))[:, None, :]  # [nb, 1, 1+KG]
        mask = padding.expand(1, heads, -1, -1, -1) if mask is None else mask + padding
    if mask is not None:
        mask = rearrange(mask, "b h nb g k -> b (h nb) g k")

    def gather(x: Tensor, index: Tensor) -> Tensor:
        """[B, H, N, d] -> [B, H*nb, m, d]: the rows of `index` [nb, m] for each block."""
        picked = x.index_select(2, index.flatten())
        return rearrange(picked, "b h (nb m) d -> b (h nb) m d", nb=num_blocks)

    out = F.scaled_dot_product_attention(
        gather(q, query_index), gather(k, key_index), gather(v, key_index), attn_mask=mask
    )
    out = rearrange(out, "b (h nb) g d -> b h (nb g) d", h=heads)[:, :, :n]
    cls_out, cls_attn = _cls_row(q, k, v, bias_fn)
    return torch.cat([cls_out, out], dim=2), cls_attn
