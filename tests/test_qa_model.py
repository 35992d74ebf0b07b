"""Video QA: answer decoder initialisation, causal decoding, training, answer-list ranking."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import SPECIAL_TOKENS, VOCAB, tiny_text, tiny_vision
from transformers import BertConfig, BertForMaskedLM

from svitt.config import ConfigError, ModelConfig, SparsityConfig
from svitt.models.factory import create_model, create_qa_model
from svitt.models.qa import VideoQA
from svitt.models.weights import WeightsError

CLS, SEP = SPECIAL_TOKENS["cls_token_id"], SPECIAL_TOKENS["sep_token_id"]

pytestmark = pytest.mark.usefixtures("single_thread")


def small_config(arch: str = "svitt") -> ModelConfig:
    return ModelConfig(
        arch=arch,
        vision=tiny_vision(num_frames=2),
        text=tiny_text(),
        sparsity=SparsityConfig(cross_keep_rate=0.5, cross_drop_layers=(0,)),
        embed_dim=16,
        qa_decoder_depth=2,
    )  # fmt: skip


def answers(*token_lists: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] tokens [SEP], right-padded."""
    rows = [[CLS, *tokens, SEP] for tokens in token_lists]
    length = max(map(len, rows))
    ids = torch.tensor([row + [0] * (length - len(row)) for row in rows])
    return ids, (ids != 0).long()


def qa_batch(answer_ids: torch.Tensor, answer_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    batch = len(answer_ids)
    questions = torch.randint(4, VOCAB, (batch, 5), generator=generator)
    questions[:, 0] = CLS
    return {
        "video": torch.randn(batch, 2, 3, 16, 16, generator=generator),
        "question_ids": questions,
        "question_mask": torch.ones(batch, 5, dtype=torch.long),
        "answer_ids": answer_ids,
        "answer_mask": answer_mask,
    }


def test_training_step_gives_every_parameter_a_finite_gradient():
    for arch in ("svitt", "singularity"):
        torch.manual_seed(0)
        model = create_qa_model(small_config(arch))
        losses = model(qa_batch(*answers([7], [8, 9], [10])))
        losses["loss"].backward()
        for name, param in model.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), (arch, name)


def test_twin_weight_adds_the_twin_hinge_on_the_video_features():
    torch.manual_seed(0)
    batch = qa_batch(*answers([7], [8], [9], [10]))
    batch["video"][2:] = batch["video"][:2].flip(1)
    batch["twin_rows"] = torch.tensor([[0, 2], [1, 3]])
    plain = create_qa_model(small_config()).eval()  # no dropout: the two losses compare
    assert set(plain(batch)) == {"qa", "loss"}  # no twin weight: today's loss
    cfg = dataclasses.replace(small_config(), loss_weights={"twin": 10.0}, twin_margin=-1.0)
    model = create_qa_model(cfg).eval()
    model.load_state_dict(plain.state_dict())
    losses = model(batch)
    tokens, _, out = model.encoder.forward_video(batch["video"])
    feature = torch.nn.functional.normalize(model.encoder.video_feature(tokens, out), dim=-1)
    cosines = (feature[:2] * feature[2:]).sum(dim=-1)
    torch.testing.assert_close(losses["twin"], (cosines + 1.0).mean())
    torch.testing.assert_close(losses["loss"], plain(batch)["qa"] + 10.0 * losses["twin"])
    losses["twin"].backward()
    assert model.encoder.vision.patch_embed.proj.weight.grad.abs().sum() > 0
    del batch["twin_rows"]  # a batch without twins: nothing to hinge
    assert model(batch)["twin"].item() == 0.0


