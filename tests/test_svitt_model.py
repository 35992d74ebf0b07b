"""SViTT model: VTC / VTM / MLM losses, hard negatives, masking, the common model API."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB, tiny_text, tiny_vision

from svitt.config import ConfigError, ModelConfig, SparsityConfig
from svitt.models.factory import create_model, tiny_model_config
from svitt.models.svitt import (
    SViTT,
    mask_tokens,
    positive_pairs,
    sample_hard_negatives,
    twin_loss,
    vtc_loss,
)
from svitt.models.text import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("single_thread")


def small_config(**changes) -> ModelConfig:
    cfg = ModelConfig(
        vision=tiny_vision(),
        text=tiny_text(dim=24, mlp_dim=48),
        sparsity=SparsityConfig(
            visual_keep_rate=0.75, visual_drop_layers=(0,), cross_keep_rate=0.5,
            cross_drop_layers=(0,),
        ),
        embed_dim=16,
    )  # fmt: skip
    return dataclasses.replace(cfg, **changes)


def make_batch(batch: int = 4, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (batch, length), generator=generator)
    ids[:, 0], ids[:, -1] = 1, 2
    return {
        "video": torch.randn(batch, 4, 3, 16, 16, generator=generator),
        "text_ids": ids,
        "text_mask": torch.ones(batch, length, dtype=torch.long),
    }


def evaluate(model: SViTT, batch: dict) -> dict[str, float]:
    """Losses with dropout off and the same masks / negatives every call."""
    model.eval()
    torch.manual_seed(123)
    with torch.no_grad():
        losses = {name: value.item() for name, value in model(batch).items()}
    model.train()
    return losses


def train_steps(model: SViTT, batch: dict, steps: int = 12) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model(batch)["loss"].backward()
        optimizer.step()


def test_each_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = SViTT(small_config())
    batch = make_batch()
    before = evaluate(model, batch)
    train_steps(model, batch)
    after = evaluate(model, batch)
    for name in ("vtc", "vtm", "mlm", "loss"):
        assert after[name] < before[name], (name, before[name], after[name])


def test_forward_returns_weighted_total():
    torch.manual_seed(0)
    model = SViTT(small_config(loss_weights={"vtc": 2.0, "vtm": 0.0, "mlm": 0.5})).eval()
    torch.manual_seed(1)
    losses = model(make_batch())
    assert set(losses) == {"vtc", "mlm", "loss"}  # weight 0: not computed
    torch.testing.assert_close(losses["loss"], 2.0 * losses["vtc"] + 0.5 * losses["mlm"])


def test_twin_loss_is_the_hinge_on_twin_cosines():
    video = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]]), dim=-1)
    rows = torch.tensor([[0, 1], [0, 2]])
    cosines = [2**-0.5, 0.0, 1 / math.hypot(1.0, 0.1), -1.0]  # video pairs, then text pairs
    expected = sum(max(c - 0.5, 0.0) for c in cosines) / 4
    assert twin_loss(video, text, rows, margin=0.5).item() == pytest.approx(expected)
    assert twin_loss(video, text, rows, margin=1.0 - 1e-6).item() == 0.0
    assert twin_loss(video, text, torch.empty((0, 2), dtype=torch.long), 0.5).item() == 0.0


def test_twin_loss_separates_a_clip_from_its_reversal():
    torch.manual_seed(0)
    cfg = small_config(loss_weights={"vtc": 1.0, "twin": 1.0}, twin_margin=0.0)
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, abs_pos_emb=True))
    model = SViTT(cfg)
    batch = make_batch()
    batch["video"] = torch.cat([batch["video"][:2], batch["video"][:2].flip(1)])
    batch["twin_rows"] = torch.tensor([[0, 2], [1, 3]])
    before = evaluate(model, batch)
    train_steps(model, batch)
    assert set(before) == {"vtc", "twin", "loss"}
    assert evaluate(model, batch)["twin"] < before["twin"]
    with pytest.raises(ConfigError, match="twin_margin"):
        small_config(twin_margin=1.0)


def test_vtc_matches_the_infonce_formula():
    torch.manual_seed(0)
    video = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=-1)
    temp = torch.tensor(0.07, dtype=torch.float64)
    expected = 0.0
    for i in range(3):
        v2t = [math.exp(video[i] @ text[j] / temp) for j in range(3)]
        t2v = [math.exp(text[i] @ video[j] / temp) for j in range(3)]
        expected -= math.log(v2t[i] / sum(v2t)) + math.log(t2v[i] / sum(t2v))
    expected /= 2 * 3  # mean over the batch and the two directions
    assert vtc_loss(video, text, temp).item() == pytest.approx(expected, rel=1e-12)


def test_vtc_gather_spans_the_global_batch():
    torch.manual_seed(0)
    video, text = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    other_video, other_text = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8).double()
    others = {id(video): other_video, id(text): other_text}

    def gather(x):  # what an all-gather with gradients returns: this rank's rows + the others'
        return torch.cat([x, others[id(x)]])

    temp = torch.tensor(0.1, dtype=torch.float64)
    global_loss = vtc_loss(torch.cat([video, other_video]), torch.cat([text, other_text]), temp)
    torch.testing.assert_close(vtc_loss(video, text, temp, gather), global_loss)
    assert not torch.isclose(vtc_loss(video, text, temp), global_loss)


def test_vtc_same_video_pairs_are_all_positives():
    torch.manual_seed(0)
    video = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=-1)
    temp = torch.tensor(0.1, dtype=torch.float64)
    ids = [7, 7, 9]
    logits = (video @ text.T / temp).tolist()
    expected = 0.0
    for i in range(3):
        positives = [j for j in range(3) if ids[j] == ids[i]]
        for row in (logits[i], [logits[j][i] for j in range(3)]):  # video->text, text->video
            log_norm = math.log(sum(math.exp(x) for x in row))
            expected -= sum(row[j] - log_norm for j in positives) / len(positives)
    expected /= 2 * 3
    loss = vtc_loss(video, text, temp, video_ids=torch.tensor(ids))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert loss.item() != pytest.approx(vtc_loss(video, text, temp).item(), rel=1e-3)


def test_hard_negatives_are_never_positives():
    torch.manual_seed(0)
    video_ids = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4])
    positives = positive_pairs(8, video_ids, torch.device("cpu"))
    for _ in range(200):
        similarity = torch.randn(8, 8) * 5
        similarity.diagonal().add_(100.0)  # positives most similar: the likeliest draw if allowed
        index, valid = sample_hard_negatives(similarity, positives)
        assert valid.all()
        assert not positives[torch.arange(8), index].any()


def test_hard_negatives_follow_similarity_and_flag_rows_without_any():
    similarity = torch.tensor([[0.0, 50.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    positives = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    index, valid = sample_hard_negatives(similarity, positives)
    assert index[0] == 1  # overwhelmingly the most similar negative
    assert valid.tolist() == [True, False, True]


def test_vtm_uses_no_same_video_negative(monkeypatch):
    torch.manual_seed(0)
    model = SViTT(small_config(loss_weights={"vtm": 1.0}))
    batch = make_batch(batch=4) | {"video_id": torch.tensor([5, 5, 6, 7])}
    pairs = []

    def record(video_tokens, text_hidden, text_mask):
        pairs.append((video_tokens, text_hidden))
        return torch.zeros(len(video_tokens), 1, requires_grad=True)

    monkeypatch.setattr(model, "vtm_scores", record)
    video = model.encode_video(batch["video"])
    text = model.encode_text(batch["text_ids"], batch["text_mask"])
    for _ in range(20):
        model.vtm_loss(video, text, batch["text_mask"], batch["video_id"])
    ids = batch["video_id"]
    for video_tokens, text_hidden in pairs:
        video_row = [int((video.tokens == v).all(dim=(1, 2)).nonzero()[0]) for v in video_tokens]
        text_row = [int((text.hidden == t).all(dim=(1, 2)).nonzero()[0]) for t in text_hidden]
        same = [ids[v] == ids[t] for v, t in zip(video_row, text_row, strict=True)]
        assert all(same[:4]) and not any(same[4:])  # 4 positives, then only true negatives
        assert len(same) == 12
    assert len(pairs) == 20


def test_mask_tokens_never_masks_special_tokens():
    torch.manual_seed(0)
    cfg = small_config().text
    ids = torch.randint(4, VOCAB, (512, 20))
    ids[:, 0], ids[:, 15] = cfg.cls_token_id, cfg.sep_token_id
    ids[:, 16:] = cfg.pad_token_id
    mask = (ids != cfg.pad_token_id).long()
    masked, labels = mask_tokens(ids, mask, cfg, probability=0.5)
    chosen = labels != IGNORE_INDEX
    assert not chosen[:, [0, 15, 16, 17, 18, 19]].any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])
    rate = chosen[:, 1:15].float().mean().item()
    assert 0.45 < rate < 0.55
    to_mask_token = (masked[chosen] == cfg.mask_token_id).float().mean().item()
    unchanged = (masked[chosen] == ids[chosen]).float().mean().item()
    # 80% [MASK], 10% random token, 10% unchanged (+ random draws of the same token)
    assert 0.77 < to_mask_token < 0.83 and 0.07 < unchanged < 0.13


def test_temperature_is_clamped():
    model = SViTT(small_config())
    with torch.no_grad():
        model.temp.fill_(3.0)
    model(make_batch())
    assert model.temp.item() == 0.5
    assert "temp" in model.no_weight_decay()


def test_common_api_shapes():
    torch.manual_seed(0)
    model = SViTT(small_config()).eval()
    batch = make_batch(batch=3)
    video = model.encode_video(batch["video"])
    text = model.encode_text(batch["text_ids"], batch["text_mask"])
    assert video.tokens.shape == (3, 1 + 12, 32)  # 16 patches, q_v = 0.75 after layer 0
    assert video.positions.shape == (3, 12)
    torch.testing.assert_close(video.embed.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text.embed.norm(dim=-1), torch.ones(3))
    assert text.hidden.shape == (3, 8, 24)
    logits = model.match_logits(video.tokens, text.hidden, batch["text_mask"])
    assert logits.shape == (3,)
    fused = model.fuse(video.tokens, text.hidden, batch["text_mask"], video.positions)
    assert fused.video_tokens_seen == [12, 6]
    for row in range(3):
        assert set(fused.kept[0][row].tolist()) <= set(video.positions[row].tolist())


def test_vtm_without_any_negative_is_zero_but_keeps_the_graph():
    model = SViTT(small_config(loss_weights={"vtm": 1.0}))
    batch = make_batch(batch=2) | {"video_id": torch.tensor([3, 3])}
    losses = model(batch)
    assert losses["vtm"].item() == 0.0
    losses["loss"].backward()
    assert model.vtm_head.weight.grad is not None


def test_init_std_sets_the_scale_of_weights_trained_from_scratch():
    cfg = tiny_model_config()
    wide = dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision, init_std=0.1),
        text=dataclasses.replace(cfg.text, init_std=0.1),
    )
    for config, std in ((cfg, 0.02), (wide, 0.1)):
        model = create_model(config)
        vision_std = model.vision.blocks[0].mlp.fc1.weight.std().item()
        text_std = model.text.layers[0].intermediate.dense.weight.std().item()
        assert vision_std == pytest.approx(std, rel=0.15)  # truncated at +-2: a bit below std
        assert text_std == pytest.approx(std, rel=0.1)


def test_pos_init_std_sets_the_scale_of_the_absolute_position_embedding():
    cfg = tiny_model_config()
    for std in (0.02, 0.5):
        vision = dataclasses.replace(cfg.vision, abs_pos_emb=True, pos_init_std=std)
        model = create_model(dataclasses.replace(cfg, vision=vision))
        assert model.vision.pos_embed.std().item() == pytest.approx(std, rel=0.15)
    with pytest.raises(ConfigError, match="pos_init_std"):
        dataclasses.replace(cfg.vision, pos_init_std=0.0)


def test_two_way_vtm_head_is_the_release_itm():
    torch.manual_seed(0)
    model = SViTT(small_config(vtm_head="two_way", loss_weights={"vtm": 1.0})).eval()
    assert model.vtm_head.weight.shape == (2, 24)
    batch = make_batch(batch=3)
    video = model.encode_video(batch["video"])
    text = model.encode_text(batch["text_ids"], batch["text_mask"])
    mask = batch["text_mask"]
    fused = model.fuse(video.tokens, text.hidden, mask).hidden[:, 0]
    scores = fused @ model.vtm_head.weight.T + model.vtm_head.bias
    # match_logits: one logit per pair, larger = match; two_way: the raw class-1 logit
    torch.testing.assert_close(model.match_logits(video.tokens, text.hidden, mask), scores[:, 1])
    # the loss is the 2-class cross-entropy over the positives and the hard negatives
    picked = []
    original = model.vtm_scores

    def record(*args):
        picked.append(original(*args))
        return picked[-1]

    model.vtm_scores = record
    loss = model.vtm_loss(video, text, mask, None)
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0])
    torch.testing.assert_close(loss, F.cross_entropy(picked[0], labels))


@pytest.mark.parametrize("vtm_head", ["binary", "two_way"])
def test_vtm_loss_decreases_with_either_head(vtm_head):
    torch.manual_seed(0)
    model = SViTT(small_config(vtm_head=vtm_head, loss_weights={"vtm": 1.0}))
    batch = make_batch()
    before = evaluate(model, batch)["vtm"]
    train_steps(model, batch)
    assert evaluate(model, batch)["vtm"] < before


@pytest.mark.parametrize("arch", ["svitt", "singularity"])
def test_mean_pooling_projects_the_pooler_output(arch):
    torch.manual_seed(0)
    vision = dataclasses.replace(small_config().vision, pool="mean")
    model = create_model(small_config(arch=arch, vision=vision)).eval()
    batch = make_batch(batch=3)
    video = model.encode_video(batch["video"])
    pooled = video.vision.pooled
    if arch == "singularity":  # one pooled row per frame, averaged over the 4 frames
        pooled = pooled.view(3, 4, -1).mean(dim=1)
        torch.testing.assert_close(video.tokens[:, 0], pooled)  # f_m's first token
    expected = F.normalize(model.vision_proj(pooled), dim=-1)
    torch.testing.assert_close(video.embed, expected)
    if arch == "singularity":  # the frame mean is exactly order-free
        shuffled = model.encode_video(batch["video"][:, [2, 0, 3, 1]])
        assert torch.equal(shuffled.embed, video.embed)
