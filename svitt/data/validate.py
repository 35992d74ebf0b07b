"""`svitt validate-data`: scan a dataset's annotations and videos before any training.

Every referenced video is opened and its first and last frames decoded; the report lists
bad files with the reason, and frame counts, rates and durations of the good ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from svitt.data.annotations import annotation_counts, dataset_paths, unique_videos
from svitt.data.video_files import VideoError, VideoInfo, probe_video

log = logging.getLogger(__name__)


def _probe(path: Path) -> VideoInfo | VideoError:
    try:
        return probe_video(path, decode_last=True)
    except VideoError as err:
        return err


def probe_all(
    paths: Sequence[Path], workers: int = 1, desc: str = "probing videos"
) -> list[VideoInfo | VideoError]:
    """Probe every video (in `workers` processes); a bad one gives its VideoError."""
    bar = {"total": len(paths), "desc": desc, "unit": "video", "mininterval": 1.0, "disable": None}
    if workers <= 1:
        return [_probe(p) for p in tqdm(paths, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(_probe, paths, chunksize=16), **bar))


def validate_dataset(root: str | Path, name: str, workers: int = 1) -> dict[str, Any]:
    """The report: per split its entries' counts, per video its metadata or error."""
    paths = dataset_paths(root, name)
    splits, names = {}, []
    for split in paths.spec.splits:
        videos, texts = annotation_counts(paths.annotation(split))
        splits[split] = {"videos": len(videos), "texts": texts}
        names += videos
    if paths.spec.has_answer_list and not paths.answer_list.is_file():
        raise FileNotFoundError(f"answer list not found: {paths.answer_list}")
    files = [paths.video(v) for v in unique_videos(names)]
    results = probe_all(files, workers, desc=f"validating {name}")
    videos, bad = [], []
    for path, result in zip(files, results, strict=True):
        if isinstance(result, VideoError):
            bad.append({"path": str(path), "error": result.reason})
        else:
            videos.append(
                {
                    "path": str(path),
                    "frames": result.num_frames,
                    "fps": result.fps,
                    "duration_s": result.duration_s,
                    "width": result.width,
                    "height": result.height,
                }
            )
    durations = [v["duration_s"] for v in videos]
    return {
        "dataset": name,
        "root": str(paths.root),
        "task": paths.spec.task,
        "splits": splits,
        "num_videos": len(files),
        "num_bad": len(bad),
        "bad": bad,
        "avg_duration_s": sum(durations) / len(durations) if durations else None,
        "videos": videos,
    }


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--root", required=True, type=Path, help="data root (data.root)")
    parser.add_argument("--dataset", required=True, help="registered dataset name")
    parser.add_argument("--out", required=True, type=Path, help="report JSON to write")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 if any video is bad"
    )


def run(args: argparse.Namespace) -> int:
    report = validate_dataset(args.root, args.dataset, args.workers)
    write_json_atomic(args.out, report)
    if report["bad"]:
        log.warning(
            "%s: %d of %d videos are bad (listed in %s)",
            args.dataset,
            report["num_bad"],
            report["num_videos"],
            args.out,
        )
    else:
        log.info("%s: all %d videos decode", args.dataset, report["num_videos"])
    return 1 if args.strict and report["bad"] else 0
