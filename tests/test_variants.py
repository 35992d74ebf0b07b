"""Model variants (SViTT, Frozen, Singularity, Singularity-temporal), the factory, its presets
and weight loading."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import VOCAB, tiny_text, tiny_vision
from transformers import BertConfig, BertModel

from svitt.config import ConfigError, ModelConfig, SparsityConfig
from svitt.models.factory import (
    create_model,
    paper_model_config,
    tiny_model_config,
)
from svitt.models.frozen import Frozen
from svitt.models.singularity import TEMPORAL_DEPTH, Singularity, SingularityTemporal
from svitt.models.svitt import SViTT
from svitt.models.vision import VisionTransformer
from svitt.sparsity import count_edges

pytestmark = pytest.mark.usefixtures("single_thread")


def small_config(arch: str = "svitt", **sparsity) -> ModelConfig:
    vision = tiny_vision()
    if arch == "frozen":
        vision = dataclasses.replace(vision, abs_pos_emb=True, rel_pos_bias=False)
    return ModelConfig(
        arch=arch,
        vision=vision,
        text=tiny_text(),
        sparsity=SparsityConfig(visual_drop_layers=(0,), cross_drop_layers=(0,), **sparsity),
        embed_dim=16,
    )  # fmt: skip


def make_batch(batch: int = 3, frames: int = 4, size: int = 16) -> dict[str, torch.Tensor]:
    ids = torch.randint(4, VOCAB, (batch, 6))
    ids[:, 0], ids[:, -1] = 1, 2
    return {
        "video": torch.randn(batch, frames, 3, size, size),
        "text_ids": ids,
        "text_mask": torch.ones(batch, 6, dtype=torch.long),
    }


VARIANTS = {
    "svitt-dense": small_config("svitt"),
    "svitt-hybrid": small_config(
        "svitt", attention="sparse", block_size=2, visual_keep_rate=0.7, cross_keep_rate=0.5
    ),
    "frozen-hybrid": small_config("frozen", attention="sparse", block_size=2, visual_keep_rate=0.7),
    "singularity": small_config("singularity", visual_keep_rate=0.75),
    "singularity_temporal": small_config("singularity_temporal", visual_keep_rate=0.75),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_training_step_gives_every_parameter_a_finite_gradient(name):
    torch.manual_seed(0)
    model = create_model(VARIANTS[name])
    losses = model(make_batch())
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
    assert set(losses) == ({"vtc", "loss"} if name.startswith("frozen") else
                           {"vtc", "vtm", "mlm", "loss"})  # fmt: skip


def test_factory_builds_the_arch_of_the_config():
    assert type(create_model(small_config("svitt"))) is SViTT
    assert type(create_model(small_config("frozen"))) is Frozen
    assert type(create_model(small_config("singularity"))) is Singularity
    assert type(create_model(small_config("singularity_temporal"))) is SingularityTemporal


def shuffled_outputs(model: SViTT, batch: dict, order: list[int]) -> dict[str, torch.Tensor]:
    ids, mask = batch["text_ids"], batch["text_mask"]
    video = model.encode_video(batch["video"][:, order])
    text = model.encode_text(ids, mask)
    return {
        "embed": video.embed,
        "tokens": video.tokens,
        "vtm": model.match_logits(video.tokens, text.hidden, mask),
        "fused": model.fuse(video.tokens, text.hidden, mask).hidden,
    }


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("arch", ["singularity", "singularity_temporal"])
def test_only_the_frame_mean_baseline_is_invariant_to_frame_order(arch, pool):
    """`singularity` gives bit-identical outputs for shuffled frames; `singularity_temporal`
    sees the order, with either pooling (mean pooling must not bypass its temporal encoder).
    At its initialisation (temporal embedding std 0.02) the change is small, ~1e-5, but far
    above float64 rounding (~1e-16)."""
    torch.manual_seed(0)
    cfg = small_config(arch, visual_keep_rate=0.75, cross_keep_rate=0.5)
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, pool=pool))
    model = create_model(cfg).double().eval()
    batch = make_batch()
    batch["video"] = batch["video"].double()
    with torch.no_grad():
        normal = shuffled_outputs(model, batch, [0, 1, 2, 3])
        for order in ([2, 0, 3, 1], [3, 2, 1, 0]):
            shuffled = shuffled_outputs(model, batch, order)
            for key in normal:
                change = (normal[key] - shuffled[key]).abs().max()
                if arch == "singularity":
                    assert change == 0, key
                elif key in ("embed", "vtm"):
                    assert change > 1e-8, key


def test_singularity_temporal_shapes_and_parameters():
    model = create_model(small_config("singularity_temporal", visual_keep_rate=0.75)).eval()
    baseline = create_model(small_config("singularity", visual_keep_rate=0.75)).eval()
    batch = make_batch()
    with torch.no_grad():
        video, plain = model.encode_video(batch["video"]), baseline.encode_video(batch["video"])
    # The same layout as the frame-mean baseline: pooled [CLS], then every frame's kept tokens.
    assert video.tokens.shape == plain.tokens.shape == (3, 1 + 4 * 3, 32)
    assert video.embed.shape == (3, 16) and video.positions.shape == (3, 4 * 3)
    assert model.temporal_embed.shape == (1, 4, 1, 32) and len(model.temporal) == TEMPORAL_DEPTH
    assert "temporal_embed" in model.no_weight_decay()
    extra = {name.split(".")[0] for name, _ in model.named_parameters()} - {
        name.split(".")[0] for name, _ in baseline.named_parameters()
    }
    assert extra == {"temporal_embed", "temporal"}
    with pytest.raises(ValueError, match="training clip length"):
        model.encode_video(batch["video"][:, :2])


def test_svitt_is_not_invariant_to_frame_order():
    """The control of the baseline's invariance: a space-time model does see the order."""
    torch.manual_seed(0)
    cfg = small_config("svitt")
    # At BEiT's initialisation (weights std 0.02, bias std 0.02) the order moves the embedding
    # by only ~1e-7: trained weights and relative biases are what make the difference, so give
    # both trained-like magnitudes.
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, init_std=0.5))
    model = create_model(cfg).double().eval()
    with torch.no_grad():
        for block in model.vision.blocks:
            block.attn.relative_position_bias_table.normal_(std=1.0)
    batch = make_batch()
    batch["video"] = batch["video"].double()
    with torch.no_grad():
        normal = shuffled_outputs(model, batch, [0, 1, 2, 3])
        reversed_ = shuffled_outputs(model, batch, [3, 2, 1, 0])
    assert (normal["embed"] - reversed_["embed"]).abs().max() > 1e-2


