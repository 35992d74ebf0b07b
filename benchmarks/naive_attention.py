"""Baselines for the block-sparse attention kernel.

`loop_sparse_attention` is the straightforward approach of the authors' release, written here
from the description in REFERENCE.md (not copied): a Python loop over query blocks, each
gathering its key blocks and running a small softmax attention. Unlike the release it masks
the padded keys of the last block, so it computes exactly the same function as
`svitt.models.attention.sparse_attention` and serves as the "naive" speed baseline.

`gather_sdpa_attention` is our first library kernel, kept as the middle baseline: keys and
values gathered token by token for every query block, then one batched SDPA call.

`sparse_mask` builds the equivalent dense boolean mask, so `masked_dense_attention` is the
ground truth both kernels are checked against (tests/test_benchmarks.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def loop_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, key_blocks: Tensor, block_size: int
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention, one query block per loop iteration; q, k, v: [B, H, 1 + n, d].

    Returns the output [B, H, 1 + n, d] and [CLS]'s attention over all keys [B, H, 1 + n].
    """
    n = q.shape[2] - 1
    scale = q.shape[-1] ** -0.5
    cls_logits = (q[:, :, :1] @ k.transpose(-1, -2)) * scale
    cls_probs = cls_logits.softmax(dim=-1)
    outputs = [cls_probs @ v]
    for i, blocks in enumerate(key_blocks.tolist()):
        start = 1 + i * block_size
        stop = min(start + block_size, n + 1)
        # [CLS] key first, then the picked blocks; a padded tail simply has fewer keys.
        keys = [k[:, :, :1]]
        values = [v[:, :, :1]]
        for b in blocks:
            lo, hi = 1 + b * block_size, min(1 + (b + 1) * block_size, n + 1)
            keys.append(k[:, :, lo:hi])
            values.append(v[:, :, lo:hi])
        logits = (q[:, :, start:stop] @ torch.cat(keys, dim=2).transpose(-1, -2)) * scale
        outputs.append(logits.softmax(dim=-1) @ torch.cat(values, dim=2))
    return torch.cat(outputs, dim=2), cls_probs[:, :, 0]


def gather_sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, key_blocks: Tensor, block_size: int
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention as SDPA over token-level gathers; same contract as the loop."""
    heads, n = q.shape[1], q.shape[2] - 1
    num_blocks = key_blocks.shape[0]
    offsets = torch.arange(block_size)
    key_index = (key_blocks[:, :, None] * block_size + offsets).flatten(1) + 1
    key_index = torch.cat([key_index.new_zeros(num_blocks, 1), key_index], dim=1)
    query_index = 1 + torch.arange(num_blocks * block_size).view(num_blocks, -1)
    mask = None
    if num_blocks * block_size > n:  # mask the padded keys; padded queries are dropped
        mask = torch.zeros(key_index.shape, dtype=q.dtype).masked_fill(key_index > n, -torch.inf)
        mask = mask[:, None, :].repeat(heads, 1, 1).to(q.device)

    def gather(x: Tensor, index: Tensor) -> Tensor:
        picked = x.index_select(2, index.clamp(max=n).flatten().to(x.device))
        return picked.view(x.shape[0], heads * num_blocks, index.shape[1], x.shape[-1])

    out = F.scaled_dot_product_attention(
        gather(q, query_index), gather(k, key_index), gather(v, key_index), attn_mask=mask
    )
    out = out.view(q.shape[0], heads, num_blocks * block_size, -1)[:, :, :n]
    cls_probs = ((q[:, :, :1] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(dim=-1)
    return torch.cat([cls_probs @ v, out], dim=2), cls_probs[:, :, 0]


def sparse_mask(num_tokens: int, key_blocks: Tensor, block_size: int) -> Tensor:
    """Boolean [1 + n, 1 + n] mask (True = attend) of the block-sparse pattern with [CLS]."""
    n = num_tokens
    block_of = torch.arange(n) // block_size  # block of each non-[CLS] token
    allowed = torch.zeros(key_blocks.shape[0], key_blocks.shape[0], dtype=torch.bool)
    allowed.scatter_(1, key_blocks.cpu(), True)  # [query block, key block]
    mask = torch.ones(n + 1, n + 1, dtype=torch.bool)
    mask[1:, 1:] = allowed[block_of[:, None], block_of[None, :]]
    return mask


def masked_dense_attention(
    q: Tensor, k: Tensor, v: Tensor, key_blocks: Tensor, block_size: int
) -> Tensor:
    """Ground truth: dense SDPA with the block-sparse pattern as a boolean mask."""
    mask = sparse_mask(q.shape[2] - 1, key_blocks, block_size).to(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
