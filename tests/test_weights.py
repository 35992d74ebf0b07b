import dataclasses

import pytest
import timm
import torch
from transformers import BeitConfig, BeitModel

from svitt.config import SparsityConfig, VisionConfig
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


def ours(cfg, path, fmt):
    model = VisionTransformer(cfg, SparsityConfig()).double().eval()
    load_vision_weights(model, path, fmt)
    return model


def test_timm_beit_matches_timm_outputs(tmp_path):
    ref = timm.create_model(
        "beit_base_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=4,
        embed_dim=16,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        num_classes=3,
        global_pool="token",
    )
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
    cfg = BeitConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=4,
        layer_norm_eps=1e-6,
        use_relative_position_bias=True,
        use_mean_pooling=False,
        layer_scale_init_value=0.1,
    )
    return randomise(BeitModel(cfg)).double().eval()


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
    ref = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=4,
        embed_dim=16,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        num_classes=0,
        init_values=0.1,
    )
    ref = randomise(ref).double().eval()
    path = tmp_path / "vit.pth"
    torch.save({"model": ref.state_dict()}, path)
    x = pixels()
    got = ours(VIT, path, "vit_timm").forward_features(x).tokens
    torch.testing.assert_close(got, ref.forward_features(x[:, 0]))


def test_resizes_grid_and_inflates_frames(tmp_path):
    ref = randomise(
        timm.create_model(
            "beit_base_patch16_224",
            pretrained=False,
            img_size=16,
            patch_size=4,
            embed_dim=16,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            num_classes=0,
        )
    )
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
    ref = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=4,
        embed_dim=16,
        depth=2,
        num_heads=2,
        num_classes=0,
    )
    path = tmp_path / "vit.pth"
    torch.save(ref.state_dict(), path)
    model = VisionTransformer(BEIT, SparsityConfig())
    with pytest.raises(ValueError, match=r"vit\.pth.*no weights for .blocks\.0\.gamma_1"):
        load_vision_weights(model, path, "vit_timm")
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_vision_weights(model, tmp_path / "missing.pth", "beit_timm")
    with pytest.raises(ValueError, match="beit_timm, beit_hf, vit_timm"):
        load_vision_weights(model, path, "clip")
