"""`svitt validate-data`: scan a dataset's annotations and videos before any training.

Every referenced video is opened and its first and last frames decoded; the report lists
bad files with the reason, and frame counts, rates and durations of the good ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from svitt.data.annotations import (
    SPLITS,
    DatasetError,
    Split,
    annotation_counts,
    dataset_paths,
    unique_videos,
)
from svitt.data.video_files import VideoError, VideoInfo, probe_video
from svitt.errors import MissingFileError, UserError
from svitt.files import atomic_write_text

log = logging.getLogger(__name__)
SHOWN_BAD = 5  # bad files named in the summary line; the report lists every one


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
    pool = ProcessPoolExecutor(workers)
    try:
        return list(tqdm(pool.map(_probe, paths, chunksize=16), **bar))
    finally:
        # on an interrupt, the videos not started yet are dropped instead of waited for
        pool.shutdown(cancel_futures=True)


class BadDatasetError(UserError):
    """--strict found bad videos; the message names the report that lists them."""


def validate_dataset(
    root: str | Path, name: str, workers: int = 1, splits: Sequence[Split] | None = None
) -> dict[str, Any]:
    """The report: per split its entries' counts, per video its metadata or error.

    `splits` default to those of the dataset whose annotation file exists (a test-only copy
    of a dataset has no train.json); a split named in `splits` must exist."""
    paths = dataset_paths(root, name)
    if splits is None:
        splits = [s for s in paths.spec.splits if paths.annotation(s).is_file()]
        if not splits:
            raise MissingFileError(
                f"dataset {name!r}: no annotation file in {paths.base / 'annotations'}; "
                f"expected {' or '.join(s + '.json' for s in paths.spec.splits)}"
            )
    counts, names, splits_of = {}, [], {}
    for split in splits:
        videos, texts = annotation_counts(paths.annotation(split))
        counts[split] = {"videos": len(videos), "texts": texts}
        names += videos
        for video in videos:
            splits_of.setdefault(video, []).append(split)
    if paths.spec.has_answer_list and not paths.answer_list.is_file():
        raise MissingFileError(f"answer list not found: {paths.answer_list}")
    unique = unique_videos(names)
    files = [paths.video(v) for v in unique]
    results = probe_all(files, workers, desc=f"validating {name}")
    videos, bad = [], []
    for video, path, result in zip(unique, files, results, strict=True):
        if isinstance(result, VideoError):
            bad.append({"path": str(path), "error": result.reason, "splits": splits_of[video]})
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
        "splits": counts,
        "num_videos": len(files),
        "num_bad": len(bad),
        "bad": bad,
        "avg_duration_s": sum(durations) / len(durations) if durations else None,
        "videos": videos,
    }


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--root", required=True, type=Path, help="data root (data.root)")
    parser.add_argument("--dataset", required=True, help="registered dataset name")
    parser.add_argument("--out", required=True, type=Path, help="report JSON to write")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        help="splits to check, each must exist (default: every split with an annotation file)",
    )
    parser.add_argument(
        "--strict",
        nargs="*",
        choices=SPLITS,
        metavar="SPLIT",
        help="exit with status 2 if a video of these splits is bad (no SPLIT: of any split); "
        "the DAG passes `--strict test`: evaluation refuses bad videos, training skips them",
    )


def run(args: argparse.Namespace) -> int:
    if args.splits is not None:
        spec_splits = dataset_paths(args.root, args.dataset).spec.splits
        for split in args.splits:
            if split not in spec_splits:
                raise DatasetError(
                    f"--splits: dataset {args.dataset!r} has no split {split!r}; allowed: "
                    f"{', '.join(spec_splits)}"
                )
    report = validate_dataset(args.root, args.dataset, args.workers, args.splits)
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    bad = report["bad"]
    if not bad:
        log.info("%s: all %d videos decode", args.dataset, report["num_videos"])
        return 0
    strict = args.strict is not None and any(
        not args.strict or set(args.strict) & set(b["splits"]) for b in bad
    )
    named = "; ".join(f"{b['path']}: {b['error']}" for b in bad[:SHOWN_BAD])
    more = f"; and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
    summary = (
        f"{args.dataset}: {len(bad)} of {report['num_videos']} videos are bad ({named}{more}; "
        f"all listed in {args.out}); fix or remove them"
    )
    if strict:
        raise BadDatasetError(summary)
    log.warning("%s", summary)
    return 0
