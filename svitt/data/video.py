"""Video clips: T-chunk frame sampling, crops, normalisation and frame-order probes.

A clip of T frames is taken from T equal chunks of the video: a random frame per chunk in
training, the middle frame at evaluation. An evaluation with `num_clips` clips takes the
middle frames of `num_clips * T` chunks: consecutive clips of T frames, one after the other
(for 3: the video's thirds; `svitt.models.clips` splits them and combines their scores). All
randomness of one sample (frame choice, crop, shuffle probe) comes from a generator seeded by
(seed, epoch, index), so a sample is the same whichever worker process loads it.

Training uses no horizontal flip, unlike the Singularity release: a flip would contradict the
captions that name a direction ("moves left").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from svitt.config import FRAME_ORDERS, FrameOrder
from svitt.data.video_files import Decoder, decode_decord


def sample_indices(
    num_video_frames: int, num_frames: int, train: bool, rng: np.random.Generator | None = None
) -> list[int]:
    """One frame index per chunk of `num_frames` equal chunks: random (train) or middle."""
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if train and rng is None:
        raise ValueError("training sampling needs a seeded generator")
    indices = []
    for chunk in range(num_frames):
        start = chunk * num_video_frames // num_frames
        # Shorter videos than T repeat frames: an empty chunk keeps its start frame.
        stop = max(start + 1, (chunk + 1) * num_video_frames // num_frames)
        if train:
            indices.append(int(rng.integers(start, stop)))
        else:
            indices.append((start + stop - 1) // 2)
    return indices


def frame_order_permutation(
    num_frames: int, order: FrameOrder, rng: np.random.Generator | None = None
) -> list[int]:
    """Order probe of Table A8. `shuffle` is a derangement (no frame keeps its place) for
    T > 1, so it always differs from `normal`; a single frame has only one order."""
    if order == "normal":
        return list(range(num_frames))
    if order == "reverse":
        return list(range(num_frames - 1, -1, -1))
    if order == "shuffle":
        if rng is None:
            raise ValueError("the shuffle probe needs a seeded generator")
        if num_frames == 1:
            return [0]
        while True:  # rejection sampling: about e tries on average
            perm = rng.permutation(num_frames)
            if not np.any(perm == np.arange(num_frames)):
                return [int(p) for p in perm]
    raise ValueError(f"frame order {order!r}; allowed: {', '.join(FRAME_ORDERS)}")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop draws it, but from `rng`, so the
    crop is reproducible per sample."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def resize(clip: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [T, 3, h, w] -> float [T, 3, size, size], bilinear with antialiasing.

    torch's own interpolate, not torchvision's: importing torchvision costs every job seconds.
    """
    if clip.shape[2:] == (size, size):
        return clip.float()
    return F.interpolate(
        clip.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


@dataclass(frozen=True)
class ClipSpec:
    """How a clip is made: T, crop size, normalisation, mode, order probe, seed."""

    num_frames: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train: bool
    frame_order: FrameOrder = "normal"
    seed: int = 0
    crop_scale: tuple[float, float] = (0.5, 1.0)
    num_clips: int = 1  # evaluation: consecutive clips of num_frames each

    def __post_init__(self) -> None:
        if self.frame_order not in FRAME_ORDERS:
            raise ValueError(f"frame_order {self.frame_order!r}; allowed: {FRAME_ORDERS}")
        if self.train and self.frame_order != "normal":
            raise ValueError("frame-order probes apply at evaluation only (train=False)")
        if self.num_clips < 1 or (self.train and self.num_clips != 1):
            raise ValueError(f"num_clips {self.num_clips}: allowed: 1 in training, >= 1 else")


class ClipLoader:
    """path + sample index -> normalised clip [num_clips * T, 3, H, W] float32."""

    def __init__(self, spec: ClipSpec, decode: Decoder = decode_decord) -> None:
        self.spec = spec
        self.decode = decode
        self._mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        s = self.spec
        return (s.num_clips * s.num_frames, 3, s.image_size, s.image_size)

    def __call__(self, path: str | Path, index: int, epoch: int = 0) -> torch.Tensor:
        s = self.spec
        rng = sample_rng(s.seed, epoch, index)
        frames = self.decode(
            Path(path),
            lambda count: sample_indices(count, s.num_clips * s.num_frames, s.train, rng),
        )
        clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # T,3,H,W
        height, width = clip.shape[2], clip.shape[3]
        if s.train:
            top, left, h, w = random_resized_crop_box(height, width, rng, s.crop_scale)
        else:  # the centred square, the whole frame for square videos
            h = w = min(height, width)
            top, left = (height - h) // 2, (width - w) // 2
        clip = resize(clip[:, :, top : top + h, left : left + w], s.image_size)
        if not s.train:  # the order probe permutes the frames within each clip
            order = [
                start + i
                for start in range(0, len(clip), s.num_frames)
                for i in frame_order_permutation(s.num_frames, s.frame_order, rng)
            ]
            clip = clip[order]
        return (clip - self._mean) / self._std
