"""Training-loader throughput: clips per second of the decord loader (seek to the T sampled
frames) against a naive reader that decodes every frame with PyAV and then picks, through
the same Dataset, transforms and DataLoader workers. Medians over repetitions; both readers
run once per repetition in a rotated order.

    python -m benchmarks.loader [--profile synthetic] [--clips 32] [--video-frames 96]

Writes results/<profile>/tables/loader.{csv,md}. The clips are synthetic-benchmark scenes
rendered at the benchmark's own length (longer than the training clips, closer to real
videos), written to a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.common import machine_info, median, time_interleaved, write_table
from svitt.data.datasets import Collator, TextVideoDataset
from svitt.data.synthetic import FRAME_SIZE, render, sample_script, train_tokenizer, write_video
from svitt.data.tokenizer import TextTokenizer
from svitt.data.video import ClipLoader, ClipSpec
from svitt.data.video_files import Decoder, decode_decord


def decode_all_pyav(path: Path, pick: Callable[[int], list[int]]) -> np.ndarray:
    """The naive reader: decode the whole video, then keep the picked frames."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack([frames[i] for i in pick(len(frames))])


def make_videos(folder: Path, count: int, frames: int, seed: int) -> list[tuple[Path, str]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(count):
        path = folder / f"clip{i:03d}.mp4"
        write_video(path, render(sample_script(rng, "seq_two"), frames))
        pairs.append((path, f"clip {i}"))
    return pairs


def loader(
    pairs: list[tuple[Path, str]],
    decode: Decoder,
    num_frames: int,
    tokenizer,
    workers: int,
    batch_size: int,
) -> DataLoader:
    clips = ClipLoader(ClipSpec(num_frames, 32, (0.5,) * 3, (0.25,) * 3, train=True), decode)
    collate = Collator(tokenizer, clips.clip_shape, text_max_len=8, answer_max_len=4)
    return DataLoader(
        TextVideoDataset(pairs, clips),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
    )


def one_pass(data: DataLoader) -> Callable[[], int]:
    return lambda: sum(len(batch["video_id"]) for batch in data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="synthetic")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--video-frames", type=int, default=96)
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pairs = make_videos(folder, args.clips, args.video_frames, args.seed)
        train_tokenizer([text for _, text in pairs], folder / "tokenizer")
        tokenizer = TextTokenizer.from_dir(folder / "tokenizer")
        for t in args.frames:
            variants = {
                name: one_pass(loader(pairs, decode, t, tokenizer, args.workers, args.batch_size))
                for name, decode in (("decord", decode_decord), ("naive", decode_all_pyav))
            }
            times = time_interleaved(variants, args.reps, warmup=1, device=torch.device("cpu"))
            ours, naive = (args.clips / median(times[n]) for n in ("decord", "naive"))
            rows.append(
                {
                    "T": t,
                    "loader_clips_per_s": round(ours, 1),
                    "naive_clips_per_s": round(naive, 1),
                    "ratio": round(ours / naive, 2),
                }
            )
            print(rows[-1])
    info = machine_info(torch.device("cpu"))
    notes = [
        f"{args.clips} clips of {args.video_frames} frames, {FRAME_SIZE}x{FRAME_SIZE} H.264, "
        f"crop 32, batch {args.batch_size}, {args.workers} workers, "
        f"median of {args.reps} passes",
        "ratio = training loader (decord, seeks to the T sampled frames) / naive reader "
        "(PyAV decodes every frame, then picks)",
        ", ".join(f"{k}: {v}" for k, v in info.items()),
    ]
    write_table(
        rows,
        args.results / args.profile / "tables" / "loader",
        "Training loader throughput (clips/s)",
        notes,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