def test_decoder_starts_from_the_last_text_layers():
    torch.manual_seed(0)
    model = VideoQA(small_config())
    text = model.encoder.text
    for index, layer in enumerate(model.decoder_layers):  # text depth 3, decoder depth 2
        source = text.layers[1 + index]
        assert torch.equal(layer.intermediate.dense.weight, source.intermediate.dense.weight)
    # Text layer 2 is multimodal: its cross-attention is copied too.
    assert torch.equal(
        model.decoder_layers[1].crossattention.self.query.weight,
        text.layers[2].crossattention.self.query.weight,
    )
    assert torch.equal(
        model.decoder_embeddings.word_embeddings.weight, text.embeddings.word_embeddings.weight
    )
    assert (
        model.lm_head.predictions.decoder.weight is model.decoder_embeddings.word_embeddings.weight
    )


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = VideoQA(small_config()).double().eval()
    states = torch.randn(2, 5, 32, dtype=torch.float64)
    states_mask = torch.ones(2, 5, dtype=torch.long)
    ids, mask = answers([7, 8, 9], [7, 8, 9])
    ids[1, 3] = 11  # differs from row 0 only at position 3
    logits = model.decode(ids, mask, states[:1].expand(2, -1, -1), states_mask)
    torch.testing.assert_close(logits[0, :3], logits[1, :3], rtol=0, atol=1e-12)
    assert not torch.allclose(logits[0, 3], logits[1, 3])


def test_overfitted_answer_is_ranked_first():
    torch.manual_seed(0)
    model = VideoQA(small_config())
    # Answers 2 and 3 share their first token: only the full-sequence re-ranking separates them.
    answer_list, list_mask = answers([5], [6, 7], [6, 8], [9, 10], [12])
    targets = torch.tensor([3, 2, 0])
    batch = qa_batch(answer_list[targets], list_mask[targets])
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-3)
    for _ in range(40):
        optimizer.zero_grad()
        model(batch)["loss"].backward()
        optimizer.step()
    model.eval()
    ranked = model.rank_answers(
        batch["video"], batch["question_ids"], batch["question_mask"], answer_list, list_mask,
        top_k=3,
    )  # fmt: skip
    assert ranked.tolist() == targets.tolist()


def test_top_one_is_the_most_probable_first_token():
    torch.manual_seed(0)
    model = VideoQA(small_config()).eval()
    answer_list, list_mask = answers([5], [6, 7], [9])
    batch = qa_batch(*answers([5], [9]))
    ranked = model.rank_answers(
        batch["video"], batch["question_ids"], batch["question_mask"], answer_list, list_mask, 1
    )
    with torch.no_grad():
        states = model.encode_question(
            batch["video"], batch["question_ids"], batch["question_mask"]
        )
        start = torch.full((2, 1), CLS)
        first = model.decode(start, torch.ones_like(start), states, batch["question_mask"])[:, 0]
    assert ranked.tolist() == first[:, answer_list[:, 1]].argmax(dim=1).tolist()


def test_answers_of_several_clips_are_ensembled():
    torch.manual_seed(0)
    model = VideoQA(small_config()).eval()
    answer_list, list_mask = answers([5], [6, 7], [6, 8], [9], [12])
    batch = qa_batch(*answers([5], [9]))
    question = batch["question_ids"], batch["question_mask"]
    # Two copies of one clip: every score shifts alike (lse: + log 2), the answer stays.
    for rule in ("lse", "mean"):
        twice = torch.cat([batch["video"], batch["video"]], dim=1)
        assert torch.equal(
            model.rank_answers(twice, *question, answer_list, list_mask, 2, 2, rule),
            model.rank_answers(batch["video"], *question, answer_list, list_mask, 2),
        )


