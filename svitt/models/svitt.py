"""The SViTT video-text model: VTC, VTM and MLM on top of `f_v`, `f_t` and `f_m`.

Every variant (SViTT, Frozen, Singularity) has the same API, so the engines never branch on
the architecture:

    encode_video(video) -> VideoEncoding         tokens for f_m, L2-normalised embedding
    encode_text(ids, mask) -> TextEncoding       text-only states for f_m, embedding
    match_logits(video_tokens, text_hidden, text_mask) -> [B]   VTM logit of "match": one
                                                 per pair, larger = match (two_way: the raw
                                                 class-1 logit)
    fuse(video_tokens, text_hidden, text_mask, positions) -> FusionOutput  (kept tokens)
    has_matching_head                            False: retrieval by cosine similarity only
    forward(batch, gather) -> {"vtc", "vtm", "mlm", "twin", "loss"}
    no_weight_decay() -> set[str]

Losses (supplement A.3): VTC is InfoNCE both ways over the (optionally globally gathered)
batch; VTM is binary cross-entropy on the multimodal [CLS] (`vtm_head: two_way`: the
release's 2-class cross-entropy) with one hard negative per video and per text drawn from the
similarity softmax; MLM masks `mlm_probability` of the text tokens.
The twin loss (not in the paper) keeps time-reversed twins apart (`twin_loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from svitt.config import ModelConfig, TextConfig
from svitt.models.text import IGNORE_INDEX, FusionOutput, TextEncoder
from svitt.models.vision import VisionOutput, VisionTransformer

TEMPERATURE_RANGE = (0.001, 0.5)

Gather = Callable[[Tensor], Tensor]


def identity(x: Tensor) -> Tensor:
    return x


@dataclass
class VideoEncoding:
    tokens: Tensor  # [B, 1 + n, Dv] input of f_m, [CLS] first
    embed: Tensor  # [B, E] L2-normalised, for VTC and retrieval
    positions: Tensor  # [B, n] raster position t*H*W + h*W + w of each token in tokens[:, 1:]
    vision: VisionOutput  # the visual encoder's own output (pruning steps, edges)


@dataclass
class TextEncoding:
    hidden: Tensor  # [B, L, Dt] states of the text-only layers f_t
    embed: Tensor  # [B, E] L2-normalised


def positive_pairs(batch: int, video_ids: Tensor | None, device: torch.device) -> Tensor:
    """[B, B] bool: pair (i, j) is a positive (i == j, or the same video id)."""
    if video_ids is None:
        return torch.eye(batch, dtype=torch.bool, device=device)
    return video_ids[:, None] == video_ids[None, :]


def vtc_loss(
    video_embed: Tensor,
    text_embed: Tensor,
    temperature: Tensor,
    gather: Gather = identity,
    video_ids: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE (Eq. 12-13), averaged over the global batch and the two directions.

    `gather` concatenates a tensor over data-parallel ranks keeping gradients, so the negatives
    span the global batch. Pairs with the same video id are all positives (targets spread
    evenly over them), so duplicate videos are not pushed apart.
    """
    videos, texts = gather(video_embed), gather(text_embed)
    ids = gather(video_ids) if video_ids is not None else None
    logits = videos @ texts.T / temperature
    targets = positive_pairs(len(videos), ids, logits.device).to(logits.dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    video_to_text = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_to_video = -(targets.T * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (video_to_text + text_to_video) / 2


def twin_loss(video_embed: Tensor, text_embed: Tensor, twin_rows: Tensor, margin: float) -> Tensor:
    """Hinge on the cosine of each clip and its time-reversed twin, and of their captions.

    VTC alone cannot separate twins once both towers are order-blind: its gradient on a video
    is proportional to the difference of the twin captions' embeddings and vice versa, so
    equal embeddings stay equal. The hinge breaks that tie.
    """
    if len(twin_rows) == 0:
        return video_embed.sum() * 0.0
    first, second = twin_rows.unbind(dim=1)
    cosines = torch.cat(
        [
            (video_embed[first] * video_embed[second]).sum(dim=-1),
            (text_embed[first] * text_embed[second]).sum(dim=-1),
        ]
    )
    return F.relu(cosines - margin).mean()


def sample_hard_negatives(similarity: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    """One negative column per row, drawn from softmax(similarity row) over non-positives.

    Returns the column index [B] and whether the row has any negative at all [B] (a row whose
    every column is a positive has none; its index is meaningless).
    """
    valid = ~positives.all(dim=1)
    logits = similarity.float().masked_fill(positives, float("-inf"))
    logits = logits.masked_fill(~valid[:, None], 0.0)  # any finite row, dropped by `valid`
    return torch.multinomial(logits.softmax(dim=1), 1).squeeze(1), valid


def mask_tokens(
    ids: Tensor, mask: Tensor, cfg: TextConfig, probability: float
) -> tuple[Tensor, Tensor]:
    """BERT masking: (masked ids, labels with IGNORE_INDEX off the chosen tokens).

    Each real token other than [CLS]/[SEP]/[PAD] is chosen with `probability`; a chosen token
    becomes [MASK] (80%), a random token (10%) or stays (10%).
    """
    specials = torch.tensor([cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id])
    maskable = mask.bool() & ~torch.isin(ids, specials.to(ids.device))
    chosen = (torch.rand(ids.shape, device=ids.device) < probability) & maskable
    labels = ids.masked_fill(~chosen, IGNORE_INDEX)
    roll = torch.rand(ids.shape, device=ids.device)
    masked = ids.masked_fill(chosen & (roll < 0.8), cfg.mask_token_id)
    random_tokens = torch.randint_like(ids, cfg.vocab_size)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_tokens, masked)
    return masked, labels


class SViTT(nn.Module):
    """Sparse video-text transformer: space-time visual encoder + BERT text/multimodal encoder.

    `pretraining_heads=False` leaves out the VTC projections, the VTM head and the MLM head
    (the QA model uses the encoders only).
    """

    has_matching_head = True
    vision_prefix = "vision."  # the visual encoder's keys in state_dict(): inflated on load

    def __init__(self, cfg: ModelConfig, pretraining_heads: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = self.build_vision(cfg)
        self.text = TextEncoder(
            cfg.text,
            cfg.sparsity,
            video_dim=cfg.vision.dim,
            multimodal=self.has_matching_head,
            mlm_head=pretraining_heads and self.has_matching_head,
        )
        self.pretraining_heads = pretraining_heads
        if pretraining_heads:
            self.vision_proj = nn.Linear(cfg.vision.dim, cfg.embed_dim)
            self.text_proj = nn.Linear(cfg.text.dim, cfg.embed_dim)
            self.temp = nn.Parameter(torch.tensor(cfg.temperature))
            if self.has_matching_head:
                classes = 2 if cfg.vtm_head == "two_way" else 1
                self.vtm_head = nn.Linear(cfg.text.dim, classes)

    def build_vision(self, cfg: ModelConfig) -> VisionTransformer:
        return VisionTransformer(cfg.vision, cfg.sparsity)

    def no_weight_decay(self) -> set[str]:
        names = {f"vision.{name}" for name in self.vision.no_weight_decay()}
        return names | ({"temp"} if self.pretraining_heads else set())

    def forward_video(self, video: Tensor) -> tuple[Tensor, Tensor, VisionOutput]:
        """video [B, T, 3, H, W] -> tokens [B, 1 + n, Dv], positions [B, n], VisionOutput."""
        out = self.vision.forward_features(video)
        return out.tokens, out.positions, out

    def encode_video(self, video: Tensor) -> VideoEncoding:
        tokens, positions, out = self.forward_video(video)
        embed = F.normalize(self.vision_proj(self.video_feature(tokens, out)), dim=-1)
        return VideoEncoding(tokens=tokens, embed=embed, positions=positions, vision=out)

    def video_feature(self, tokens: Tensor, out: VisionOutput) -> Tensor:
        """[B, Dv], what VTC projects: the [CLS] slot of `tokens` (`pool: cls`) or the pooler's
        output (`pool: mean`). A frame-level encoder pools its frames' features into the
        [CLS] slot itself (`Singularity.pool_frames`)."""
        if self.cfg.vision.pool == "cls" or self.cfg.frame_level:
            return tokens[:, 0]
        return out.pooled

    def encode_text(self, ids: Tensor, mask: Tensor) -> TextEncoding:
        hidden = self.text.forward_text(ids, mask)
        embed = F.normalize(self.text_proj(hidden[:, 0]), dim=-1)
        return TextEncoding(hidden=hidden, embed=embed)

    def fuse(
        self,
        video_tokens: Tensor,
        text_hidden: Tensor,
        text_mask: Tensor,
        positions: Tensor | None = None,
    ) -> FusionOutput:
        """`f_m` on paired rows; `positions` labels the kept tokens (see FusionOutput)."""
        return self.text.forward_multimodal(text_hidden, text_mask, video_tokens, positions)

    def vtm_scores(self, video_tokens: Tensor, text_hidden: Tensor, text_mask: Tensor) -> Tensor:
        """VTM head output on the multimodal [CLS]: [B, 1] (binary) or [B, 2] (two_way:
        no match, match)."""
        fused = self.fuse(video_tokens, text_hidden, text_mask)
        return self.vtm_head(fused.hidden[:, 0])

    def match_logits(self, video_tokens: Tensor, text_hidden: Tensor, text_mask: Tensor) -> Tensor:
        """VTM logit [B] that row i of the video tokens matches row i of the text; larger =
        match. Binary: the head's logit; two_way: the raw class-1 logit (the release ranks by
        it). Either way the head's last column."""
        return self.vtm_scores(video_tokens, text_hidden, text_mask)[:, -1]

    def forward(self, batch: dict[str, Tensor], gather: Gather = identity) -> dict[str, Tensor]:
        """Pre-training losses of one batch; loss weights from `ModelConfig.loss_weights`.

        A loss with weight 0 (or not listed) is not computed. Frozen computes VTC (and twin)
        only.
        """
        with torch.no_grad():
            self.temp.clamp_(*TEMPERATURE_RANGE)
        weights = {
            name: weight
            for name, weight in self.cfg.loss_weights.items()
            if weight and (name in ("vtc", "twin") or self.has_matching_head)
        }
        if not weights:
            raise ValueError(
                f"model.loss_weights: {self.cfg.loss_weights} leaves no loss to train for "
                f"arch {self.cfg.arch!r}; allowed: a positive weight on vtc or twin"
                + ("" if self.has_matching_head else " (frozen has VTC and twin only)")
            )
        ids, mask = batch["text_ids"], batch["text_mask"]
        video_ids = batch.get("video_id")
        video = self.encode_video(batch["video"])
        text = self.encode_text(ids, mask)
        losses = {}
        if "vtc" in weights:
            losses["vtc"] = vtc_loss(video.embed, text.embed, self.temp, gather, video_ids)
        if "twin" in weights:
            rows = batch.get("twin_rows", torch.empty((0, 2), dtype=torch.long))
            losses["twin"] = twin_loss(video.embed, text.embed, rows, self.cfg.twin_margin)
        if "vtm" in weights:
            losses["vtm"] = self.vtm_loss(video, text, mask, video_ids)
        if "mlm" in weights:
            losses["mlm"] = self.mlm_loss(video, ids, mask)
        losses["loss"] = sum(weights[name] * losses[name] for name in weights)
        return losses

    def vtm_loss(
        self, video: VideoEncoding, text: TextEncoding, mask: Tensor, video_ids: Tensor | None
    ) -> Tensor:
        """BCE (two_way: 2-class cross-entropy) over the B positive pairs and one hard negative
        per video and per text (Eq. 14)."""
        batch = len(mask)
        with torch.no_grad():
            similarity = video.embed @ text.embed.T / self.temp
            positives = positive_pairs(batch, video_ids, similarity.device)
            text_for_video, video_valid = sample_hard_negatives(similarity, positives)
            video_for_text, text_valid = sample_hard_negatives(similarity.T, positives.T)
        rows = torch.arange(batch, device=mask.device)
        video_index = torch.cat([rows, rows[video_valid], video_for_text[text_valid]])
        text_index = torch.cat([rows, text_for_video[video_valid], rows[text_valid]])
        scores = self.vtm_scores(
            video.tokens[video_index], text.hidden[text_index], mask[text_index]
        )
        if len(scores) == batch:  # one video only (a last or shrunk batch): nothing to contrast
            return scores.sum() * 0.0
        matches = torch.arange(len(scores), device=scores.device) < batch
        if self.cfg.vtm_head == "two_way":
            return F.cross_entropy(scores, matches.long())
        return F.binary_cross_entropy_with_logits(scores[:, -1], matches.to(scores.dtype))

    def mlm_loss(self, video: VideoEncoding, ids: Tensor, mask: Tensor) -> Tensor:
        """Cross-entropy on the masked tokens, predicted from the masked text and the video."""
        masked, labels = mask_tokens(ids, mask, self.cfg.text, self.cfg.mlm_probability)
        hidden = self.text.forward_text(masked, mask)
        fused = self.fuse(video.tokens, hidden, mask).hidden
        chosen = labels != IGNORE_INDEX
        logits = self.text.mlm_logits(fused[chosen])
        if not chosen.any():  # tiny batches of short captions: no token drawn this step
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels[chosen])
