"""Benchmarks: the baselines compute the right function, and the scripts run (no timing)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks import attention as attention_bench
from benchmarks import model as model_bench
from benchmarks.common import count_flops, peak_memory
from benchmarks.flex_attention import (
    aligned_block_mask,
    aligned_positions,
    flex_aligned_attention,
    flex_sparse_attention,
)
from benchmarks.naive_attention import (
    gather_sdpa_attention,
    loop_sparse_attention,
    masked_dense_attention,
    sparse_mask,
)
from svitt.models import cpu_kernel
from svitt.models.attention import block_pattern, sparse_attention


@pytest.mark.parametrize("num_tokens", [32, 29])  # exact blocks, and a padded last block
def test_every_kernel_matches_masked_dense(num_tokens: int) -> None:
    torch.manual_seed(0)
    block_size = 4
    num_blocks = -(-num_tokens // block_size)
    key_blocks = block_pattern(num_blocks, 1, 3, torch.Generator().manual_seed(1))
    shape = (2, 3, 1 + num_tokens, 8)
    q, k, v = (torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in "qkv")
    expected = masked_dense_attention(q, k, v, key_blocks, block_size)
    grad = torch.randn(shape, dtype=torch.float64)
    want = torch.autograd.grad(expected, (q, k, v), grad)
    for kernel in (loop_sparse_attention, gather_sdpa_attention, sparse_attention):
        out, cls_attn = kernel(q, k, v, key_blocks, block_size)
        torch.testing.assert_close(out, expected)
        assert torch.allclose(cls_attn.sum(-1), torch.ones((), dtype=torch.float64))
        for got, ref in zip(torch.autograd.grad(out, (q, k, v), grad), want, strict=True):
            torch.testing.assert_close(got, ref)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("num_tokens", [32, 29])
def test_flex_variants_compute_the_pattern(num_tokens: int) -> None:
    # Forward only: FlexAttention has no CPU backward (tests/test_cuda.py checks the rest).
    torch.manual_seed(0)
    num_blocks = -(-num_tokens // 4)
    key_blocks = block_pattern(num_blocks, 1, 3, torch.Generator().manual_seed(1))
    q, k, v = (torch.randn(2, 3, 1 + num_tokens, 8, dtype=torch.float64) for _ in "qkv")
    expected = masked_dense_attention(q, k, v, key_blocks, 4)
    for out, cls_attn in (
        flex_sparse_attention(q, k, v, key_blocks, 4),
        flex_aligned_attention(q, k, v, key_blocks, 4, tile=16),
    ):
        torch.testing.assert_close(out, expected)
        assert torch.allclose(cls_attn.sum(-1), torch.ones((), dtype=torch.float64))


def test_aligned_layout_gives_each_block_its_own_tile() -> None:
    positions = aligned_positions(10, 4, 8, torch.device("cpu"))
    assert positions.tolist() == [0, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25]
    key_blocks = block_pattern(14, 1, 3, torch.Generator().manual_seed(0))
    mask, _ = aligned_block_mask(key_blocks, 4, 14 * 4, 8, torch.device("cpu"))
    # [CLS]'s query tile sees all 15 tiles; every block tile its 4 key tiles plus [CLS]'s.
    assert mask.seq_lengths == (8 * 15, 8 * 15)
    assert round((100 - mask.sparsity()) / 100 * 15 * 15) == 15 + 14 * 5
    with pytest.raises(ValueError, match="does not fit"):
        aligned_positions(10, 9, 8, torch.device("cpu"))


def test_flops_of_the_cpp_kernel_are_counted_like_the_op_kernel() -> None:
    assert cpu_kernel.available()
    key_blocks = block_pattern(8, 1, 3, torch.Generator().manual_seed(0))
    q, k, v = (torch.randn(1, 2, 1 + 64, 16, requires_grad=True) for _ in "qkv")

    def step() -> None:
        out, _ = sparse_attention(q, k, v, key_blocks, 8)
        out.sum().backward()

    cpp = count_flops(step)
    with cpu_kernel.disabled():
        ops = count_flops(step)
    # The same six block matmuls; the op kernel also counts a few [CLS]-key products.
    assert 0.97 * ops < cpp <= ops


def test_sparse_mask_counts_the_pattern() -> None:
    key_blocks = block_pattern(6, 1, 2, torch.Generator().manual_seed(0))
    mask = sparse_mask(24, key_blocks, 4)
    assert mask[0].all() and mask[:, 0].all()  # [CLS] row and column
    assert int(mask[1:, 1:].sum()) == 24 * 3 * 4


def test_peak_memory_counts_live_tensors() -> None:
    def allocate() -> None:
        a = torch.empty(1000, 1000)  # 4 MB
        b = torch.empty(2000, 1000)  # 8 MB, while a is alive
        del a, b

    peak = peak_memory(allocate, torch.device("cpu"))
    assert 12_000_000 <= peak < 12_100_000


def test_attention_benchmark_quick(tmp_path: Path) -> None:
    rows = attention_bench.main(["--quick", "--results", str(tmp_path), "--device", "cpu"])
    table = pd.read_csv(tmp_path / "synthetic" / "tables" / "compute_attention.csv")
    assert len(table) == len(rows) == 10
    assert set(table["variant"]) == {"dense", "sparse", "sparse_ops", "gather_sdpa", "loop"}
    assert (tmp_path / "synthetic" / "tables" / "compute_attention.md").is_file()


@pytest.mark.slow
def test_model_benchmark_quick(tmp_path: Path) -> None:
    model_bench.main(["--quick", "--results", str(tmp_path), "--device", "cpu"])
    table = pd.read_csv(tmp_path / "synthetic" / "tables" / "compute.csv")
    vision = table[table["part"] == "vision"]
    assert set(vision["variant"]) == {"dense", "edge", "node", "hybrid"}
    assert set(table[table["part"] == "multimodal"]["variant"]) == {
        "no_cross_pruning",
        "cross_pruning",
    }
    # Pruning removes FLOPs and edges whatever the timing noise.
    by = vision[vision["frames"] == 4].set_index("variant")
    assert by.loc["hybrid", "gflops"] < by.loc["dense", "gflops"]
    assert by.loc["hybrid", "edges_m"] < by.loc["edge", "edges_m"] < by.loc["dense", "edges_m"]
    assert (tmp_path / "synthetic" / "figures" / "compute.png").is_file()


def test_startup_benchmark_names_what_its_results_folder_lacks(tmp_path: Path) -> None:
    from benchmarks import startup

    with pytest.raises(SystemExit, match=r"missing .*data.*snakemake --cores 2 tables"):
        startup.check_inputs(tmp_path)
    pretrain = startup.JOBS[0]
    command = startup.job_command(pretrain, tmp_path / "runs", tmp_path / "out")
    assert command[-2:] == ["--max-steps-this-run", "0"]  # training stops before its first step
    assert command[command.index("--init-from") + 1] == str(tmp_path / "runs" / pretrain.init)
    assert startup.job_environment(tmp_path)["PYTHONPATH"].split(":")[0] == str(tmp_path)
