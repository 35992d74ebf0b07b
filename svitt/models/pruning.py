"""Token pruning (node sparsity, supplement A.1): keep the [CLS] token and the best-scored rest.

The visual encoder prunes after its drop layers (scores: the [CLS] attention, or random), the
multimodal encoder after its cross-modal drop layers (scores: the text [CLS] attention).
"""

from __future__ import annotations

import torch
from torch import Tensor

from svitt.sparsity import keep_count


def prune_tokens(
    tokens: Tensor, positions: Tensor, scores: Tensor, keep_rate: float
) -> tuple[Tensor, Tensor]:
    """Keep [CLS] and the `ceil(keep_rate * n)` best-scored of the n other tokens.

    tokens [B, 1 + n, D] ([CLS] first), positions [B, n] (raster positions of the non-[CLS]
    tokens), scores [B, n] -> tokens [B, 1 + k, D] and positions [B, k]. The kept tokens stay
    in sequence order, so block chunking after a visual drop still sees neighbours together.
    """
    count = keep_count(scores.shape[1], keep_rate)
    keep = scores.topk(count, dim=1).indices.sort(dim=1).values
    kept = tokens[:, 1:].gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
    return torch.cat([tokens[:, :1], kept], dim=1), positions.gather(1, keep)
