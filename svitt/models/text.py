"""BERT text encoder `f_t` and multimodal encoder `f_m` with cross-modal token pruning.

One stack of `TextConfig.depth` BERT layers (transformers' `BertLayer`, composed, not forked):
the first `depth - cross_depth` are text-only (`f_t`), the last `cross_depth` add
cross-attention to the video tokens (`f_m`). Parameter names follow the `BertModel` checkpoint
layout (`embeddings.*`, `layers.{i}.*` for `encoder.layer.{i}.*`, `mlm_head.*` for
`cls.*`), so a bert-base-uncased directory loads with a prefix rename only.

Cross-modal node sparsity (supplement A.1): after the cross-attention of each multimodal layer
in `SparsityConfig.cross_drop_layers`, the `ceil(q_m * n)` video tokens with the highest
text-[CLS] -> video attention (mean over heads) are kept, the video [CLS] always, and the later
multimodal layers attend to those only. The authors' release configures this and never applies
it; here it is applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (
    BertCrossAttention,
    BertEmbeddings,
    BertLayer,
    BertOnlyMLMHead,
)

from svitt.config import ConfigError, SparsityConfig, TextConfig
from svitt.sparsity import keep_count

IGNORE_INDEX = -100  # label of tokens that carry no MLM / answer loss


def bert_config(cfg: TextConfig, *, cross_attention: bool = False) -> BertConfig:
    """The transformers config of our layers (SDPA attention).

    `cross_attention` needs `is_decoder=True` in transformers, which also marks self-attention
    causal; encoder layers undo that after construction, see `bert_layer`.
    """
    config = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.mlp_dim,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=cfg.pad_token_id,
        is_decoder=cross_attention,
        add_cross_attention=cross_attention,
    )
    config._attn_implementation = "sdpa"
    return config


def init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation (normal, std 0.02), for layers trained from scratch."""
    std = BertConfig().initializer_range
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        nn.init.zeros_(module.weight[module.padding_idx])
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def bert_layer(config: BertConfig, *, causal: bool, video_dim: int | None = None) -> BertLayer:
    layer = BertLayer(config)
    layer.attention.self.is_causal = causal
    if video_dim is not None and video_dim != config.hidden_size:
        # Keys/values read the video tokens at their own width (ALBEF's `encoder_width`).
        layer.crossattention.self.key = nn.Linear(video_dim, config.hidden_size)
        layer.crossattention.self.value = nn.Linear(video_dim, config.hidden_size)
    return layer


def tie_mlm_head(head: BertOnlyMLMHead, embeddings: BertEmbeddings) -> None:
    """Output projection = word embeddings, output bias = the head's own bias (BERT's tying)."""
    head.predictions.decoder.weight = embeddings.word_embeddings.weight
    head.predictions.decoder.bias = head.predictions.bias


def additive_mask(mask: Tensor, dtype: torch.dtype, causal: bool = False) -> Tensor:
    """[B, L] 1/0 key mask -> [B, 1, L|1, L] additive mask (0 keep, dtype min drop)."""
    keep = mask[:, None, None, :].bool()
    if causal:
        length = mask.shape[1]
        keep = keep & torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(
        ~keep, torch.finfo(dtype).min
    )


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """tokens [B, n, D], index [B, k] -> [B, k, D]."""
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def text_cls_attention(attention: BertCrossAttention, text: Tensor, video: Tensor) -> Tensor:
    """[B, n] attention of the text [CLS] query on the non-[CLS] video tokens, mean over heads.

    The same softmax as inside `attention`, recomputed for one query row without attention
    dropout, so the tokens kept in training do not depend on dropout noise.
    """
    query = rearrange(
        attention.query(text[:, :1]), "b q (h d) -> b h q d", h=attention.num_attention_heads
    )
    key = rearrange(attention.key(video), "b n (h d) -> b h d n", h=attention.num_attention_heads)
    weights = (query @ key * attention.scaling).softmax(dim=-1)  # [B, H, 1, 1 + n]
    return weights[:, :, 0, 1:].mean(dim=1)


