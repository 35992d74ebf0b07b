"""Dense and block-sparse attention over a `[CLS] + n tokens` sequence.

Sparse pattern (supplement A.1, BigBird-style): the n non-[CLS] tokens are cut into blocks of
G; each query block attends to a centred window of `K_l` blocks, to `K_r` other blocks drawn at
random, and to [CLS]; [CLS] attends to every key. The padded tail of the last block is masked.

Both paths take the additive bias through a `BiasFn`, so the relative position bias is
gathered only for the query-key pairs that are actually computed: no N x N tensor in the
sparse path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from svitt.models import cpu_kernel

# (query_index [*, Nq], key_index [*, Nk]) -> additive bias [B or 1, H, *, Nq, Nk].
# Indices are positions in the current sequence, 0 being [CLS].
BiasFn = Callable[[Tensor, Tensor], Tensor]
_CPP_DTYPES = (torch.float32, torch.float64)


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


Blocks = tuple[Tensor, Tensor, Tensor]  # rows [BH*nb, G, d], probs [.., G, K*G], cls [.., G, 1]


class _Saved(NamedTuple):
    """What the block backward needs from the forward."""

    scaled: Tensor  # q * d^-0.5, [B, H, N, d]
    k: Tensor
    v: Tensor
    key_blocks: Tensor  # [num_blocks, K]
    blocks: Blocks


def _blocks_forward_torch(
    scaled: Tensor, k: Tensor, v: Tensor, key_blocks: Tensor, mask: Tensor | None, block_size: int
) -> Blocks:
    """Every query block against its gathered key blocks and the [CLS] key, in PyTorch ops.

    Keys and values are gathered a whole block (G * d contiguous floats) at a time, the [CLS]
    key is scored separately instead of being concatenated to every block, and the softmax
    runs in place.
    """
    batch, heads, _, dim = scaled.shape
    num_blocks, flat = key_blocks.shape[0], key_blocks.flatten()
    by_head = functools.partial(_by_head, batch=batch, heads=heads)
    qb = _blocks(scaled, num_blocks, block_size).reshape(-1, block_size, dim)
    kg, vg = (_gather(x, flat, num_blocks, block_size) for x in (k, v))
    k_cls, v_cls = by_head(k[:, :, :1]), by_head(v[:, :, :1])
    logits = torch.bmm(qb, kg.transpose(1, 2))  # [BH*nb, G, K*G]
    cls_logits = torch.bmm(by_head(qb), k_cls.mT).view(-1, block_size, 1)
    if mask is not None:
        shape = (batch, heads, num_blocks, block_size, -1)
        logits.view(shape).add_(mask[..., 1:])
        cls_logits.view(shape).add_(mask[..., :1])
    top = torch.maximum(logits.amax(-1, keepdim=True), cls_logits)
    probs = logits.sub_(top).exp_()
    cls_probs = cls_logits.sub_(top).exp_()
    total = probs.sum(-1, keepdim=True).add_(cls_probs)
    probs.div_(total)
    cls_probs.div_(total)
    rows = torch.bmm(probs, vg)
    by_head(rows).baddbmm_(by_head(cls_probs), v_cls)
    return rows, probs, cls_probs


def _blocks_backward_torch(
    grad: Tensor, saved: _Saved, with_dlogits: bool, block_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients of the block part: dq rows [BH, nb*G, d] (unscaled), dk, dv [BH, N, d], and
    dL/dlogits [B, H, nb, G, 1 + K*G] ([CLS] key first) if asked for. The backward recomputes
    the gathers and scatters whole key blocks back with one `index_add_`."""
    scaled, k, v, key_blocks, (rows, probs, cls_probs) = saved
    batch, heads, length, dim = k.shape
    num_blocks, flat = key_blocks.shape[0], key_blocks.flatten()
    by_head = functools.partial(_by_head, batch=batch, heads=heads)
    qb = _blocks(scaled, num_blocks, block_size).reshape(-1, block_size, dim)
    k_cls, v_cls = by_head(k[:, :, :1]), by_head(v[:, :, :1])
    grad = _blocks(grad, num_blocks, block_size).reshape(-1, block_size, dim)
    kg, vg = (_gather(x, flat, num_blocks, block_size) for x in (k, v))
    # dL/dlogits = P * (dL/dP - rowsum(P * dL/dP)), for the block keys and the [CLS] key.
    row_dot = torch.linalg.vecdot(grad, rows).unsqueeze(-1)
    dlogits = torch.bmm(grad, vg.transpose(1, 2)).sub_(row_dot).mul_(probs)
    dcls = torch.bmm(by_head(grad), v_cls.mT).view_as(row_dot).sub_(row_dot).mul_(cls_probs)
    dq_rows = torch.bmm(dlogits, kg)
    by_head(dq_rows).baddbmm_(by_head(dcls), k_cls)
    dk = _scatter_blocks(torch.bmm(dlogits.transpose(1, 2), qb), flat, length, num_blocks)
    dk[:, :1] = torch.bmm(by_head(dcls).mT, by_head(qb))
    dv = _scatter_blocks(torch.bmm(probs.transpose(1, 2), grad), flat, length, num_blocks)
    dv[:, :1] = torch.bmm(by_head(cls_probs).mT, by_head(grad))
    both = None
    if with_dlogits:
        shape = (batch, heads, num_blocks, block_size, -1)
        both = torch.cat([dcls.view(shape), dlogits.view(shape)], dim=-1)
    return by_head(dq_rows), dk, dv, both


