import pytest

from svitt.config import ModelConfig, SparsityConfig, VisionConfig
from svitt.sparsity import count_edges, keep_count, keys_per_token, tokens_per_layer


def paper_model(frames: int, keep_rate: float, arch: str = "svitt") -> ModelConfig:
    sparsity = SparsityConfig(attention="sparse", visual_keep_rate=keep_rate, cross_keep_rate=0.1)
    return ModelConfig(arch=arch, vision=VisionConfig(num_frames=frames), sparsity=sparsity)


@pytest.mark.parametrize(
    ("frames", "keep_rate", "edges_m", "sparsity"),
    [(4, 0.7, 1.48, 0.80), (8, 0.6, 2.60, 0.91), (16, 0.5, 4.61, 0.96)],
)
def test_table_a1(frames, keep_rate, edges_m, sparsity):
    count = count_edges(paper_model(frames, keep_rate), text_len=32)
    assert round(count.edges / 1e6, 2) == edges_m
    assert round(count.sparsity, 2) == sparsity


def test_token_counts_follow_drop_layers():
    count = count_edges(paper_model(4, 0.7), text_len=32)
    assert count.visual_tokens == [784] * 4 + [549] * 3 + [385] * 3 + [270] * 2
    # cross-modal drop after multimodal layer 1: only the third layer sees the pruned set
    assert count.multimodal_tokens == [270, 270, 27]


def test_keep_count_is_exact_ceil():
    assert keep_count(270, 0.1) == 27  # 0.1 * 270 is 27.000000000000004 in floats
    assert keep_count(784, 0.7) == 549
    assert keep_count(5, 0.01) == 1


def test_dense_model_has_zero_sparsity():
    count = count_edges(ModelConfig(vision=VisionConfig(num_frames=4)), text_len=32)
    assert count.sparsity == 0.0
    assert count.visual_edges == 12 * 784 * 785


def test_keys_per_token_saturates_when_blocks_cover_all():
    sp = SparsityConfig(attention="sparse", block_size=4, local_blocks=1, random_blocks=2)
    assert keys_per_token(32, sp) == 3 * 4 + 1
    assert keys_per_token(12, sp) == 13  # 3 blocks: all of them
    assert keys_per_token(10, sp) == 11  # padded last block is not counted


def test_tokens_per_layer_after_last_layer_has_no_effect():
    assert tokens_per_layer(10, 3, 0.5, (2,)) == [10, 10, 10]


def test_frozen_has_no_multimodal_edges_and_singularity_raises():
    frozen = count_edges(paper_model(4, 0.7, arch="frozen"), 32)
    assert frozen.multimodal_edges == 0 and frozen.multimodal_tokens == []
    with pytest.raises(ValueError, match="singularity"):
        count_edges(ModelConfig(arch="singularity"), 32)
