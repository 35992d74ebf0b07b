"""Compact BERT modules (Devlin et al., 2019) under the parameter names of HF's `BertModel`.

Why not transformers' own classes: importing `transformers.models.bert.modeling_bert` pulls in
torch._dynamo and much of transformers, seconds per process, which every short `svitt` CLI job
paid. These modules compute the same functions (post-LayerNorm residual sublayers, exact GELU,
LayerNorm eps 1e-12 unless given, hidden and attention-probability dropout 0.1; checked against
transformers in tests/test_text.py) and keep its state-dict names (`attention.self.query`,
`attention.output.LayerNorm`, `intermediate.dense`, `predictions.transform.dense`, ...), so BERT
checkpoints load by a prefix rename and checkpoints of the transformers-based modules unchanged.

Attention masks are additive, broadcastable to [B, heads, L_query, L_key] (0 keep, dtype min
drop), as `svitt.models.text.additive_mask` builds them.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from svitt.config import TextConfig

LAYER_NORM_EPS = 1e-12
DROPOUT = 0.1  # BERT's hidden_dropout_prob and attention_probs_dropout_prob
INITIALIZER_RANGE = 0.02
TYPE_VOCAB_SIZE = 2  # rows of the checkpoints' token-type table; only type 0 is used


def init_bert_weights(module: nn.Module, std: float = INITIALIZER_RANGE) -> None:
    """BERT's initialisation (normal, std 0.02 unless given), for layers trained from scratch.

    `apply` it to a model before tying an MLM head (`BertOnlyMLMHead.tie`): initialising the
    tied projection as a Linear would overwrite the zero padding row of the word embeddings.
    """
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        nn.init.zeros_(module.weight[module.padding_idx])
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BertEmbeddings(nn.Module):
    """Word + token-type + position embeddings, LayerNorm, dropout.

    Every token has type 0 (one segment per sequence), so the type embedding is a learned
    constant; the table keeps the checkpoints' two rows so that BERT state dicts load. Positions
    are `0 .. L - 1`, computed, not stored: the transformers module's `position_ids` and
    `token_type_ids` buffers are not persistent, so checkpoints never held them.
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.dim)
        self.token_type_embeddings = nn.Embedding(TYPE_VOCAB_SIZE, cfg.dim)
        self.LayerNorm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, ids: Tensor) -> Tensor:
        """Token ids [B, L] -> embeddings [B, L, D]."""
        x = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings.weight[: ids.shape[1]]
        return self.dropout(self.LayerNorm(x))


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (`BertSelfAttention` names: query, key, value).

    Keys and values are read from `context` (default: the query sequence itself) at width
    `context_dim`, so cross-attention reads video tokens at their own width (ALBEF's
    `encoder_width`) without an extra projection layer. `causal` also masks each query's
    future keys, whatever `mask` the caller passes.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        context_dim: int | None = None,
        causal: bool = False,
    ) -> None:
        super().__init__()
        context_dim = dim if context_dim is None else context_dim
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.causal = causal
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(context_dim, dim)
        self.value = nn.Linear(context_dim, dim)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, context: Tensor | None = None
    ) -> Tensor:
        """x [B, L, D], context [B, N, Dc] (default x), additive mask -> [B, L, D]."""
        context = x if context is None else context
        q = rearrange(self.query(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = (
            rearrange(proj(context), "b n (h d) -> b h n d", h=self.heads)
            for proj in (self.key, self.value)
        )
        if self.causal:
            length = x.shape[1]
            future = torch.full(
                (length, length), torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device
            ).triu(1)
            mask = future if mask is None else torch.minimum(mask, future)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=DROPOUT if self.training else 0.0,
            scale=self.scale,
        )
        return rearrange(out, "b h n d -> b n (h d)")


class ResidualNorm(nn.Module):
    """BERT's post-norm sublayer output, `LayerNorm(dropout(dense(x)) + residual)`
    (`BertSelfOutput` after attention, `BertOutput` after the feed-forward)."""

    def __init__(self, dim_in: int, dim: int, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.dense = nn.Linear(dim_in, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class AttentionBlock(nn.Module):
    """`attention` and its residual output (`BertAttention` names: `self.*`, `output.*`)."""

    def __init__(self, attention: Attention, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        dim = attention.query.out_features
        self.self = attention
        self.output = ResidualNorm(dim, dim, eps)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, context: Tensor | None = None
    ) -> Tensor:
        return self.output(self.self(x, mask, context), x)


class BertLayer(nn.Module):
    """Self-attention, optional cross-attention, feed-forward (`BertLayer` names).

    `video_dim` adds cross-attention to tokens of that width (the multimodal layers of `f_m`
    read video tokens; the QA decoder reads question-video states, `video_dim = dim`);
    `causal` makes the self-attention causal (the QA decoder).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        *,
        video_dim: int | None = None,
        causal: bool = False,
        eps: float = LAYER_NORM_EPS,
    ) -> None:
        super().__init__()
        self.attention = AttentionBlock(Attention(dim, heads, causal=causal), eps)
        self.crossattention = (
            None
            if video_dim is None
            else AttentionBlock(Attention(dim, heads, context_dim=video_dim), eps)
        )
        self.intermediate = nn.Sequential(OrderedDict(dense=nn.Linear(dim, mlp_dim), act=nn.GELU()))
        self.output = ResidualNorm(mlp_dim, dim, eps)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        video: Tensor | None = None,
        video_mask: Tensor | None = None,
    ) -> Tensor:
        """x [B, L, D] (self-attention `mask`), video [B, N, Dv] (`video_mask`) -> [B, L, D]."""
        x = self.attention(x, mask)
        if video is not None:
            x = self.crossattention(x, video_mask, video)
        return self.feed_forward(x)

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.output(self.intermediate(x), x)


class LMPredictionHead(nn.Module):
    """Dense, GELU, LayerNorm, then the vocabulary projection `decoder`, whose bias is also
    registered as `bias` (the checkpoints' name of BERT's output-only bias)."""

    def __init__(self, dim: int, vocab_size: int, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.transform = nn.Sequential(
            OrderedDict(
                dense=nn.Linear(dim, dim),
                act=nn.GELU(),
                LayerNorm=nn.LayerNorm(dim, eps=eps),
            )
        )
        self.decoder = nn.Linear(dim, vocab_size)
        self.bias = self.decoder.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    """MLM / LM head, `cls.predictions.*` in BERT checkpoints: states [..., D] -> logits [..., V].

    The projection is BERT's tied one: call `tie` after initialisation.
    """

    def __init__(self, dim: int, vocab_size: int, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.predictions = LMPredictionHead(dim, vocab_size, eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictions(x)

    def tie(self, embeddings: BertEmbeddings) -> None:
        """Output projection = the word embeddings (BERT's tying)."""
        self.predictions.decoder.weight = embeddings.word_embeddings.weight