def _blocks_forward_cpp(
    scaled: Tensor, k: Tensor, v: Tensor, key_blocks: Tensor, mask: Tensor | None, block_size: int
) -> Blocks:
    """`_blocks_forward_torch` in one C++ pass per query block (`svitt.models.cpu_kernel`)."""
    batch, heads = scaled.shape[:2]
    if mask is not None:  # the kernel reads it through strides: broadcast dims cost nothing
        mask = mask.expand(batch, heads, key_blocks.shape[0], block_size, mask.shape[-1])
    rows, probs, cls_probs = torch.ops.svitt_block_sparse.forward(
        scaled, k, v, key_blocks, mask, block_size
    )
    return tuple(x.view(-1, block_size, x.shape[-1]) for x in (rows, probs, cls_probs))


def _blocks_backward_cpp(
    grad: Tensor, saved: _Saved, with_dlogits: bool, block_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """`_blocks_backward_torch` in one C++ pass per query block."""
    scaled, k, v, key_blocks, blocks = saved
    batch, heads = k.shape[:2]
    num_blocks = key_blocks.shape[0]
    shape = (batch, heads, num_blocks, block_size, -1)
    grad = _blocks(grad, num_blocks, block_size).contiguous().view(shape)
    rows, probs, cls_probs = (x.view(shape) for x in blocks)
    dq_rows, dk, dv, dlogits = torch.ops.svitt_block_sparse.backward(
        grad, scaled, k, v, key_blocks, probs, cls_probs, rows, with_dlogits, block_size
    )
    by_head = functools.partial(_by_head, batch=batch, heads=heads)
    return by_head(dq_rows), by_head(dk), by_head(dv), dlogits if with_dlogits else None


class _BlockSparse(torch.autograd.Function):
    """Block-sparse attention, forward and backward by hand; [CLS]'s full row included.

    Why not SDPA on gathered keys: on CPU, most of that path's time went to token-level
    gathers, their scatter-add backward and fresh large allocations, not to the matmuls. The
    block part runs in C++ on the CPU when the extension builds (`svitt.models.cpu_kernel`),
    else in PyTorch ops; the [CLS] row is computed here, and its gradients are added in place
    rather than summed by autograd.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_blocks: Tensor,
        mask: Tensor | None,
        cls_mask: Tensor | None,
        block_size: int,
    ) -> tuple[Tensor, Tensor]:
        batch, heads, length, dim = q.shape
        by_head = functools.partial(_by_head, batch=batch, heads=heads)
        # Contiguous once here (q, k, v come from a rearrange), not in every helper.
        scaled, k, v = (q * dim**-0.5).contiguous(), k.contiguous(), v.contiguous()
        native = q.device.type == "cpu" and q.dtype in _CPP_DTYPES and cpu_kernel.enabled()
        forward = _blocks_forward_cpp if native else _blocks_forward_torch
        rows, probs, cls_probs = forward(scaled, k, v, key_blocks, mask, block_size)
        # The [CLS] query attends to every key.
        row0 = torch.bmm(by_head(scaled[:, :, :1]), by_head(k).mT)  # [BH, 1, N]
        if cls_mask is not None:
            row0.view(batch, heads, 1, length).add_(cls_mask)
        row0 = row0.softmax(dim=-1)
        out = torch.cat([torch.bmm(row0, by_head(v)), by_head(rows)[:, : length - 1]], dim=1)
        ctx.save_for_backward(scaled, k, v, key_blocks, probs, cls_probs, rows, row0)
        ctx.mask_shapes = tuple(None if m is None else m.shape for m in (mask, cls_mask))
        ctx.block_size, ctx.native = block_size, native
        return out.view(q.shape), row0.view(batch, heads, length)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor, grad_cls_attn: Tensor
    ) -> tuple[Tensor | None, ...]:
        scaled, k, v, key_blocks, probs, cls_probs, rows, row0 = ctx.saved_tensors
        batch, heads, length, dim = k.shape
        # A gradient from `.sum()` is expanded (stride 0); CPU bmm is slow on such views.
        grad, grad_cls_attn = grad.contiguous(), grad_cls_attn.contiguous()
        by_head = functools.partial(_by_head, batch=batch, heads=heads)
        mask_shape, cls_mask_shape = ctx.mask_shapes
        backward = _blocks_backward_cpp if ctx.native else _blocks_backward_torch
        saved = _Saved(scaled, k, v, key_blocks, (rows, probs, cls_probs))
        dq_rows, dk, dv, dlogits = backward(grad, saved, ctx.needs_input_grad[4], ctx.block_size)
        # The [CLS] row, through its softmax.
        grad0 = by_head(grad[:, :, :1])
        drow0 = torch.bmm(grad0, by_head(v).mT).add_(grad_cls_attn.view_as(row0))
        drow0.sub_(torch.linalg.vecdot(drow0, row0).unsqueeze(-1)).mul_(row0)
        dv.baddbmm_(row0.mT, grad0)
        dk.baddbmm_(drow0.mT, by_head(scaled[:, :, :1]))
        dq = torch.cat([torch.bmm(drow0, by_head(k)), dq_rows[:, : length - 1]], dim=1)
        dmask = None if dlogits is None else dlogits.sum_to_size(mask_shape)
        dcls_mask = None
        if ctx.needs_input_grad[5]:
            dcls_mask = drow0.view(batch, heads, 1, length).sum_to_size(cls_mask_shape)
        shape = (batch, heads, length, dim)
        dq = dq.mul_(dim**-0.5).view(shape)
        return dq, dk.view(shape), dv.view(shape), None, dmask, dcls_mask, None


def _by_head(x: Tensor, batch: int, heads: int) -> Tensor:
    """[B, H, m, d] or [B*H*nb, G, d] -> [B*H, m', d] (a view where possible)."""
    return x.reshape(batch * heads, -1, x.shape[-1])


def _blocks(x: Tensor, num_blocks: int, block_size: int) -> Tensor:
    """Non-[CLS] rows of [B, H, 1+n, d] as [B*H, nb, G*d], zero-padded to whole blocks."""
    batch, heads, length, dim = x.shape
    rows = x[:, :, 1:]
    pad = num_blocks * block_size - (length - 1)
    if pad:
        rows = F.pad(rows, (0, 0, 0, pad))
    return rows.reshape(batch * heads, num_blocks, block_size * dim)


def _gather(x: Tensor, flat: Tensor, num_blocks: int, block_size: int) -> Tensor:
    """The key blocks of every query block: [B*H*nb, K*G, d]."""
    picked = _blocks(x, num_blocks, block_size).index_select(1, flat)
    return picked.view(-1, flat.numel() // num_blocks * block_size, x.shape[-1])


def _scatter_blocks(grad: Tensor, flat: Tensor, length: int, num_blocks: int) -> Tensor:
    """Sum gathered-block gradients [B*H*nb, K*G, d] back onto [B*H, length, d]; row 0 zero."""
    dim = grad.shape[-1]
    heads_batch = grad.shape[0] // num_blocks
    block_size = grad.shape[1] // (flat.numel() // num_blocks)
    total = grad.new_zeros(heads_batch, 1 + num_blocks * block_size, dim)
    blocks = total[:, 1:].view(heads_batch, num_blocks, block_size * dim)
    blocks.index_add_(1, flat, grad.view(heads_batch, flat.numel(), block_size * dim))
    return total[:, :length]


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
    n = q.shape[2] - 1
    num_blocks = key_blocks.shape[0]
    if num_blocks != -(-n // block_size):
        raise ValueError(
            f"sparse_attention: key_blocks has {num_blocks} rows, but {n} tokens make "
            f"{-(-n // block_size)} blocks of {block_size}"
        )
    device = q.device
    if device.type == "cuda" and key_blocks.device.type == "cpu":
        # A copy from pageable memory would first wait for the GPU to finish its queue.
        key_blocks = key_blocks.pin_memory().to(device, non_blocking=True)
    else:
        key_blocks = key_blocks.to(device)
    offsets = torch.arange(block_size, device=device)
    key_index = rearrange(key_blocks[:, :, None] * block_size + offsets, "nb k g -> nb (k g)")
    key_index = torch.cat([key_index.new_zeros(num_blocks, 1), key_index + 1], dim=1)
    # Positions past the last token (the padded tail of the last block) are clamped onto a real
    # token for the bias lookup; as keys they are masked, as queries dropped.
    key_index, key_pad = key_index.clamp(max=n), key_index > n
    mask = None
    if bias_fn is not None:
        query_index = 1 + torch.arange(num_blocks * block_size, device=device)
        mask = bias_fn(query_index.clamp(max=n).view(num_blocks, -1), key_index).to(q.dtype)
    if num_blocks * block_size > n:  # from sizes, not the tensor: no device sync
        padding = torch.zeros(key_pad.shape, device=device, dtype=q.dtype)
        padding = padding.masked_fill(key_pad, float("-inf"))[:, None, :]  # [nb, 1, 1+KG]
        mask = padding if mask is None else mask + padding
    cls_mask = None
    if bias_fn is not None:
        keys = torch.arange(n + 1, device=device)
        cls_mask = bias_fn(keys[:1], keys).to(q.dtype)
    # Autocast would run the softmaxes in float32 and the matmuls in bf16, mixing dtypes in
    # the hand-written backward: the kernel runs in the dtype of q, k, v instead.
    with torch.autocast(device.type, enabled=False):
        return _BlockSparse.apply(q, k, v, key_blocks, mask, cls_mask, block_size)
