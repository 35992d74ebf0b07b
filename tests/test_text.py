"""Text / multimodal encoder: BERT checkpoint loading, cross-modal token pruning, and our
compact BERT modules against transformers'."""

from __future__ import annotations

import pytest
import torch
from conftest import SPECIAL_TOKENS, VOCAB, tiny_text
from torch import nn
from transformers import BertConfig, BertForPreTraining, BertModel
from transformers.models.bert import modeling_bert as hf

from svitt.config import ConfigError, SparsityConfig, TextConfig
from svitt.models.bert import BertEmbeddings, BertLayer, BertOnlyMLMHead
from svitt.models.text import TextEncoder, additive_mask, load_text_weights

pytestmark = pytest.mark.usefixtures("single_thread")


def text_config(depth: int = 3, cross_depth: int = 1, dim: int = 32) -> TextConfig:
    return tiny_text(depth=depth, cross_depth=cross_depth, dim=dim, mlp_dim=2 * dim)


def save_tiny_bert(path, layers: int = 3, positions: int = 24) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=positions, pad_token_id=0,
    )  # fmt: skip
    model = BertModel(config).eval()
    model.save_pretrained(path)
    return model


def text_batch(batch: int = 2, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(4, VOCAB, (batch, length))
    ids[:, 0] = SPECIAL_TOKENS["cls_token_id"]
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = SPECIAL_TOKENS["pad_token_id"]
    return ids, mask


def test_saved_bert_directory_is_reproduced(tmp_path):
    bert = save_tiny_bert(tmp_path, layers=3).double()
    # 3 BERT layers: our first two are text-only, the third is multimodal.
    encoder = TextEncoder(text_config(depth=3, cross_depth=1), SparsityConfig(), video_dim=24)
    missing = load_text_weights(encoder, tmp_path)
    assert missing and all(k.startswith(("layers.2.crossattention.", "mlm_head.")) for k in missing)
    encoder.double().eval()
    ids, mask = text_batch()
    reference = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    ours = encoder.forward_text(ids, mask)
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], reference.hidden_states[2][keep], rtol=0, atol=1e-12)
    # The multimodal layer's self-attention and FFN come from BERT layer 2 too.
    torch.testing.assert_close(
        encoder.layers[2].output.dense.weight, bert.encoder.layer[2].output.dense.weight
    )


def test_full_text_tower_matches_bert(tmp_path):
    bert = save_tiny_bert(tmp_path, layers=2).double()
    encoder = TextEncoder(
        text_config(depth=2, cross_depth=0), SparsityConfig(), video_dim=32, mlm_head=False
    )
    assert load_text_weights(encoder, tmp_path) == []
    encoder.double().eval()
    ids, mask = text_batch()
    reference = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(encoder.forward_text(ids, mask)[keep], reference[keep])


def test_missing_checkpoint_names_the_path(tmp_path):
    encoder = TextEncoder(text_config(), SparsityConfig(), video_dim=32)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_text_weights(encoder, tmp_path / "nope")


def test_checkpoint_shape_mismatch_names_the_field(tmp_path):
    save_tiny_bert(tmp_path)
    encoder = TextEncoder(text_config(dim=48), SparsityConfig(), video_dim=48)
    with pytest.raises(ConfigError, match=r"model\.text\.dim: got 48.*has 32"):
        load_text_weights(encoder, tmp_path)


@pytest.mark.parametrize(
    ("keep_rate", "tokens", "kept_count"), [(0.1, 40, 4), (0.3, 10, 3), (0.5, 7, 4)]
)  # ceil(q * n), exact despite 0.3 * 10 = 3.0000000000000004
def test_cross_modal_pruning_shrinks_later_layers(keep_rate, tokens, kept_count):
    torch.manual_seed(0)
    sparsity = SparsityConfig(cross_keep_rate=keep_rate, cross_drop_layers=(1,))
    encoder = TextEncoder(text_config(depth=4, cross_depth=3), sparsity, video_dim=24).eval()
    seen_by_layer = []
    for layer in encoder.layers[1:]:
        layer.crossattention.register_forward_pre_hook(
            lambda module, args, kwargs: seen_by_layer.append(kwargs["context"].shape[1]),
            with_kwargs=True,
        )
    ids, mask = text_batch()
    hidden = encoder.forward_text(ids, mask)
    video = torch.randn(2, 1 + tokens, 24)
    positions = torch.randperm(100)[:tokens].expand(2, -1)  # arbitrary raster positions
    out = encoder.forward_multimodal(hidden, mask, video, positions)
    assert out.video_tokens_seen == [tokens, tokens, kept_count]
    assert seen_by_layer == [1 + tokens, 1 + tokens, 1 + kept_count]  # [CLS] kept as well
    assert len(out.kept) == 1 and out.kept[0].shape == (2, kept_count)
    for row in range(2):
        assert set(out.kept[0][row].tolist()) <= set(positions[row].tolist())


