"""Token orders over a (T, H, W) grid for block chunking (supplement B.4, Table A7).

An order is a permutation `perm` of the raster indices `t*H*W + h*W + w`: the encoder's
sequence position i holds raster token `perm[i]`. Morton and Hilbert orders sort the grid
points by their index on a curve over the smallest power-of-two cube holding the grid, so any
grid size works (points outside the grid are simply absent).
"""

from __future__ import annotations

import torch
from torch import Tensor

from svitt.config import TOKEN_ORDERS, TokenOrder


def _grid_coords(grid: tuple[int, int, int]) -> Tensor:
    """[T*H*W, 3] (t, h, w) of every raster index."""
    axes = [torch.arange(size) for size in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def _bits(grid: tuple[int, int, int]) -> int:
    return max(1, (max(grid) - 1).bit_length())


def morton_index(coords: Tensor, bits: int) -> Tensor:
    """Z-order code of integer points [N, D]: bits interleaved, first axis most significant."""
    dims = coords.shape[1]
    code = torch.zeros(coords.shape[0], dtype=torch.long)
    for bit in range(bits):
        for axis in range(dims):
            code |= ((coords[:, axis] >> bit) & 1) << (bit * dims + dims - 1 - axis)
    return code


def hilbert_index(coords: Tensor, bits: int) -> Tensor:
    """Hilbert-curve index of integer points [N, D] in a 2**bits cube (Skilling, 2004)."""
    x = [coords[:, axis].clone() for axis in range(coords.shape[1])]
    dims = len(x)
    # Undo the excess work of the inverse transform: axes -> "transposed" Hilbert index.
    q = 1 << (bits - 1)
    while q > 1:
        p = q - 1
        for i in range(dims):
            high = (x[i] & q) != 0  # then invert the low bits of x[0], else exchange them
            swap = (x[0] ^ x[i]) & p
            first = torch.where(high, x[0] ^ p, x[0] ^ swap)
            x[i] = torch.where(high, x[i], x[i] ^ swap)
            x[0] = first
        q >>= 1
    for i in range(1, dims):  # Gray encode
        x[i] = x[i] ^ x[i - 1]
    flips = torch.zeros_like(x[0])
    q = 1 << (bits - 1)
    while q > 1:
        flips = torch.where((x[dims - 1] & q) != 0, flips ^ (q - 1), flips)
        q >>= 1
    x = [xi ^ flips for xi in x]
    # The transposed form holds the index bits level by level, first axis most significant.
    index = torch.zeros_like(x[0])
    for bit in reversed(range(bits)):
        for i in range(dims):
            index = (index << 1) | ((x[i] >> bit) & 1)
    return index


def token_order(grid: tuple[int, int, int], kind: TokenOrder) -> Tensor:
    """Permutation [T*H*W] (long) of the raster indices in the order `kind`."""
    num_tokens = grid[0] * grid[1] * grid[2]
    if kind == "raster":
        return torch.arange(num_tokens)
    coords = _grid_coords(grid)
    if kind == "morton":
        return morton_index(coords, _bits(grid)).argsort()
    if kind == "hilbert":
        return hilbert_index(coords, _bits(grid)).argsort()
    raise ValueError(f"token_order: unknown order {kind!r}; allowed: {', '.join(TOKEN_ORDERS)}")


def inverse_permutation(perm: Tensor) -> Tensor:
    """`inv` with `inv[perm[i]] == i`, to put a permuted sequence back in raster order."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv
