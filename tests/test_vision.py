import dataclasses
import math

import pytest
import torch

from svitt.config import ConfigError, ModelConfig, SparsityConfig, VisionConfig
from svitt.models.vision import VisionTransformer, relative_position_index
from svitt.sparsity import count_edges

TINY = VisionConfig(image_size=16, patch_size=4, num_frames=2, dim=16, depth=4, heads=2)
SPARSE = SparsityConfig(
    attention="sparse",
    block_size=4,
    local_blocks=1,
    random_blocks=2,
    visual_keep_rate=0.5,
    visual_drop_layers=(0, 2),
)


def make(cfg=TINY, sparsity=SPARSE, seed=0):
    torch.manual_seed(seed)
    model = VisionTransformer(cfg, sparsity).double()
    for block in model.blocks:  # non-trivial bias, so position bookkeeping errors show
        torch.nn.init.normal_(block.attn.relative_position_bias_table)
    return model


def clip(cfg=TINY, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def test_output_shapes_and_pruning_record():
    out = make().eval().forward_features(clip())
    assert out.tokens.shape == (2, 1 + 8, 16)
    assert out.positions.shape == (2, 8)
    assert [k.shape for k in out.kept] == [(2, 16), (2, 8)]
    assert [s.shape for s in out.scores] == [(2, 32), (2, 16)]
    assert torch.equal(out.kept[-1], out.positions)
    assert torch.equal(out.scored_positions[1], out.kept[0])


def test_wrong_frame_count_is_a_clear_error():
    video = clip(dataclasses.replace(TINY, num_frames=3))
    with pytest.raises(ValueError, match="num_frames=2"):
        make().forward_features(video)


def test_bad_drop_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="visual_drop_layers"):
        VisionTransformer(TINY, dataclasses.replace(SPARSE, visual_drop_layers=(4,)))


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_edges_attended_equal_sparsity_count(attention):
    sparsity = dataclasses.replace(SPARSE, attention=attention)
    out = make(sparsity=sparsity).train().forward_features(clip())
    expected = count_edges(ModelConfig(vision=TINY, sparsity=sparsity), text_len=1)
    assert out.edges == expected.visual_edges


def test_padded_blocks_attend_fewer_edges_than_nominal():
    sparsity = dataclasses.replace(SPARSE, visual_keep_rate=0.7)  # 32 -> 23 tokens: padded
    out = make(sparsity=sparsity).eval().forward_features(clip())
    nominal = count_edges(ModelConfig(vision=TINY, sparsity=sparsity), text_len=1).visual_edges
    assert 0 < out.edges <= nominal


def test_node_sparsity_keeps_cls_and_top_scoring_tokens():
    sparsity = dataclasses.replace(SPARSE, visual_keep_rate=0.7, visual_drop_layers=(1,))
    out = make(sparsity=sparsity).eval().forward_features(clip())
    n_kept = math.ceil(0.7 * 32)
    assert out.tokens.shape[1] == 1 + n_kept
    scores, positions = out.scores[0], out.scored_positions[0]
    for b in range(2):
        top = positions[b, scores[b].topk(n_kept).indices]
        assert set(out.kept[0][b].tolist()) == set(top.tolist())
        rest = torch.ones(32, dtype=torch.bool)
        rest[scores[b].topk(n_kept).indices] = False
        assert scores[b][rest].max() <= scores[b].topk(n_kept).values.min()


def test_cls_scores_are_mean_cls_attention():
    sparsity = dataclasses.replace(SPARSE, attention="dense", visual_drop_layers=(0,))
    model = make(sparsity=sparsity).eval()
    out = model.forward_features(clip())
    # attention rows sum to one, so the non-[CLS] share is below one and positive
    total = out.scores[0].sum(dim=1)
    assert ((total > 0) & (total < 1)).all()


def test_random_keep_strategy_is_fixed_at_eval():
    sparsity = dataclasses.replace(SPARSE, keep_strategy="random")
    model = make(sparsity=sparsity).eval()
    first = model.forward_features(clip())
    second = model.forward_features(clip())
    assert all(torch.equal(a, b) for a, b in zip(first.kept, second.kept, strict=True))
    torch.testing.assert_close(first.tokens, second.tokens, rtol=0, atol=0)


