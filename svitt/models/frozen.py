"""Frozen-in-Time two-tower variant (supplement B.2, Table A6).

A ViT with a learned absolute position embedding inflated to 3D (Eq. 4-6), global space-time
attention instead of the original divided attention, the same edge and visual node sparsity as
SViTT; the text tower is the text-only BERT layers. Trained with VTC alone; retrieval ranks by
the cosine similarity of the embeddings, so there is no multimodal encoder, no VTM head and no
cross-modal pruning.
"""

from __future__ import annotations

from torch import Tensor

from svitt.config import ConfigError, ModelConfig
from svitt.models.svitt import SViTT


class Frozen(SViTT):
    has_matching_head = False

    def __init__(self, cfg: ModelConfig, pretraining_heads: bool = True) -> None:
        if not cfg.vision.abs_pos_emb:
            raise ConfigError(
                "model.vision.abs_pos_emb: got False; the frozen arch is a ViT with an absolute "
                "position embedding; allowed: true (and rel_pos_bias: false for the plain ViT)"
            )
        super().__init__(cfg, pretraining_heads)

    def match_logits(self, video_tokens: Tensor, text_hidden: Tensor, text_mask: Tensor) -> Tensor:
        # Two-tower by design (supplement B.2): there is no fusion encoder to score pairs with.
        raise TypeError(
            "the frozen arch has no matching head (has_matching_head is False); rank by the "
            "cosine similarity of encode_video(...).embed and encode_text(...).embed"
        )