def test_singularity_sparse_attention_that_does_not_fit_one_frame_is_explained():
    cfg = small_config("singularity", attention="sparse", block_size=2)
    with pytest.raises(ConfigError, match="encodes each frame alone: 4 tokens"):
        create_model(cfg)


def test_frozen_is_two_tower():
    model = create_model(small_config("frozen"))
    assert not model.has_matching_head
    assert len(model.text.layers) == 1  # the text-only layers: depth 3 - cross_depth 2
    with pytest.raises(TypeError, match="cosine similarity"):
        model.match_logits(torch.zeros(1, 2, 32), torch.zeros(1, 3, 32), torch.ones(1, 3))


def test_frozen_needs_an_absolute_position_embedding():
    cfg = dataclasses.replace(small_config("frozen"), vision=small_config().vision)
    with pytest.raises(ConfigError, match="abs_pos_emb"):
        create_model(cfg)


def test_tiny_preset_runs():
    torch.manual_seed(0)
    model = create_model(tiny_model_config(vocab_size=VOCAB))
    losses = model(make_batch(batch=2, size=32))
    assert torch.isfinite(losses["loss"])


@pytest.mark.parametrize(("frames", "edges", "sparsity"), [(4, 1.48, 0.80), (8, 2.60, 0.91)])
def test_paper_preset_gives_table_a1(frames, edges, sparsity):
    count = count_edges(paper_model_config(frames), text_len=32)
    assert round(count.edges / 1e6, 2) == edges
    assert round(count.sparsity, 2) == sparsity


def test_factory_loads_local_text_and_vision_weights(tmp_path):
    torch.manual_seed(0)
    cfg = small_config("svitt")
    bert = BertModel(
        BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=16,
        )
    )  # fmt: skip
    bert.save_pretrained(tmp_path / "bert")
    image_encoder = VisionTransformer(dataclasses.replace(cfg.vision, num_frames=1), cfg.sparsity)
    torch.save(image_encoder.state_dict(), tmp_path / "beit.pth")
    weights = dataclasses.replace(
        cfg.weights, text=str(tmp_path / "bert"), vision=str(tmp_path / "beit.pth")
    )
    for arch in ("svitt", "singularity"):
        model = create_model(dataclasses.replace(cfg, arch=arch, weights=weights))
        assert torch.equal(model.text.layers[1].output.dense.weight,
                           bert.encoder.layer[1].output.dense.weight)  # fmt: skip
        assert torch.equal(model.vision.patch_embed.proj.weight,
                           image_encoder.patch_embed.proj.weight)  # fmt: skip


def test_missing_weight_files_are_named(tmp_path):
    cfg = small_config("svitt")
    missing_text = dataclasses.replace(cfg.weights, text=str(tmp_path / "no-bert"))
    with pytest.raises(FileNotFoundError, match="no-bert"):
        create_model(dataclasses.replace(cfg, weights=missing_text))
    missing_vision = dataclasses.replace(cfg.weights, vision=str(tmp_path / "no-beit.pth"))
    with pytest.raises(FileNotFoundError, match="no-beit"):
        create_model(dataclasses.replace(cfg, weights=missing_vision))