@dataclass
class FusionOutput:
    """Output of the multimodal encoder `f_m`."""

    hidden: Tensor  # [B, L, Dt] text states after the last multimodal layer
    kept: list[Tensor]  # per cross-modal drop: [B, n_kept] raster positions of the kept tokens
    video_tokens_seen: list[int]  # non-[CLS] video tokens each multimodal layer attended to


class TextEncoder(nn.Module):
    """BERT: text-only layers `f_t`, then `cross_depth` multimodal layers `f_m`, MLM head.

    `multimodal=False` builds the text tower alone (the Frozen-in-Time variant: no multimodal
    layers); `mlm_head=False` leaves out the MLM head (models that do not pre-train).
    """

    def __init__(
        self,
        cfg: TextConfig,
        sparsity: SparsityConfig,
        video_dim: int,
        multimodal: bool = True,
        mlm_head: bool = True,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.sparsity = sparsity
        self.num_text_layers = cfg.depth - cfg.cross_depth
        self.num_cross_layers = cfg.cross_depth if multimodal else 0
        self.prune_layers = (
            set(sparsity.cross_drop_layers) if sparsity.cross_keep_rate < 1 else set()
        )
        for index in self.prune_layers:
            if self.num_cross_layers and not 0 <= index < self.num_cross_layers:
                raise ConfigError(
                    f"model.sparsity.cross_drop_layers: got {index}; allowed: multimodal layer "
                    f"indices in [0, {self.num_cross_layers - 1}] (text.cross_depth="
                    f"{cfg.cross_depth})"
                )
        self.embeddings = BertEmbeddings(bert_config(cfg))
        text_config = bert_config(cfg)
        layers = [bert_layer(text_config, causal=False) for _ in range(self.num_text_layers)]
        cross_config = bert_config(cfg, cross_attention=True)
        for _ in range(self.num_cross_layers):
            layers.append(bert_layer(cross_config, causal=False, video_dim=video_dim))
        self.layers = nn.ModuleList(layers)
        self.mlm_head = BertOnlyMLMHead(bert_config(cfg)) if mlm_head else None
        self.apply(init_bert_weights)
        if self.mlm_head is not None:
            tie_mlm_head(self.mlm_head, self.embeddings)

    def forward_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        """`f_t`: ids, mask [B, L] -> hidden states [B, L, Dt] of the text-only layers."""
        hidden = self.embeddings(input_ids=ids)
        self_mask = additive_mask(mask, hidden.dtype)
        for layer in self.layers[: self.num_text_layers]:
            hidden = layer(hidden, self_mask)
        return hidden

    def forward_multimodal(
        self,
        hidden: Tensor,
        mask: Tensor,
        video: Tensor,
        positions: Tensor | None = None,
    ) -> FusionOutput:
        """`f_m`: text states [B, L, Dt] attend to video tokens [B, 1 + n, Dv] ([CLS] first).

        `positions` [B, n] (original raster positions of the video tokens) only labels the
        returned kept tokens; without it they are indices into `video[:, 1:]`.
        """
        if self.num_cross_layers == 0:
            raise RuntimeError("this text encoder was built without multimodal layers")
        if positions is None:
            positions = torch.arange(video.shape[1] - 1, device=video.device)
            positions = positions.expand(video.shape[0], -1)
        self_mask = additive_mask(mask, hidden.dtype)
        kept, seen = [], []
        for index, layer in enumerate(self.layers[self.num_text_layers :]):
            seen.append(video.shape[1] - 1)
            hidden = layer.attention(hidden, self_mask)[0]
            scores = None
            if index in self.prune_layers:
                scores = text_cls_attention(layer.crossattention.self, hidden, video)
            hidden = layer.crossattention(hidden, None, video, None)[0]
            hidden = layer.feed_forward_chunk(hidden)
            if scores is not None:
                video, positions = self._prune(video, positions, scores)
                kept.append(positions)
        return FusionOutput(hidden=hidden, kept=kept, video_tokens_seen=seen)

    def _prune(self, video: Tensor, positions: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Keep the video [CLS] and the `ceil(q_m * n)` best-scored non-[CLS] tokens."""
        count = keep_count(scores.shape[1], self.sparsity.cross_keep_rate)
        # Sorted, so kept tokens stay in sequence order (cross-attention ignores order anyway).
        index = scores.topk(count, dim=1).indices.sort(dim=1).values
        video = torch.cat([video[:, :1], gather_tokens(video[:, 1:], index)], dim=1)
        return video, positions.gather(1, index)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """Multimodal states [..., Dt] -> vocabulary logits [..., V]."""
        if self.mlm_head is None:
            raise RuntimeError("this text encoder was built without an MLM head")
        return self.mlm_head(hidden)


def _rename_bert_key(key: str, depth: int) -> str | None:
    """HF BERT checkpoint key -> our key, or None for weights we do not use."""
    key = key.removeprefix("bert.")
    # The original bert-base-uncased files still name LayerNorm parameters gamma/beta.
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias"
    )
    if key.startswith("embeddings."):
        return key
    if key.startswith("encoder.layer."):
        index, rest = key.removeprefix("encoder.layer.").split(".", 1)
        return f"layers.{index}.{rest}" if int(index) < depth else None
    if key.startswith("cls.predictions."):
        return "mlm_head." + key.removeprefix("cls.")
    return None  # pooler, next-sentence head


def bert_state_dict(path: str | Path, cfg: TextConfig) -> dict[str, Tensor]:
    """Weights of a HF BERT directory (`save_pretrained` / bert-base-uncased layout) under our
    names (`embeddings.*`, `layers.{i}.*` for i < cfg.depth, `mlm_head.*`).

    Fails naming the path when it holds no checkpoint, and naming the config field when the
    checkpoint's shape differs from `cfg`. A longer position table is cut to `max_positions`.
    """
    path = Path(path)
    files = sorted(path.glob("model*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not (path / "config.json").is_file() or not files:
        raise FileNotFoundError(
            f"model.weights.text: no BERT checkpoint at {path} (expected a HF directory with "
            "config.json and model.safetensors or pytorch_model.bin, bert-base-uncased layout)"
        )
    config = BertConfig.from_dict(json.loads((path / "config.json").read_text()))
    for field, theirs in (
        ("dim", config.hidden_size),
        ("heads", config.num_attention_heads),
        ("mlp_dim", config.intermediate_size),
        ("vocab_size", config.vocab_size),
    ):
        if getattr(cfg, field) != theirs:
            raise ConfigError(
                f"model.text.{field}: got {getattr(cfg, field)}; the BERT checkpoint at {path} "
                f"has {theirs}"
            )
    if config.num_hidden_layers < cfg.depth:
        raise ConfigError(
            f"model.text.depth: got {cfg.depth}; the BERT checkpoint at {path} has only "
            f"{config.num_hidden_layers} layers"
        )
    state: dict[str, Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            state.update(load_safetensors(file))
        else:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
    renamed = {}
    for key, value in state.items():
        name = _rename_bert_key(key, cfg.depth)
        if name is not None:
            renamed[name] = value
    positions = "embeddings.position_embeddings.weight"
    renamed[positions] = renamed[positions][: cfg.max_positions]
    return renamed


def load_text_weights(encoder: TextEncoder, path: str | Path) -> list[str]:
    """Load a HF BERT directory into `encoder`; returns our parameter names left untouched.

    Cross-attention (absent from BERT checkpoints) keeps its initialisation, as in ALBEF and
    Singularity; so does the MLM head when the checkpoint has none (a bare `BertModel`).
    """
    ours = encoder.state_dict()
    state = {
        key: value
        for key, value in bert_state_dict(path, encoder.cfg).items()
        # the output projection is tied to the word embeddings and predictions.bias
        if key in ours and not key.startswith("mlm_head.predictions.decoder.")
    }
    missing, _ = encoder.load_state_dict(state, strict=False)
    return sorted(k for k in missing if not k.startswith("mlm_head.predictions.decoder."))