def test_clip_ensemble_picks_by_the_combined_scores(monkeypatch):
    """Hand-built per-clip log-probabilities of answers 0, 1, 2 (one question): answer 0 is
    excellent in clip A and poor in clip B, answer 1 decent in both. logsumexp (a soft max
    over clips) picks 0, the mean picks 1; first-token scores choose the candidates."""
    model = VideoQA(small_config()).eval()
    first = {0.0: [-0.1, -2.0, -1.0], 1.0: [-9.0, -2.0, -1.0]}
    full = {0.0: [-0.1, -2.0, -30.0], 1.0: [-9.0, -2.0, -30.0]}

    def clip_of(states):
        return states.flatten()[0].item()  # the clip's constant pixel value, passed through

    monkeypatch.setattr(model, "encode_question", lambda video, ids, mask: video.flatten(1))
    monkeypatch.setattr(
        model,
        "first_token_scores",
        lambda states, mask, ids: torch.tensor([first[clip_of(states)]]),
    )
    monkeypatch.setattr(
        model,
        "answer_scores",
        lambda states, mask, ids, answer_mask, candidates: torch.tensor(
            [full[clip_of(states)]]
        ).gather(1, candidates),
    )
    video = torch.cat([torch.zeros(1, 2, 3, 16, 16), torch.ones(1, 2, 3, 16, 16)], dim=1)
    question = torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)
    answer_list, list_mask = answers([5], [6], [7])

    def rank(top_k, rule):
        return model.rank_answers(video, *question, answer_list, list_mask, top_k, 2, rule).item()

    assert rank(3, "lse") == 0 and rank(3, "mean") == 1
    # The top 1 by the combined first-token scores: answer 0 by lse, answer 2 by the mean;
    # the top 2 (0, 2 by lse; 2, 1 by the mean) re-ranked by the combined full scores.
    assert rank(1, "lse") == 0 and rank(1, "mean") == 2
    assert rank(2, "lse") == 0 and rank(2, "mean") == 1


def test_load_pretrained_video_text_checkpoint():
    torch.manual_seed(0)
    pretrained = create_model(small_config())
    model = VideoQA(small_config())
    model.load_pretrained(pretrained.state_dict())
    assert torch.equal(model.encoder.vision.blocks[0].mlp.fc1.weight,
                       pretrained.vision.blocks[0].mlp.fc1.weight)  # fmt: skip
    assert torch.equal(model.decoder_layers[0].output.dense.weight,
                       pretrained.text.layers[1].output.dense.weight)  # fmt: skip
    assert torch.equal(model.lm_head.predictions.transform.dense.weight,
                       pretrained.text.mlm_head.predictions.transform.dense.weight)  # fmt: skip
    with pytest.raises(WeightsError, match="lacks"):
        model.load_pretrained({"text_proj.weight": torch.zeros(16, 32)})


def test_bert_checkpoint_initialises_decoder_and_lm_head(tmp_path):
    torch.manual_seed(0)
    bert = BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=16,
        )
    )  # fmt: skip
    bert.save_pretrained(tmp_path)
    cfg = small_config()
    model = create_qa_model(
        dataclasses.replace(cfg, weights=dataclasses.replace(cfg.weights, text=str(tmp_path)))
    )
    assert torch.equal(model.decoder_layers[1].attention.self.key.weight,
                       bert.bert.encoder.layer[2].attention.self.key.weight)  # fmt: skip
    assert torch.equal(model.lm_head.predictions.transform.dense.weight,
                       bert.cls.predictions.transform.dense.weight)  # fmt: skip


def test_qa_needs_a_multimodal_encoder():
    cfg = small_config("frozen")
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, abs_pos_emb=True))
    with pytest.raises(ConfigError, match=r"model\.arch: got 'frozen'"):
        VideoQA(cfg)


def test_answers_must_start_with_cls():
    model = VideoQA(small_config())
    batch = qa_batch(*answers([5], [6]))
    batch["answer_ids"][:, 0] = 7
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        model(batch)


def test_decoder_layer_norms_follow_the_text_eps():
    cfg = small_config()
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, layer_norm_eps=1e-5))
    model = create_qa_model(cfg)
    decoder = [model.decoder_embeddings, model.decoder_layers, model.lm_head]
    norms = [m for part in decoder for m in part.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(norm.eps == 1e-5 for norm in norms)
