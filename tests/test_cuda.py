"""The kernels and the model on a CUDA GPU; skipped where there is none (CI has none).

Run on a GPU machine by `benchmarks/gpu_check.sh`, before the CUDA benchmarks. References are
computed on the CPU, in float64 where the kernel is checked alone.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmarks.flex_attention import flex_aligned_attention, flex_sparse_attention
from benchmarks.naive_attention import masked_dense_attention
from svitt.config import ModelConfig, SparsityConfig, TextConfig, VisionConfig
from svitt.models.attention import block_pattern, sparse_attention
from svitt.models.svitt import SViTT
from svitt.models.vision import VisionTransformer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    """TF32 off, so float32 results on the GPU can be held to float32 tolerances."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def attention_case(num_tokens: int, block_size: int, heads: int = 3, dim: int = 16):
    """q, k, v (float64, CPU, requiring grad), an output gradient and a pattern."""
    generator = torch.Generator().manual_seed(num_tokens)
    num_blocks = -(-num_tokens // block_size)
    key_blocks = block_pattern(num_blocks, 1, 3, generator)
    shape = (2, heads, 1 + num_tokens, dim)
    q, k, v, grad = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(4))
    return [x.requires_grad_() for x in (q, k, v)], grad, key_blocks


def run_kernel(kernel, qkv, grad, key_blocks, block_size, device, dtype):
    """Output and (dq, dk, dv) of `kernel` on copies of the inputs, as float64 on the CPU."""
    inputs = [x.detach().to(device, dtype).requires_grad_() for x in qkv]
    out, _ = kernel(*inputs, key_blocks, block_size)
    grads = torch.autograd.grad(out, inputs, grad.to(device, dtype))
    return out.detach().double().cpu(), [g.double().cpu() for g in grads]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def reference(qkv, grad, key_blocks, block_size):
    out = masked_dense_attention(*qkv, key_blocks, block_size)
    return out.detach(), list(torch.autograd.grad(out, qkv, grad))


@pytest.mark.parametrize("num_tokens", [64, 61])  # whole blocks, and a padded last block
def test_sparse_attention_on_cuda_matches_masked_dense(num_tokens: int) -> None:
    qkv, grad, key_blocks = attention_case(num_tokens, block_size=8)
    want, want_grads = reference(qkv, grad, key_blocks, 8)
    got, got_grads = run_kernel(sparse_attention, qkv, grad, key_blocks, 8, CUDA, torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-5)


def test_sparse_attention_in_bf16_stays_close() -> None:
    qkv, grad, key_blocks = attention_case(61, block_size=8)
    want, want_grads = reference(qkv, grad, key_blocks, 8)
    got, got_grads = run_kernel(sparse_attention, qkv, grad, key_blocks, 8, CUDA, torch.bfloat16)
    assert relative_error(got, want) < 2e-2
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        assert relative_error(got_grad, want_grad) < 3e-2


@pytest.mark.parametrize("kernel", [flex_sparse_attention, flex_aligned_attention])
def test_compiled_flex_variants_match_masked_dense(kernel) -> None:
    # One shape (a padded last block): each new shape is another compilation.
    qkv, grad, key_blocks = attention_case(445, block_size=56, heads=2)
    want, want_grads = reference(qkv, grad, key_blocks, 56)
    got, got_grads = run_kernel(kernel, qkv, grad, key_blocks, 56, CUDA, torch.float32)
    # Triton may run float32 dots on the tensor cores (TF32): about 1e-3 relative at worst.
    assert relative_error(got, want) < 5e-3
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        assert relative_error(got_grad, want_grad) < 5e-3


def tiny_vision() -> tuple[VisionConfig, SparsityConfig]:
    vision = VisionConfig(image_size=16, patch_size=4, num_frames=4, dim=32, depth=3, heads=4)
    sparsity = SparsityConfig(
        attention="sparse", block_size=8, local_blocks=1, random_blocks=2,
        visual_keep_rate=0.75, visual_drop_layers=(0, 1),
    )  # fmt: skip
    return vision, sparsity


def test_sparse_pruned_vision_encoder_on_cuda_matches_cpu() -> None:
    vision, sparsity = tiny_vision()
    torch.manual_seed(0)
    model = VisionTransformer(vision, sparsity).eval()
    for block in model.blocks:  # a non-trivial relative bias, so index errors show
        torch.nn.init.normal_(block.attn.relative_position_bias_table)
    video = torch.randn(2, 4, 3, 16, 16)
    outputs, grads = [], []
    for device in ("cpu", CUDA):
        model = model.to(device)
        out = model.forward_features(video.to(device))
        out.tokens.square().mean().backward()
        outputs.append(out)
        grads.append({name: p.grad.cpu() for name, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    cpu, gpu = outputs
    for kept_cpu, kept_gpu in zip(cpu.kept, gpu.kept, strict=True):
        assert torch.equal(kept_cpu, kept_gpu.cpu())  # the same tokens pruned
    torch.testing.assert_close(gpu.tokens.cpu(), cpu.tokens, rtol=1e-4, atol=1e-4)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_svitt_trains_on_cuda_under_bf16_autocast() -> None:
    """The engine's CUDA setting: float32 weights, bf16 autocast, all three losses."""
    vision, sparsity = tiny_vision()
    cfg = ModelConfig(
        vision=vision,
        text=TextConfig(
            vocab_size=40, dim=24, depth=3, cross_depth=2, heads=4, mlp_dim=48, max_positions=16,
            pad_token_id=0, cls_token_id=1, sep_token_id=2, mask_token_id=3,
        ),
        sparsity=dataclasses.replace(sparsity, cross_keep_rate=0.5, cross_drop_layers=(0,)),
        embed_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = SViTT(cfg).to(CUDA)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 40, (4, 8), generator=generator)
    ids[:, 0], ids[:, -1] = 1, 2
    batch = {
        "video": torch.randn(4, 4, 3, 16, 16, generator=generator).to(CUDA),
        "text_ids": ids.to(CUDA),
        "text_mask": torch.ones(4, 8, dtype=torch.long, device=CUDA),
    }

    def losses() -> dict[str, float]:
        model.eval()
        torch.manual_seed(123)  # the same MLM masks and VTM negatives every time
        with torch.no_grad():  # float32: bf16 would round small changes of a loss away
            values = {name: float(value) for name, value in model(batch).items()}
        model.train()
        return values

    before = losses()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(15):
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch)["loss"]
        loss.backward()
        for name, param in model.named_parameters():
            assert param.grad is None or param.grad.isfinite().all(), name
        optimizer.step()
    after = losses()
    # VTC on 4 random pairs stays near chance (log 4) in 15 steps, so it is not held to fall.
    for name in ("vtm", "mlm", "loss"):
        assert after[name] < before[name], (name, before[name], after[name])
