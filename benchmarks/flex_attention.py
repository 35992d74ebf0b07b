"""The block-sparse pattern as FlexAttention masks, the GPU variants of the kernel benchmark.

FlexAttention compiles one fused Triton kernel that skips the score tiles a mask leaves empty
and masks the rest element by element, so both variants compute exactly the function of
`svitt.models.attention.sparse_attention` (without a bias):
- `flex_sparse_attention`: the tokens as they are, 128 x 128 tiles. Blocks of G = 56 after
  one [CLS] straddle tile edges, so at T = 16 it still computes 53% of the dense tiles;
- `flex_aligned_attention`: each block is moved to its own 64-token tile (zero padding after
  its G tokens, [CLS] alone in tile 0), so a query tile computes only its [CLS] tile and its
  K_l + K_r key tiles, at the price of 64 / G more tokens.
Their backward needs CUDA in this torch ("FlexAttention does not support backward on CPU"),
so they are CUDA-only benchmark variants; on CPU they run forward only, unfused, which the
tests use to check the masks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

ALIGNED_TILE = 64  # tokens per tile of the aligned layout
# Kernel tiles pinned to the aligned layout's mask blocks, forward and backward (the defaults
# are larger than the mask blocks on some torch versions).
KERNEL_TILES = ("BLOCK_M", "BLOCK_N", "BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2")


def _allowed_blocks(key_blocks: Tensor, device: torch.device) -> Tensor:
    """[query block, key block] bool table of the pattern."""
    num_blocks = key_blocks.shape[0]
    allowed = torch.zeros(num_blocks, num_blocks, dtype=torch.bool, device=device)
    return allowed.scatter_(1, key_blocks.to(device), True)


def pattern_block_mask(
    key_blocks: Tensor, block_size: int, length: int, device: torch.device
) -> BlockMask:
    """Block mask of the pattern over `length` = 1 + n tokens; [CLS] sees and is seen by all."""
    allowed = _allowed_blocks(key_blocks, device)

    def mask_mod(batch: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        q_block = torch.clamp(q_idx - 1, min=0) // block_size
        kv_block = torch.clamp(kv_idx - 1, min=0) // block_size
        return (q_idx == 0) | (kv_idx == 0) | allowed[q_block, kv_block]

    return create_block_mask(mask_mod, None, None, length, length, device=device)


def aligned_positions(num_tokens: int, block_size: int, tile: int, device: torch.device) -> Tensor:
    """Position of each of the 1 + n tokens in the tile-aligned layout: [1 + n] long."""
    if block_size > tile:
        raise ValueError(f"block size G={block_size} does not fit in a tile of {tile}")
    token = torch.arange(num_tokens, device=device)
    return torch.cat([token.new_zeros(1), tile * (1 + token // block_size) + token % block_size])


def aligned_block_mask(
    key_blocks: Tensor, block_size: int, num_tokens: int, tile: int, device: torch.device
) -> tuple[BlockMask, Tensor]:
    """Block mask of the pattern in the aligned layout, and the positions of the real tokens."""
    positions = aligned_positions(num_tokens, block_size, tile, device)
    length = tile * (1 + key_blocks.shape[0])
    real = torch.zeros(length, dtype=torch.bool, device=device).index_fill_(0, positions, True)
    allowed = _allowed_blocks(key_blocks, device)

    def mask_mod(batch: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        q_tile, kv_tile = q_idx // tile, kv_idx // tile
        blocks = allowed[torch.clamp(q_tile - 1, min=0), torch.clamp(kv_tile - 1, min=0)]
        return real[kv_idx] & ((q_tile == 0) | (kv_tile == 0) | blocks)

    mask = create_block_mask(mask_mod, None, None, length, length, device=device, BLOCK_SIZE=tile)
    return mask, positions


@functools.cache
def _compiled_flex() -> Callable[..., Tensor]:
    # One compilation per variant and shape; past the default limit of 8, torch would fall
    # back to the unfused implementation without a word.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(flex_attention, dynamic=False)


def _attend(q: Tensor, k: Tensor, v: Tensor, **kwargs: object) -> Tensor:
    """Compiled FlexAttention on CUDA; eager (the unfused reference) elsewhere."""
    return (_compiled_flex() if q.is_cuda else flex_attention)(q, k, v, **kwargs)


def _cls_attention(q: Tensor, k: Tensor) -> Tensor:
    """[CLS]'s attention over all keys [B, H, N], which the library kernel also returns."""
    return ((q[:, :, :1] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(dim=-1)[:, :, 0]


def flex_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, key_blocks: Tensor, block_size: int
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention through FlexAttention; same contract as `sparse_attention`.

    The block mask is built on every call, as the library kernel builds its indices.
    """
    block_mask = pattern_block_mask(key_blocks, block_size, q.shape[2], q.device)
    return _attend(q, k, v, block_mask=block_mask), _cls_attention(q, k)


def flex_aligned_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_blocks: Tensor,
    block_size: int,
    tile: int = ALIGNED_TILE,
) -> tuple[Tensor, Tensor]:
    """`flex_sparse_attention` on the tile-aligned layout; same contract."""
    batch, heads, length, dim = q.shape
    mask, positions = aligned_block_mask(key_blocks, block_size, length - 1, tile, q.device)

    def spread(x: Tensor) -> Tensor:
        return x.new_zeros(batch, heads, mask.seq_lengths[0], dim).index_copy(2, positions, x)

    options = dict.fromkeys(KERNEL_TILES, tile)
    out = _attend(spread(q), spread(k), spread(v), block_mask=mask, kernel_options=options)
    return out.index_select(2, positions), _cls_attention(q, k)
