import dataclasses

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import tiny_text
from transformers import BeitConfig, BeitModel, BertConfig, BertModel

from svitt.config import ConfigError, SparsityConfig, VisionConfig
from svitt.models.text import TextEncoder, load_text_weights
from svitt.models.vision import VisionTransformer
from svitt.models.weights import load_vision_weights

# A tiny BEiT image model: 16x16 images, 4x4 patches (4x4 grid), 2 layers.
BEIT = VisionConfig(
    image_size=16, patch_size=4, num_frames=1, dim=16, depth=2, heads=2, mlp_ratio=2.0
)
VIT = dataclasses.replace(BEIT, rel_pos_bias=False, abs_pos_emb=True)


def randomise(module):
    """Random values everywhere (biases, tables, norms), so a misplaced tensor shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.3)
    return module


def pixels(frames=1, batch=2):
    return torch.randn(
        batch, frames, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )


def tiny_timm(name, **changes):
    """A timm model of BEIT's shape: 16 px images, 4 px patches, 2 layers of width 16."""
    return timm.create_model(
        name, pretrained=False, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
        **changes,
    )  # fmt: skip


def tiny_hf_beit(**changes):
    """A HF BEiT of BEIT's shape with relative position bias and layer scale."""
    cfg = BeitConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        image_size=16, patch_size=4, use_relative_position_bias=True, layer_scale_init_value=0.1,
        **changes,
    )  # fmt: skip
    return randomise(BeitModel(cfg))


def ours(cfg, path, fmt):
    model = VisionTransformer(cfg, SparsityConfig()).double().eval()
    load_vision_weights(model, path, fmt)
    return model


def test_timm_beit_matches_timm_outputs(tmp_path):
    ref = tiny_timm("beit_base_patch16_224", mlp_ratio=2.0, num_classes=3, global_pool="token")
    ref = randomise(ref).double().eval()
    path = tmp_path / "beit.pth"
    torch.save(ref.state_dict(), path)
    x = pixels()
    expected = ref.forward_features(x[:, 0])
    torch.testing.assert_close(ours(BEIT, path, "beit_timm").forward_features(x).tokens, expected)
    # the same weights inflated to 3 frames see a static clip as the image
    video = ours(dataclasses.replace(BEIT, num_frames=3), path, "beit_timm")
    got = video.forward_features(x.expand(-1, 3, -1, -1, -1)).tokens
    torch.testing.assert_close(got[:, 0], expected[:, 0])


def hf_beit():
    return tiny_hf_beit(layer_norm_eps=1e-6, use_mean_pooling=False).double().eval()


@pytest.mark.parametrize("layout", ["save_pretrained", "state_dict"])
def test_hf_beit_matches_hf_outputs(tmp_path, layout):
    ref = hf_beit()
    if layout == "save_pretrained":  # the hub's key names (encoder.layer.N.attention...)
        ref.save_pretrained(tmp_path)
        path = tmp_path
    else:  # transformers 5 module names (layers.N.attention.q_proj...)
        path = tmp_path / "beit_hf.bin"
        torch.save(ref.state_dict(), path)
    x = pixels()
    expected = ref(pixel_values=x[:, 0]).last_hidden_state
    torch.testing.assert_close(ours(BEIT, path, "beit_hf").forward_features(x).tokens, expected)


def test_timm_vit_matches_timm_outputs(tmp_path):
    ref = tiny_timm("vit_base_patch16_224", mlp_ratio=2.0, num_classes=0, init_values=0.1)
    ref = randomise(ref).double().eval()
    path = tmp_path / "vit.pth"
    torch.save({"model": ref.state_dict()}, path)
    x = pixels()
    got = ours(VIT, path, "vit_timm").forward_features(x).tokens
    torch.testing.assert_close(got, ref.forward_features(x[:, 0]))


