"""Test-time clip ensemble (the release's `num_frames_test = 3T`, `eval_frame_ensemble`).

At evaluation a video may be read as `num_clips * T` middle-of-chunk frames
(`svitt.data.video.sample_indices`); `split_clips` cuts them into `num_clips` consecutive
clips of T frames (for 3 clips: the video's thirds), the model scores each clip, and
`ensemble_clip_scores` combines the scores: `lse` (logsumexp, the release) or `mean`. VTC
similarities are always averaged over the clips (`clip_similarity`). With one clip every
function returns its input's values exactly, so a one-clip evaluation is the plain one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from svitt.config import ClipEnsemble


def split_clips(video: Tensor, num_clips: int) -> list[Tensor]:
    """video [B, num_clips*T, ...] -> `num_clips` contiguous clips [B, T, ...], in time order."""
    if num_clips < 1 or video.shape[1] % num_clips:
        raise ValueError(
            f"split_clips: {video.shape[1]} frames do not split into {num_clips} clips "
            "(eval.num_clips)"
        )
    return [clip.contiguous() for clip in video.chunk(num_clips, dim=1)]


def ensemble_clip_scores(scores: Tensor, rule: ClipEnsemble) -> Tensor:
    """Scores [C, ...] of C clips -> [...]: logsumexp (`lse`) or mean (`mean`) over clips.

    `lse` rewards a pair that matches well in any clip (a soft maximum) and, for logits,
    equals the logit of the summed odds; `mean` weighs every clip alike."""
    if rule == "lse":
        return torch.logsumexp(scores, dim=0)
    if rule == "mean":
        return scores.mean(dim=0)
    raise ValueError(f"clip ensemble {rule!r}; allowed: lse, mean (eval.clip_ensemble)")


def clip_similarity(text_embed: Tensor, video_embed: Tensor) -> Tensor:
    """VTC similarity [Q, V] of text embeddings [Q, E] and per-clip video embeddings
    [V, C, E]: the mean over the clips of the cosine similarities (the release)."""
    videos, clips = video_embed.shape[:2]
    per_clip = text_embed @ video_embed.flatten(0, 1).T  # [Q, V*C]
    return per_clip.unflatten(1, (videos, clips)).mean(dim=2)
