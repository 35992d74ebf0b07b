"""Reading video files without torch: decode picked frames, probe a file, read its header.

Validation and dataset statistics use only this module, so their jobs do not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svitt.errors import UserError

# decode(path, pick) -> uint8 frames [T, H, W, 3]; `pick` maps the frame count to indices.
Decoder = Callable[[Path, Callable[[int], list[int]]], np.ndarray]


class VideoError(UserError, RuntimeError):
    """A video is missing or cannot be decoded."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type[VideoError], tuple[str, str]]:
        # pickle rebuilds an exception from its args, here the one message: pass both fields
        return (type(self), (self.path, self.reason))


@contextmanager
def _decord_reader(path: Path) -> Iterator[Any]:
    """A decord reader of a file with at least one frame; decord's errors inside the block
    (bare RuntimeError/DECORDError) become a VideoError naming the file."""
    import decord  # imported lazily: decord pulls in its native library at import

    if not path.is_file():
        raise VideoError(path, "file not found")
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        if len(reader) < 1:
            raise VideoError(path, "no frames")
        yield reader
    except VideoError:
        raise
    except Exception as err:
        raise VideoError(path, f"cannot decode ({str(err).splitlines()[0][:200]})") from None


def decode_decord(path: Path, pick: Callable[[int], list[int]]) -> np.ndarray:
    """Seek-and-decode only the picked frames."""
    with _decord_reader(path) as reader:
        return reader.get_batch(pick(len(reader))).asnumpy()


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else float("nan")


def probe_video(path: str | Path, decode_last: bool = False) -> VideoInfo:
    """Frame count, rate and size; decodes the first (and optionally the last) frame, so a
    file that opens but does not decode is caught too."""
    with _decord_reader(Path(path)) as reader:
        count = len(reader)
        height, width = reader[0].shape[:2]
        if decode_last:
            reader[count - 1].asnumpy()
        return VideoInfo(count, float(reader.get_avg_fps()), int(width), int(height))


def video_metadata(path: str | Path) -> VideoInfo:
    """Frame count, rate and size from the container header only (no decoding): fast enough
    for statistics over whole datasets. Validation uses `probe_video` instead."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "file not found")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            frames = stream.frames
            if not frames:  # e.g. WebM stores no frame count: derive it from the duration
                if stream.duration is not None:
                    seconds = float(stream.duration * stream.time_base)
                else:
                    seconds = (container.duration or 0) / av.time_base
                frames = round(seconds * fps)
            return VideoInfo(int(frames), fps, stream.width, stream.height)
    except (av.FFmpegError, IndexError) as err:
        raise VideoError(path, f"cannot read metadata ({err})") from None