def test_resizes_grid_and_inflates_frames(tmp_path):
    ref = randomise(tiny_timm("beit_base_patch16_224", mlp_ratio=2.0, num_classes=0))
    path = tmp_path / "beit.pth"
    torch.save(ref.state_dict(), path)
    cfg = dataclasses.replace(BEIT, image_size=24, num_frames=2)  # 6x6 grid, 2 frames
    model = ours(cfg, path, "beit_timm")
    table = model.blocks[0].attn.relative_position_bias_table
    assert table.shape == (3 * 11 * 11 + 3, 2)
    # the [CLS] rows come through (token->[CLS] and [CLS]->[CLS] shifted by log 2)
    src = ref.blocks[0].attn.relative_position_bias_table.detach().double()
    torch.testing.assert_close(table[-3], src[-3])
    torch.testing.assert_close(
        table[-1] - src[-1], torch.full((2,), 0.6931, dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_mismatch_names_the_file_and_the_key(tmp_path):
    ref = tiny_timm("vit_base_patch16_224", num_classes=0)
    path = tmp_path / "vit.pth"
    torch.save(ref.state_dict(), path)
    model = VisionTransformer(BEIT, SparsityConfig())
    with pytest.raises(ValueError, match=r"vit\.pth.*no weights for .blocks\.0\.gamma_1"):
        load_vision_weights(model, path, "vit_timm")
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_vision_weights(model, tmp_path / "missing.pth", "beit_timm")
    with pytest.raises(ValueError, match="beit_timm, beit_hf, vit_timm"):
        load_vision_weights(model, path, "clip")


def save_hf_beit_release_style(path, eps=1e-12):
    """A HF BEiT directory like the release's BEiT-B ft22k: eps 1e-12, mean pooling, float32."""
    ref = tiny_hf_beit(layer_norm_eps=eps, use_mean_pooling=True).eval()
    ref.save_pretrained(path)
    return ref


def test_hf_beit_eps_1e12_mean_pooling_reproduces_hf_in_float32(tmp_path):
    ref = save_hf_beit_release_style(tmp_path)
    cfg = dataclasses.replace(BEIT, layer_norm_eps=1e-12, pool="mean")
    model = VisionTransformer(cfg, SparsityConfig()).eval()
    load_vision_weights(model, tmp_path, "beit_hf")
    x = pixels().float()
    with torch.no_grad():
        expected = ref(pixel_values=x[:, 0])
        out = model.forward_features(x)
    # The release feeds f_m a fresh LayerNorm (vision_layernorm) of the last hidden state; with
    # mean pooling HF's last hidden state has no final norm. Our token norm starts fresh too.
    tokens = F.layer_norm(expected.last_hidden_state, (16,), eps=1e-12)
    token_diff = (out.tokens - tokens).abs().max().item()
    pooled_diff = (out.pooled - expected.pooler_output).abs().max().item()
    print(f"max abs diff: tokens {token_diff:.2e}, pooled {pooled_diff:.2e}")
    assert token_diff < 1e-5 and pooled_diff < 1e-5
    # At the old hard-coded eps the same weights drift by far more than float32 rounding.
    loose = VisionTransformer(dataclasses.replace(BEIT, pool="mean"), SparsityConfig()).eval()
    loose.load_state_dict(model.state_dict())
    with torch.no_grad():
        drift = (loose.forward_features(x).pooled - expected.pooler_output).abs().max().item()
    assert drift > 10 * pooled_diff


def test_hf_beit_eps_mismatch_is_refused_naming_both_values(tmp_path):
    save_hf_beit_release_style(tmp_path)
    model = VisionTransformer(dataclasses.replace(BEIT, pool="mean"), SparsityConfig())
    with pytest.raises(ConfigError, match=r"model\.vision\.layer_norm_eps: got 1e-06.* has 1e-12"):
        load_vision_weights(model, tmp_path, "beit_hf")
    deeper = dataclasses.replace(BEIT, depth=3, layer_norm_eps=1e-12)
    with pytest.raises(ConfigError, match=r"model\.vision\.depth: got 3.* has 2"):
        load_vision_weights(VisionTransformer(deeper, SparsityConfig()), tmp_path, "beit_hf")


def test_mean_pooling_needs_the_pooler_norm(tmp_path):
    ref = hf_beit()  # [CLS] pooling: a final layernorm, no pooler norm
    ref.save_pretrained(tmp_path)
    model = VisionTransformer(dataclasses.replace(BEIT, pool="mean"), SparsityConfig())
    with pytest.raises(ValueError, match=r"no weights for 'fc_norm\.weight'.*pool"):
        load_vision_weights(model, tmp_path, "beit_hf")


def test_bert_eps_mismatch_is_refused_naming_both_values(tmp_path):
    BertModel(BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, layer_norm_eps=1e-5,
    )).save_pretrained(tmp_path)  # fmt: skip
    text = tiny_text(depth=2, cross_depth=0)
    encoder = TextEncoder(text, SparsityConfig(), video_dim=32)
    with pytest.raises(ConfigError, match=r"model\.text\.layer_norm_eps: got 1e-12.* has 1e-05"):
        load_text_weights(encoder, tmp_path)
    matching = TextEncoder(
        dataclasses.replace(text, layer_norm_eps=1e-5), SparsityConfig(), 32, mlm_head=False
    )
    assert load_text_weights(matching, tmp_path) == []
    assert matching.layers[0].output.LayerNorm.eps == 1e-5