@pytest.mark.parametrize("order", ["morton", "hilbert"])
def test_token_order_leaves_dense_cls_output_unchanged(order):
    """Attention is permutation-equivariant when the bias follows original positions."""
    dense = SparsityConfig(visual_keep_rate=1.0)
    raster = make(sparsity=dense).eval()
    reordered = make(sparsity=dataclasses.replace(dense, token_order=order)).eval()
    reordered.load_state_dict(raster.state_dict())
    a, b = raster.forward_features(clip()), reordered.forward_features(clip())
    assert not torch.equal(b.positions[0], torch.arange(32))
    torch.testing.assert_close(a.tokens[:, 0], b.tokens[:, 0])
    torch.testing.assert_close(a.tokens[:, 1:][:, b.positions[0]], b.tokens[:, 1:])


def test_relative_index_matches_timm_for_one_frame():
    from timm.models.beit import gen_relative_position_index

    h, w = 3, 4
    positions = torch.cat([torch.tensor([-1]), torch.arange(h * w)])
    ours = relative_position_index(positions[:, None], positions[None, :], (1, h, w))
    assert torch.equal(ours, gen_relative_position_index((h, w)))


@pytest.mark.parametrize(("abs_pos_emb", "pool"), [(False, "cls"), (True, "cls"), (False, "mean")])
def test_training_step_gives_every_parameter_a_finite_gradient(abs_pos_emb, pool):
    cfg = dataclasses.replace(TINY, abs_pos_emb=abs_pos_emb, drop_path=0.1, pool=pool)
    model = make(cfg).train()
    out = model.forward_features(clip(cfg))
    (out.tokens.pow(2).mean() + out.pooled.pow(2).mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_grad_checkpointing_gives_the_same_gradients():
    grads = []
    for enable in (False, True):
        model = make().train()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(7)  # same random blocks in both runs
        model.forward_features(clip()).tokens.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_no_weight_decay_names_exist():
    model = make(dataclasses.replace(TINY, abs_pos_emb=True))
    names = dict(model.named_parameters())
    skip = model.no_weight_decay()
    assert {"cls_token", "pos_embed", "blocks.0.attn.relative_position_bias_table"} <= skip
    assert skip <= names.keys()


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_pooled_output_is_cls_or_normalised_mean_of_kept_patch_tokens(pool):
    model = make(dataclasses.replace(TINY, pool=pool)).eval()
    captured = []
    model.norm.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    out = model.forward_features(clip())
    if pool == "cls":
        assert model.fc_norm is None
        assert torch.equal(out.pooled, out.tokens[:, 0])
    else:
        last = captured[0]  # [B, 1 + 8, D]: [CLS] and the 8 tokens left after pruning
        assert last.shape == (2, 9, 16)
        torch.testing.assert_close(out.pooled, model.fc_norm(last[:, 1:].mean(dim=1)))
        assert not torch.allclose(out.pooled, out.tokens[:, 0])


def test_drop_path_rises_linearly_and_is_inactive_in_eval():
    cfg = dataclasses.replace(TINY, drop_path=0.3)
    model = make(cfg, sparsity=SparsityConfig())
    rates = [block.drop_path.rate for block in model.blocks[1:]]
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)  # rate 0 at the first
    assert rates == pytest.approx([0.1, 0.2, 0.3])
    plain = make(dataclasses.replace(cfg, drop_path=0.0), sparsity=SparsityConfig())
    plain.load_state_dict(model.state_dict())
    video = clip()
    reference = plain.eval().forward_features(video).tokens
    torch.testing.assert_close(model.eval().forward_features(video).tokens, reference)
    torch.testing.assert_close(plain.train().forward_features(video).tokens, reference)
    torch.manual_seed(0)
    assert not torch.allclose(model.train().forward_features(video).tokens, reference)


def test_drop_path_rate_is_checked():
    with pytest.raises(ConfigError, match=r"drop_path: got 1\.0; allowed: a rate in \[0, 1\)"):
        dataclasses.replace(TINY, drop_path=1.0)
