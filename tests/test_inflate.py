import dataclasses
import math

import pytest
import torch

from svitt.config import SparsityConfig, VisionConfig
from svitt.models.inflate import (
    frame_source_index,
    inflate_pos_embed,
    inflate_rel_pos_table,
    inflate_state_dict,
    offset_source_index,
)
from svitt.models.vision import VisionTransformer

IMAGE = VisionConfig(image_size=12, patch_size=4, num_frames=1, dim=16, depth=3, heads=2)


def test_eq7_frame_indices():
    assert frame_source_index(4, 8) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert frame_source_index(8, 4) == [1, 3, 5, 7]
    assert frame_source_index(1, 3) == [0, 0, 0]
    assert frame_source_index(4, 4) == [0, 1, 2, 3]


def test_offset_indices_are_symmetric_nearest_neighbour():
    # 4 -> 8 frames: destination offsets -7..7 read source offsets -3..3 (index + 3)
    assert offset_source_index(4, 8) == [
        i + 3 for i in (-3, -3, -3, -2, -2, -1, -1, 0, 1, 1, 2, 2, 3, 3, 3)
    ]
    assert offset_source_index(1, 4) == [0] * 7
    assert offset_source_index(3, 3) == list(range(5))


def test_rel_table_copies_expected_temporal_slices():
    h, w, heads = 2, 3, 2
    spatial = (2 * h - 1) * (2 * w - 1)
    # each temporal offset slice holds its own offset value, so copies are recognisable
    src = torch.arange(-3, 4, dtype=torch.float64).repeat_interleave(spatial)[:, None]
    table = torch.cat([src.expand(-1, heads), torch.zeros(3, heads, dtype=torch.float64)])
    out = inflate_rel_pos_table(table, 4, 8, (h, w))
    assert out.shape == (15 * spatial + 3, heads)
    got = out[:-3].reshape(15, spatial, heads)[:, 0, 0].tolist()
    assert got == [-3, -3, -3, -2, -2, -1, -1, 0, 1, 1, 2, 2, 3, 3, 3]
    assert out[-3].tolist() == [0, 0]  # [CLS]->token keeps its value
    torch.testing.assert_close(out[-2:], torch.full((2, heads), math.log(2), dtype=torch.float64))


def test_pos_embed_copies_expected_frames():
    area = 4
    frames = torch.arange(4, dtype=torch.float64).repeat_interleave(area)
    pos = torch.cat([torch.tensor([-1.0], dtype=torch.float64), frames])[None, :, None]
    out = inflate_pos_embed(pos.expand(-1, -1, 3), 4, 8, (2, 2))
    assert out[0, 0, 0] == -1
    assert out[0, 1:, 0].reshape(8, area)[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(out[0, 1:, 1].reshape(8, area), out[0, 1:, 0].reshape(8, area))


def test_same_frames_is_identity_and_prefix_limits_keys():
    torch.manual_seed(0)
    model = VisionTransformer(dataclasses.replace(IMAGE, abs_pos_emb=True), SparsityConfig())
    state = {f"vision.{k}": v for k, v in model.state_dict().items()}
    state["text.pos_embed"] = torch.zeros(5)
    same = inflate_state_dict(state, 1, 1, (3, 3), prefix="vision.")
    assert all(torch.equal(same[k], v) for k, v in state.items())
    grown = inflate_state_dict(state, 1, 4, (3, 3), prefix="vision.")
    assert grown["vision.pos_embed"].shape == (1, 1 + 4 * 9, 16)
    assert grown["vision.blocks.2.attn.relative_position_bias_table"].shape == (7 * 25 + 3, 2)
    assert torch.equal(grown["text.pos_embed"], state["text.pos_embed"])


def test_wrong_table_size_names_the_key():
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.relative_position_bias_table"):
        inflate_state_dict(
            {"blocks.0.attn.relative_position_bias_table": torch.zeros(10, 2)}, 1, 4, (3, 3)
        )


@pytest.mark.parametrize("abs_pos_emb", [False, True])
def test_inflated_model_matches_image_model_on_a_static_clip(abs_pos_emb):
    frames = 3
    image_cfg = dataclasses.replace(IMAGE, abs_pos_emb=abs_pos_emb)
    torch.manual_seed(0)
    image = VisionTransformer(image_cfg, SparsityConfig()).double().eval()
    for block in image.blocks:
        torch.nn.init.normal_(block.attn.relative_position_bias_table)
    video_cfg = dataclasses.replace(image_cfg, num_frames=frames)
    video = VisionTransformer(video_cfg, SparsityConfig()).double().eval()
    video.load_state_dict(inflate_state_dict(image.state_dict(), 1, frames, (3, 3)))

    frame = torch.randn(2, 1, 3, 12, 12, dtype=torch.float64)
    expected = image.forward_features(frame).tokens
    got = video.forward_features(frame.expand(-1, frames, -1, -1, -1)).tokens
    torch.testing.assert_close(got[:, 0], expected[:, 0])
    torch.testing.assert_close(got[:, 1 + 9 : 1 + 18], expected[:, 1:])  # second frame's tokens
