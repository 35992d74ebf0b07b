"""Table A2: statistics of the datasets on disk (not the paper's reported values)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from svitt.data.annotations import annotation_counts, dataset_paths, unique_videos
from svitt.data.video_files import VideoError, VideoInfo, video_metadata

COLUMNS = ["dataset", "avg_duration_s", "num_videos", "num_texts", "num_bad_videos"]


def _metadata(path: Path) -> VideoInfo | VideoError:
    try:
        return video_metadata(path)
    except VideoError as err:
        return err


def dataset_statistics(root: str | Path, names: Sequence[str]) -> pd.DataFrame:
    """Per dataset, over all its splits: the mean duration of its videos (from the container
    metadata; unreadable files are counted apart, not averaged), the number of unique
    videos, and the number of sentences (captions; DiDeMo counts each sentence of a
    paragraph) or questions."""
    rows = []
    for name in names:
        paths = dataset_paths(root, name)
        videos, texts = [], 0
        for split in paths.spec.splits:
            split_videos, split_texts = annotation_counts(paths.annotation(split))
            videos += split_videos
            texts += split_texts
        files = [paths.video(v) for v in unique_videos(videos)]
        bar = tqdm(files, desc=f"statistics of {name}", unit="video", mininterval=1.0, disable=None)
        infos = [_metadata(f) for f in bar]
        durations = [i.duration_s for i in infos if not isinstance(i, VideoError)]
        rows.append(
            {
                "dataset": name,
                "avg_duration_s": sum(durations) / len(durations) if durations else math.nan,
                "num_videos": len(files),
                "num_texts": texts,
                "num_bad_videos": len(files) - len(durations),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)