def test_pruning_keeps_tokens_with_most_text_cls_attention():
    torch.manual_seed(1)
    sparsity = SparsityConfig(cross_keep_rate=0.25, cross_drop_layers=(0,))
    encoder = TextEncoder(text_config(depth=3, cross_depth=2), sparsity, video_dim=32).eval()
    captured = []
    encoder.layers[1].crossattention.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append(args[0]), with_kwargs=True
    )
    ids, mask = text_batch()
    video = torch.randn(2, 1 + 12, 32)
    out = encoder.forward_multimodal(encoder.forward_text(ids, mask), mask, video)
    # transformers' eager attention, same weights, returns its softmax weights: the reference.
    reference = hf.BertAttention(hf_config(is_decoder=True), is_cross_attention=True).eval()
    reference.load_state_dict(encoder.layers[1].crossattention.state_dict())
    weights = reference(captured[0], encoder_hidden_states=video)[1]
    attention = weights[:, :, 0, 1:].mean(dim=1)  # text [CLS] -> video, mean over heads
    expected = attention.topk(3, dim=1).indices.sort(dim=1).values
    assert torch.equal(out.kept[0], expected)


def test_no_pruning_at_keep_rate_one():
    encoder = TextEncoder(text_config(depth=3, cross_depth=2), SparsityConfig(), video_dim=32)
    ids, mask = text_batch()
    out = encoder.forward_multimodal(encoder.forward_text(ids, mask), mask, torch.randn(2, 9, 32))
    assert out.video_tokens_seen == [8, 8] and out.kept == []


def test_cross_drop_layer_out_of_range_is_rejected():
    sparsity = SparsityConfig(cross_keep_rate=0.5, cross_drop_layers=(2,))
    with pytest.raises(ConfigError, match=r"cross_drop_layers: got 2.*\[0, 1\]"):
        TextEncoder(text_config(depth=3, cross_depth=2), sparsity, video_dim=32)


def test_legacy_bert_base_uncased_layout_loads(tmp_path):
    """The hub's original pytorch_model.bin: `bert.` prefix, LayerNorm gamma/beta, MLM head."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=24,
    )  # fmt: skip
    bert = BertForPreTraining(config).eval()
    torch.nn.init.normal_(bert.cls.predictions.bias)  # zeros at init: make the check count
    state = {
        key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): value
        for key, value in bert.state_dict().items()
    }
    torch.save(state, tmp_path / "pytorch_model.bin")
    config.to_json_file(tmp_path / "config.json")
    encoder = TextEncoder(text_config(depth=2, cross_depth=0), SparsityConfig(), video_dim=32)
    assert load_text_weights(encoder, tmp_path) == []
    torch.testing.assert_close(
        encoder.embeddings.LayerNorm.weight, bert.bert.embeddings.LayerNorm.weight
    )
    torch.testing.assert_close(
        encoder.mlm_head.predictions.transform.LayerNorm.bias,
        bert.cls.predictions.transform.LayerNorm.bias,
    )
    torch.testing.assert_close(encoder.mlm_head.predictions.bias, bert.cls.predictions.bias)
    # Positions beyond max_positions (16) are cut from the 24 of the checkpoint.
    torch.testing.assert_close(
        encoder.embeddings.position_embeddings.weight,
        bert.bert.embeddings.position_embeddings.weight[:16],
    )


# Our compact BERT (svitt.models.bert) against transformers' modules, same random weights.


def hf_config(**kwargs) -> BertConfig:
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=16, pad_token_id=0, **kwargs,
    )  # fmt: skip
    config._attn_implementation = "eager"  # the plain reference math
    return config


def randomise(module: nn.Module) -> nn.Module:
    """Random values everywhere (biases, LayerNorm too), so every parameter's use is checked."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(std=0.3)
    return module.eval()


