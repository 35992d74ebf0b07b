"""svitt checkpoints into models: read, fit to the model's clip length, load strictly.

    load_checkpoint(path)                    a checkpoint.pt / last.pt, weights only
    load_checkpoint_weights(model, source)   its weights into `model`, inflated if need be
    load_strict(model, weights, source)      every key and shape must match

Each model class names where its visual encoder sits in its state dict (`vision_prefix`):
a checkpoint of another clip length is inflated there (`svitt.models.inflate`), except for
frame-level models, whose weights fit any clip length. A VideoQA model also starts from a
pre-trained video-text checkpoint (`VideoQA.load_pretrained`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from svitt.errors import MissingFileError, UnreadableFileError
from svitt.files import torch_load
from svitt.models.inflate import inflate_state_dict
from svitt.models.qa import VideoQA
from svitt.models.svitt import SViTT
from svitt.models.weights import WeightsError

log = logging.getLogger(__name__)

Model = SViTT | VideoQA


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    state = torch_load(path, "svitt checkpoint", map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise UnreadableFileError(f"{path}: not a svitt checkpoint (no 'model' entry)")
    return state


def checkpoint_frames(state: Mapping[str, Any], source: str | Path) -> int:
    try:
        return int(state["config"]["model"]["vision"]["num_frames"])
    except (KeyError, TypeError):
        raise WeightsError(
            f"{source}: checkpoint records no config.model.vision.num_frames"
        ) from None


def fit_clip_length(
    weights: Mapping[str, Tensor], src_frames: int, model: Model
) -> dict[str, Tensor]:
    """`weights` of a `src_frames`-frame model of `model`'s class, resized to `model`'s clip
    length if it differs (4 -> 8 -> 16 progressive training; evaluation with another number
    of frames)."""
    cfg = model.cfg
    dst_frames = cfg.vision.num_frames
    # A frame-level encoder encodes every frame alone: its weights fit any clip length.
    if src_frames == dst_frames or cfg.frame_level:
        return dict(weights)
    _, h, w = cfg.vision.grid
    log.info("inflating weights from %d to %d frames", src_frames, dst_frames)
    return inflate_state_dict(dict(weights), src_frames, dst_frames, (h, w), model.vision_prefix)


def load_strict(model: nn.Module, weights: Mapping[str, Tensor], source: str | Path) -> None:
    """Load `weights` into `model`; any missing, unexpected or reshaped key is a WeightsError
    naming `source` and the first keys."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in weights]
    unexpected = [k for k in weights if k not in ours]
    if missing or unexpected:
        raise WeightsError(
            f"{source} does not fit the configured model: {len(missing)} missing weights "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            "check model.arch and the model shape against the checkpoint's config"
        )
    reshaped = [k for k, v in weights.items() if v.shape != ours[k].shape]
    if reshaped:
        key = reshaped[0]
        raise WeightsError(
            f"{source} does not fit the configured model: {len(reshaped)} weights have another "
            f"shape (e.g. {key!r}: {list(weights[key].shape)}, the model's "
            f"{list(ours[key].shape)}); check the model shape against the checkpoint's config"
        )
    model.load_state_dict(weights)


def load_checkpoint_weights(
    model: Model, checkpoint: str | Path | Mapping[str, Any], source: str | Path | None = None
) -> None:
    """The weights of `checkpoint` (a file, or a checkpoint's contents named by `source`) into
    `model`, resized to its clip length. A VideoQA model given a video-text checkpoint (no
    QA weights) starts its encoders and decoder from it."""
    if isinstance(checkpoint, Mapping):
        state, source = checkpoint, source or "the checkpoint"
    else:
        state, source = load_checkpoint(checkpoint), checkpoint
    frames = checkpoint_frames(state, source)
    weights = state["model"]
    video_text = isinstance(model, VideoQA) and not any(
        key.startswith(model.vision_prefix) for key in weights
    )
    try:
        fitted = fit_clip_length(weights, frames, model.encoder if video_text else model)
    except ValueError as err:  # inflation met weights of another shape
        raise WeightsError(
            f"{source} does not fit the configured model ({err}); check model.arch and the "
            "model shape against the checkpoint's config"
        ) from None
    if video_text:
        model.load_pretrained(fitted)
    else:
        load_strict(model, fitted, source)
