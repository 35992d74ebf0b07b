"""Video question answering: the multimodal encoder reads question + video, a BERT decoder
generates the answer.

The decoder has `ModelConfig.qa_decoder_depth` layers (causal self-attention, cross-attention
to the question-video states of `f_m`) and is initialised from the last text layers, its
embeddings and LM head from the text encoder's (tied, as in BERT). Training maximises the answer
likelihood under teacher forcing. Answering ranks a fixed answer list: the `top_k` answers by
the probability of their first token, re-ranked by the likelihood of the whole sequence. A video
read as several consecutive clips (`eval.num_clips`) is answered per clip, and both scores are
combined over the clips (`svitt.models.clips.ensemble_clip_scores`) before each ranking step.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from svitt.config import ClipEnsemble, ConfigError, ModelConfig
from svitt.models.bert import BertEmbeddings, BertLayer, BertOnlyMLMHead, init_bert_weights
from svitt.models.clips import ensemble_clip_scores, split_clips
from svitt.models.singularity import Singularity, SingularityTemporal
from svitt.models.svitt import SViTT, twin_loss
from svitt.models.text import IGNORE_INDEX, additive_mask
from svitt.models.weights import WeightsError

ENCODERS: dict[str, type[SViTT]] = {
    "svitt": SViTT,
    "singularity": Singularity,
    "singularity_temporal": SingularityTemporal,
}


class VideoQA(nn.Module):
    """Answer decoder on top of an SViTT or Singularity encoder (no pre-training heads)."""

    vision_prefix = f"encoder.{SViTT.vision_prefix}"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch not in ENCODERS:
            raise ConfigError(
                f"model.arch: got {cfg.arch!r}; video QA needs a multimodal encoder; "
                f"allowed: {sorted(ENCODERS)}"
            )
        if not 1 <= cfg.qa_decoder_depth <= cfg.text.depth:
            raise ConfigError(
                f"model.qa_decoder_depth: got {cfg.qa_decoder_depth}; allowed: an integer in "
                f"[1, text.depth={cfg.text.depth}] (the decoder starts from the last text layers)"
            )
        self.cfg = cfg
        self.encoder = ENCODERS[cfg.arch](cfg, pretraining_heads=False)
        text = cfg.text
        self.decoder_embeddings = BertEmbeddings(text)
        # Cross-attention reads the question-video states of `f_m`, at the text width.
        self.decoder_layers = nn.ModuleList(
            BertLayer(
                text.dim,
                text.heads,
                text.mlp_dim,
                video_dim=text.dim,
                causal=True,
                eps=text.layer_norm_eps,
            )
            for _ in range(cfg.qa_decoder_depth)
        )
        self.lm_head = BertOnlyMLMHead(text.dim, text.vocab_size, eps=text.layer_norm_eps)
        for module in (self.decoder_embeddings, self.decoder_layers, self.lm_head):
            module.apply(partial(init_bert_weights, std=text.init_std))
        self.lm_head.tie(self.decoder_embeddings)
        self.init_decoder(self.encoder.text.state_dict())

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}

    def init_decoder(self, text_state: dict[str, Tensor]) -> None:
        """Copy text weights (TextEncoder names) into the decoder.

        Decoder layer i <- text layer `depth - decoder_depth + i` (cross-attention included
        when that layer has one); embeddings <- text embeddings; LM head <- `mlm_head.*` when
        present. Weights of other shapes or absent keys keep their initialisation.
        """
        first = self.cfg.text.depth - self.cfg.qa_decoder_depth
        ours = self.state_dict()
        copied = {}
        for key, value in text_state.items():
            group, rest = key.split(".", 1)
            if group == "layers":
                index, rest = rest.split(".", 1)
                group = f"decoder_layers.{int(index) - first}"  # negative: not a source
            name = {"embeddings": "decoder_embeddings", "mlm_head": "lm_head"}.get(group, group)
            name = f"{name}.{rest}"
            if name in ours and ours[name].shape == value.shape:
                copied[name] = value
        self.load_state_dict(copied, strict=False)

    def load_pretrained(self, state: dict[str, Tensor]) -> None:
        """Start from a pre-trained video-text model's state dict (SViTT/Singularity names):
        the encoders load it (pre-training heads ignored), the decoder starts from its text
        layers and MLM head."""
        missing, _ = self.encoder.load_state_dict(state, strict=False)
        if missing:
            raise WeightsError(
                f"pre-trained state dict lacks {len(missing)} encoder weights of arch "
                f"{self.cfg.arch!r}, e.g. {missing[:3]}"
            )
        self.init_decoder(
            {k.removeprefix("text."): v for k, v in state.items() if k.startswith("text.")}
        )

    def encode_question(self, video: Tensor, question_ids: Tensor, question_mask: Tensor) -> Tensor:
        """Question-video states [B, Lq, Dt] of the multimodal encoder."""
        tokens, positions, _ = self.encoder.forward_video(video)
        return self.fuse_question(tokens, positions, question_ids, question_mask)

    def fuse_question(
        self, tokens: Tensor, positions: Tensor, question_ids: Tensor, question_mask: Tensor
    ) -> Tensor:
        """Question-video states [B, Lq, Dt] from the visual tokens of `forward_video`."""
        hidden = self.encoder.text.forward_text(question_ids, question_mask)
        return self.encoder.fuse(tokens, hidden, question_mask, positions).hidden

    def decode(
        self, answer_ids: Tensor, answer_mask: Tensor, states: Tensor, states_mask: Tensor
    ) -> Tensor:
        """Next-token logits [B, La, V] of each answer prefix (causal, teacher forcing)."""
        hidden = self.decoder_embeddings(answer_ids)
        self_mask = additive_mask(answer_mask, hidden.dtype)  # the layers add the causal mask
        cross_mask = additive_mask(states_mask, hidden.dtype)
        for layer in self.decoder_layers:
            hidden = layer(hidden, self_mask, states, cross_mask)
        return self.lm_head(hidden)

    def answer_nll(
        self, answer_ids: Tensor, answer_mask: Tensor, states: Tensor, states_mask: Tensor
    ) -> Tensor:
        """Negative log-probability [B, La - 1] of each answer token after [CLS] (0 on pads)."""
        if not (answer_ids[:, 0] == self.cfg.text.cls_token_id).all():
            raise ValueError(
                f"answer_ids must start with [CLS] (text.cls_token_id="
                f"{self.cfg.text.cls_token_id}), the decoder's start token"
            )
        logits = self.decode(answer_ids, answer_mask, states, states_mask)[:, :-1]
        targets = answer_ids[:, 1:].masked_fill(answer_mask[:, 1:] == 0, IGNORE_INDEX)
        return F.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Answer negative log-likelihood, mean over the answer tokens of the batch; with a
        twin weight (`model.loss_weights.twin`) plus the twin loss on the video features of
        the batch's time-reversed twins (`data.reversal_negatives`)."""
        question_mask = batch["question_mask"]
        tokens, positions, out = self.encoder.forward_video(batch["video"])
        states = self.fuse_question(tokens, positions, batch["question_ids"], question_mask)
        nll = self.answer_nll(batch["answer_ids"], batch["answer_mask"], states, question_mask)
        losses = {"qa": nll.sum() / batch["answer_mask"][:, 1:].sum().clamp(min=1)}
        losses["loss"] = losses["qa"]
        weight = self.cfg.loss_weights.get("twin", 0.0)
        if weight:
            # Without it fine-tuning makes the encoder order-blind again (the twins' features
            # grow alike), as VTC alone does in pre-training. A twin shares its question, so
            # only the video side (what pre-training contrasts: `SViTT.video_feature`): the
            # same embedding stands in for the text one.
            embed = F.normalize(self.encoder.video_feature(tokens, out), dim=-1)
            rows = batch.get("twin_rows", torch.empty((0, 2), dtype=torch.long))
            losses["twin"] = twin_loss(embed, embed, rows, self.cfg.twin_margin)
            losses["loss"] = losses["qa"] + weight * losses["twin"]
        return losses

    @torch.no_grad()
    def rank_answers(
        self,
        video: Tensor,
        question_ids: Tensor,
        question_mask: Tensor,
        answer_ids: Tensor,
        answer_mask: Tensor,
        top_k: int,
        num_clips: int = 1,
        ensemble: ClipEnsemble = "lse",
    ) -> Tensor:
        """Index [B] into the answer list ([A, La] ids, [CLS] first) of each question's answer.

        The `top_k` answers with the most probable first token are re-ranked by the
        log-likelihood of the whole answer. `video` [B, num_clips * T, ...] holds `num_clips`
        consecutive clips; both log-probabilities are combined over them by `ensemble`.
        """
        if top_k < 1:
            raise ValueError(f"rank_answers: top_k must be >= 1 (eval.answer_top_k), got {top_k}")
        states = [
            self.encode_question(clip, question_ids, question_mask)
            for clip in split_clips(video, num_clips)
        ]
        first_scores = ensemble_clip_scores(
            torch.stack([self.first_token_scores(s, question_mask, answer_ids) for s in states]),
            ensemble,
        )
        candidates = first_scores.topk(min(top_k, len(answer_ids)), dim=1).indices  # [B, k]
        scores = ensemble_clip_scores(
            torch.stack(
                [
                    self.answer_scores(s, question_mask, answer_ids, answer_mask, candidates)
                    for s in states
                ]
            ),
            ensemble,
        )
        best = scores.argmax(dim=1, keepdim=True)
        return candidates.gather(1, best).squeeze(1)

    def first_token_scores(self, states: Tensor, states_mask: Tensor, answer_ids: Tensor) -> Tensor:
        """log p(first answer token) [B, A] of every answer of the list ([A, La] ids)."""
        start = answer_ids.new_full((len(states), 1), self.cfg.text.cls_token_id)
        logits = self.decode(start, torch.ones_like(start), states, states_mask)[:, 0]
        return logits.log_softmax(dim=-1)[:, answer_ids[:, 1]]

    def answer_scores(
        self,
        states: Tensor,
        states_mask: Tensor,
        answer_ids: Tensor,
        answer_mask: Tensor,
        candidates: Tensor,
    ) -> Tensor:
        """log p(answer) [B, k] of each question's `candidates` [B, k] (answer-list indices)."""
        batch, k = candidates.shape
        flat = candidates.flatten()
        nll = self.answer_nll(
            answer_ids[flat],
            answer_mask[flat],
            states.repeat_interleave(k, dim=0),
            states_mask.repeat_interleave(k, dim=0),
        )
        return -nll.sum(dim=1).view(batch, k)