def copy_into(ours: nn.Module, theirs: nn.Module, rename=lambda key: key) -> nn.Module:
    """Load `theirs` into `ours` strictly: the state-dict names must match one to one."""
    ours.load_state_dict({rename(k): v for k, v in theirs.state_dict().items()})
    return ours.eval()


def causal(mask: torch.Tensor) -> torch.Tensor:
    """The [B, 1, L, L] padding + causal mask that transformers' BertModel builds for a decoder."""
    pad = additive_mask(mask, torch.float32)
    future = torch.ones(mask.shape[1], mask.shape[1], dtype=torch.bool).triu(1)
    return torch.where(future, torch.finfo(torch.float32).min, pad)


def test_text_layers_match_transformers():
    bert = randomise(BertModel(hf_config(), add_pooling_layer=False))
    ours = nn.ModuleDict(
        {
            "embeddings": BertEmbeddings(text_config()),
            "layers": nn.ModuleList(BertLayer(32, 4, 64) for _ in range(2)),
        }
    )
    copy_into(ours, bert, lambda key: key.replace("encoder.layer.", "layers."))
    ids, mask = text_batch()
    hidden = ours.embeddings(ids)
    for layer in ours.layers:
        hidden = layer(hidden, additive_mask(mask, hidden.dtype))
    reference = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(hidden, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("decoder", [False, True], ids=["multimodal", "causal-decoder"])
def test_cross_attention_layers_match_transformers(decoder):
    """A multimodal layer of f_m (video 24 wide, bidirectional) and a QA decoder layer (causal
    self-attention, cross-attention to padded question-video states of the text width)."""
    width = 32 if decoder else 24
    theirs = hf.BertLayer(hf_config(is_decoder=True, add_cross_attention=True))
    if not decoder:  # ALBEF's `encoder_width`: keys/values read the video tokens at 24
        theirs.crossattention.self.key = nn.Linear(width, 32)
        theirs.crossattention.self.value = nn.Linear(width, 32)
    randomise(theirs)
    ours = copy_into(BertLayer(32, 4, 64, video_dim=width, causal=decoder), theirs)
    ids, mask = text_batch()
    hidden = torch.randn(*ids.shape, 32)
    video = torch.randn(2, 9, width)
    video_mask = torch.ones(2, 9, dtype=torch.long)
    video_mask[0, 6:] = 0
    cross_mask = additive_mask(video_mask, torch.float32) if decoder else None
    reference = theirs(
        hidden,
        causal(mask) if decoder else additive_mask(mask, torch.float32),
        encoder_hidden_states=video,
        encoder_attention_mask=cross_mask,
    )
    # Ours gets the padding mask only: a causal layer adds the future mask itself.
    out = ours(hidden, additive_mask(mask, torch.float32), video, cross_mask)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


def test_mlm_head_matches_transformers():
    theirs = hf.BertOnlyMLMHead(hf_config())
    theirs.predictions.decoder.bias = theirs.predictions.bias  # BERT's tying, as in ours
    randomise(theirs)
    ours = copy_into(BertOnlyMLMHead(32, VOCAB), theirs)
    hidden = torch.randn(2, 7, 32)
    torch.testing.assert_close(ours(hidden), theirs(hidden), rtol=0, atol=1e-5)


def test_causal_layer_ignores_future_tokens():
    torch.manual_seed(0)
    layer = BertLayer(32, 4, 64, causal=True).eval()
    hidden = torch.randn(1, 6, 32)
    changed = hidden.clone()
    changed[:, 4:] = torch.randn(1, 2, 32)
    torch.testing.assert_close(layer(hidden)[:, :4], layer(changed)[:, :4])
    assert not torch.allclose(layer(hidden)[:, 4:], layer(changed)[:, 4:])
