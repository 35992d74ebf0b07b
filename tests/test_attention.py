import contextlib
import logging

import pytest
import torch

from svitt.config import SparsityConfig, VisionConfig
from svitt.models import cpu_kernel
from svitt.models.attention import (
    block_pattern,
    dense_attention,
    pattern_edges,
    sparse_attention,
)
from svitt.models.vision import Attention


@pytest.fixture(params=["cpp", "ops"])
def backend(request):
    """Run the test with the C++ block kernel, then with the PyTorch-op kernel."""
    if request.param == "cpp":
        assert cpu_kernel.available(), "the C++ kernel did not build (see the log warning)"
        context = contextlib.nullcontext()
    else:
        context = cpu_kernel.disabled()
    with context:
        yield request.param


def qkv(batch=2, heads=3, length=1 + 23, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, heads, length, dim, generator=g, dtype=torch.float64) for _ in range(3)
    ]


def table_bias(batch, heads, length, seed=1):
    """A BiasFn backed by a random [B, H, N, N] matrix, so any gather error shows."""
    full = torch.randn(
        batch,
        heads,
        length,
        length,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(seed),
    )

    def bias(query_index, key_index):
        return full[:, :, query_index[..., :, None], key_index[..., None, :]]

    return full, bias


def block_mask(key_blocks, n, block_size):
    """The boolean [1+n, 1+n] mask equivalent to the sparse pattern."""
    mask = torch.zeros(1 + n, 1 + n, dtype=torch.bool)
    mask[0, :] = True
    mask[:, 0] = True
    for i in range(n):
        for block in key_blocks[i // block_size].tolist():
            mask[1 + i, 1 + block * block_size : 1 + min(n, (block + 1) * block_size)] = True
    return mask


def reference(q, k, v, bias, mask=None):
    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + bias
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = logits.softmax(-1)
    return probs @ v, probs[:, :, 0]


@pytest.mark.parametrize(("n", "local", "random"), [(23, 1, 2), (23, 3, 1), (20, 1, 1)])
def test_sparse_equals_dense_with_equivalent_mask(n, local, random, backend):
    block_size = 4
    q, k, v = qkv(length=1 + n)
    full, bias = table_bias(2, 3, 1 + n)
    key_blocks = block_pattern(-(-n // block_size), local, random, torch.Generator().manual_seed(3))
    out, cls_attn = sparse_attention(q, k, v, key_blocks, block_size, bias)
    mask = block_mask(key_blocks, n, block_size)
    ref_out, ref_cls = reference(q, k, v, full, mask)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(cls_attn, ref_cls)
    assert pattern_edges(key_blocks, n, block_size) == int(mask[1:].sum())


@pytest.mark.parametrize(("batch", "n"), [(2, 23), (1, 24)])
def test_sparse_gradients_equal_masked_dense(batch, n, backend):
    """The hand-written backward, bias-table gradient included, padded tail or not."""
    block_size = 4
    q, k, v = (x.requires_grad_() for x in qkv(batch=batch, length=1 + n))
    full, bias = table_bias(1, 3, 1 + n)
    full.requires_grad_()
    key_blocks = block_pattern(-(-n // block_size), 1, 2, torch.Generator().manual_seed(4))
    out, cls_attn = sparse_attention(q, k, v, key_blocks, block_size, bias)
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(5))
    loss = (out * weights).sum() + cls_attn.square().sum()
    grads = torch.autograd.grad(loss, (q, k, v, full))
    ref_out, ref_cls = reference(q, k, v, full, block_mask(key_blocks, n, block_size))
    ref_loss = (ref_out * weights).sum() + ref_cls.square().sum()
    for got, want in zip(grads, torch.autograd.grad(ref_loss, (q, k, v, full)), strict=True):
        torch.testing.assert_close(got, want)


def test_sparse_without_bias_masks_the_padding(backend):
    q, k, v = qkv(length=1 + 23)
    key_blocks = block_pattern(6, 1, 2, torch.Generator().manual_seed(0))
    out, _ = sparse_attention(q, k, v, key_blocks, 4)
    ref, _ = reference(q, k, v, torch.zeros(()), block_mask(key_blocks, 23, 4))
    torch.testing.assert_close(out, ref)


def test_all_blocks_covered_equals_plain_dense():
    q, k, v = qkv(length=1 + 23)
    full, bias = table_bias(2, 3, 24)
    key_blocks = block_pattern(6, 3, 3)  # covers all 6 blocks
    out, cls_attn = sparse_attention(q, k, v, key_blocks, 4, bias)
    dense, dense_cls = dense_attention(q, k, v, bias)
    torch.testing.assert_close(out, dense)
    torch.testing.assert_close(cls_attn, dense_cls)
    torch.testing.assert_close(dense, reference(q, k, v, full)[0])


def test_block_pattern_local_window_and_distinct_random_blocks():
    pattern = block_pattern(10, 3, 4, torch.Generator().manual_seed(0))
    assert pattern.shape == (10, 7)
    for i, row in enumerate(pattern.tolist()):
        start = min(max(i - 1, 0), 10 - 3)
        assert row[:3] == [start, start + 1, start + 2]  # centred, shifted inward at the ends
        assert len(set(row)) == 7  # random blocks are distinct and not local


def test_training_pattern_follows_global_rng():
    torch.manual_seed(5)
    first = block_pattern(12, 1, 3)
    torch.manual_seed(5)
    assert torch.equal(block_pattern(12, 1, 3), first)
    assert not torch.equal(block_pattern(12, 1, 3), first)  # redrawn on the next step


def make_attention():
    cfg = VisionConfig(image_size=16, patch_size=4, num_frames=2, dim=12, heads=3)
    sparsity = SparsityConfig(attention="sparse", block_size=4, local_blocks=1, random_blocks=2)
    return Attention(cfg, sparsity, layer=0).double()


def test_eval_attention_is_deterministic_and_training_is_not():
    attn = make_attention()
    torch.nn.init.normal_(attn.relative_position_bias_table)
    x = torch.randn(2, 33, 12, dtype=torch.float64)
    positions = torch.arange(32)[None]
    attn.eval()
    first = attn(x, positions)[0]
    for _ in range(3):
        torch.testing.assert_close(attn(x, positions)[0], first, rtol=0, atol=0)
    attn.train()
    outs = [attn(x, positions)[0] for _ in range(3)]
    assert any(not torch.allclose(o, first) for o in outs)


def test_sparse_backward_accepts_an_expanded_gradient(backend):
    q, k, v = (x.requires_grad_() for x in qkv(length=1 + 23))
    key_blocks = block_pattern(6, 1, 2, torch.Generator().manual_seed(0))
    out, cls_attn = sparse_attention(q, k, v, key_blocks, 4)
    (out.sum() + cls_attn.sum()).backward()  # both output gradients have stride 0
    ref_out, ref_cls = reference(q, k, v, torch.zeros(()), block_mask(key_blocks, 23, 4))
    want = torch.autograd.grad(ref_out.sum() + ref_cls.sum(), (q, k, v))
    for got, ref in zip((q.grad, k.grad, v.grad), want, strict=True):
        torch.testing.assert_close(got, ref)


def test_cpp_and_op_kernels_agree_in_float32():
    n, block_size = 45, 8
    q, k, v = (x.float().requires_grad_() for x in qkv(batch=2, heads=3, length=1 + n))
    full = table_bias(2, 3, 1 + n)[0].float().requires_grad_()

    def bias(query_index, key_index):
        return full[:, :, query_index[..., :, None], key_index[..., None, :]]

    key_blocks = block_pattern(6, 1, 2, torch.Generator().manual_seed(2))
    results = []
    for context in (contextlib.nullcontext(), cpu_kernel.disabled()):
        with context:
            out, cls_attn = sparse_attention(q, k, v, key_blocks, block_size, bias)
        loss = (out * torch.linspace(-1, 1, out.shape[-1])).sum() + cls_attn.square().sum()
        results.append([out, cls_attn, *torch.autograd.grad(loss, (q, k, v, full))])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cpp_kernel_rejects_non_contiguous_inputs():
    assert cpu_kernel.available()
    q, k, v = qkv(length=1 + 24)
    key_blocks = block_pattern(6, 1, 2, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.svitt_block_sparse.forward(q.transpose(1, 2), k, v, key_blocks, None, 4)


def test_cpu_kernel_can_be_switched_off_and_falls_back_when_it_cannot_build(monkeypatch, caplog):
    import torch.utils.cpp_extension

    cpu_kernel.available.cache_clear()
    try:
        monkeypatch.setenv("SVITT_CPU_KERNEL", "0")
        assert not cpu_kernel.available() and not cpu_kernel.enabled()
        cpu_kernel.available.cache_clear()
        monkeypatch.setenv("SVITT_CPU_KERNEL", "1")

        def broken(**kwargs):
            raise RuntimeError("Error building extension 'svitt_block_sparse'")

        monkeypatch.setattr(torch.utils.cpp_extension, "load", broken)
        with caplog.at_level(logging.WARNING, logger="svitt.models.cpu_kernel"):
            assert not cpu_kernel.available()
        assert "using the PyTorch-op kernel" in caplog.text
        q, k, v = qkv(length=1 + 23)  # the op kernel serves meanwhile
        key_blocks = block_pattern(6, 1, 2, torch.Generator().manual_seed(0))
        out, _ = sparse_attention(q, k, v, key_blocks, 4)
        ref, _ = reference(q, k, v, torch.zeros(()), block_mask(key_blocks, 23, 4))
        torch.testing.assert_close(out, ref)
    finally:
        monkeypatch.undo()
        cpu_kernel.available.cache_clear()
    assert cpu_kernel.available()
