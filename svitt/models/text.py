"""BERT text encoder `f_t` and multimodal encoder `f_m` with cross-modal token pruning.

One stack of `TextConfig.depth` BERT layers (`svitt.models.bert.BertLayer`, a compact BERT
that does not import transformers): the first `depth - cross_depth` are text-only (`f_t`), the
last `cross_depth` add cross-attention to the video tokens (`f_m`). Parameter names follow the
`BertModel` checkpoint layout (`embeddings.*`, `layers.{i}.*` for `encoder.layer.{i}.*`,
`mlm_head.*` for `cls.*`), so a bert-base-uncased directory loads with a prefix rename only.

Cross-modal node sparsity (supplement A.1): after the cross-attention of each multimodal layer
in `SparsityConfig.cross_drop_layers`, the `ceil(q_m * n)` video tokens with the highest
text-[CLS] -> video attention (mean over heads) are kept, the video [CLS] always, and the later
multimodal layers attend to those only. The authors' release configures this and never applies
it; here it is applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from svitt.config import ConfigError, SparsityConfig, TextConfig
from svitt.errors import MissingFileError
from svitt.files import torch_load
from svitt.models.bert import (
    Attention,
    BertEmbeddings,
    BertLayer,
    BertOnlyMLMHead,
    init_bert_weights,
)
from svitt.models.pruning import prune_tokens

IGNORE_INDEX = -100  # label of tokens that carry no MLM / answer loss


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, L] 1/0 key mask -> [B, 1, 1, L] additive mask (0 keep, dtype min drop); causal
    layers add their own future mask (`svitt.models.bert.Attention`)."""
    keep = mask[:, None, None, :].bool()
    return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(
        ~keep, torch.finfo(dtype).min
    )


def text_cls_attention(attention: Attention, text: Tensor, video: Tensor) -> Tensor:
    """[B, n] attention of the text [CLS] query on the non-[CLS] video tokens, mean over heads.

    The same softmax as inside `attention`, recomputed for one query row without attention
    dropout, so the tokens kept in training do not depend on dropout noise.
    """
    query = rearrange(attention.query(text[:, :1]), "b q (h d) -> b h q d", h=attention.heads)
    key = rearrange(attention.key(video), "b n (h d) -> b h d n", h=attention.heads)
    weights = (query @ key * attention.scale).softmax(dim=-1)  # [B, H, 1, 1 + n]
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
        eps = cfg.layer_norm_eps
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(
            BertLayer(
                cfg.dim, cfg.heads, cfg.mlp_dim, video_dim=video_dim if cross else None, eps=eps
            )
            for cross in [False] * self.num_text_layers + [True] * self.num_cross_layers
        )
        self.mlm_head = BertOnlyMLMHead(cfg.dim, cfg.vocab_size, eps) if mlm_head else None
        self.apply(partial(init_bert_weights, std=cfg.init_std))
        if self.mlm_head is not None:
            self.mlm_head.tie(self.embeddings)

    def forward_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        """`f_t`: ids, mask [B, L] -> hidden states [B, L, Dt] of the text-only layers."""
        hidden = self.embeddings(ids)
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
            hidden = layer.attention(hidden, self_mask)
            scores = None
            if index in self.prune_layers:
                scores = text_cls_attention(layer.crossattention.self, hidden, video)
            hidden = layer.crossattention(hidden, context=video)
            hidden = layer.feed_forward(hidden)
            if scores is not None:
                video, positions = prune_tokens(
                    video, positions, scores, self.sparsity.cross_keep_rate
                )
                kept.append(positions)
        return FusionOutput(hidden=hidden, kept=kept, video_tokens_seen=seen)

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
        raise MissingFileError(
            f"model.weights.text: no BERT checkpoint at {path} (expected a HF directory with "
            "config.json and model.safetensors or pytorch_model.bin, bert-base-uncased layout)"
        )
    config = json.loads((path / "config.json").read_text())
    for field, theirs in (
        ("dim", config["hidden_size"]),
        ("heads", config["num_attention_heads"]),
        ("mlp_dim", config["intermediate_size"]),
        ("vocab_size", config["vocab_size"]),
        ("layer_norm_eps", config.get("layer_norm_eps", 1e-12)),  # BERT's, when not written
    ):
        if getattr(cfg, field) != theirs:
            raise ConfigError(
                f"model.text.{field}: got {getattr(cfg, field)}; the BERT checkpoint at {path} "
                f"has {theirs} (config.json); set model.text.{field}: {theirs}"
            )
    if config["num_hidden_layers"] < cfg.depth:
        raise ConfigError(
            f"model.text.depth: got {cfg.depth}; the BERT checkpoint at {path} has only "
            f"{config['num_hidden_layers']} layers"
        )
    state: dict[str, Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            state.update(load_safetensors(file))
        else:
            state.update(torch_load(file, "BERT checkpoint"))
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
