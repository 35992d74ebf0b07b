"""torch Datasets, the collate function and loaders.

Batches (dicts) the engine codes against:
    "video" [B, T, 3, H, W] float32, "video_id" [B] long (position in the unique-video list),
    "skipped": list[str] (bad video files dropped from this batch), and by dataset kind
    text-video: "text_ids", "text_mask" [B, text_max_len] long;
    QA: "question_ids", "question_mask" [B, text_max_len], "answer_ids", "answer_mask"
        [B, answer_max_len], "answer_index" [B] (gold answer in the answer list, -1 if absent),
        "question_id" [B].

A bad video never gets replaced by another one. In training it is dropped and listed in the
batch's "skipped" (so the count survives worker processes); at evaluation `EvalLoader` raises
one error listing every bad file after the pass, unless `allow_bad` (then they stay listed in
`EvalLoader.skipped` for the metrics).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from svitt.config import ConfigError, RunConfig
from svitt.data.annotations import (
    Split,
    Task,
    dataset_paths,
    load_answer_list,
    load_qa,
    load_retrieval_queries,
    load_text_video,
    unique_videos,
)
from svitt.data.tokenizer import TextTokenizer
from svitt.data.video import ClipLoader, ClipSpec
from svitt.data.video_files import VideoError
from svitt.errors import UserError

Sample = dict[str, Any]


class BadVideosError(UserError, RuntimeError):
    """Videos failed to decode at evaluation; the message lists every one of them."""

    def __init__(self, paths: Sequence[str]) -> None:
        listed = "\n  ".join(paths)
        super().__init__(
            f"{len(paths)} video(s) could not be read at evaluation:\n  {listed}\n"
            "Fix or remove them (`svitt validate-data` lists them), or set "
            "data.allow_bad_videos_at_eval: true to drop them and list them in the metrics."
        )
        self.paths = list(paths)

    def __reduce__(self) -> tuple[type[BadVideosError], tuple[list[str]]]:
        return (type(self), (self.paths,))


class _VideoSamples(Dataset):
    """Shared part: clip loading with the per-sample seed, bad files as skip markers."""

    def __init__(self, clips: ClipLoader) -> None:
        self.clips = clips
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _clip(self, path: Path, index: int) -> torch.Tensor | None:
        try:
            return self.clips(path, index, self.epoch)
        except VideoError:
            return None


class TextVideoDataset(_VideoSamples):
    """Caption-video pairs for pre-training and retrieval fine-tuning.

    With `reversed_texts`, a pair whose reversed caption differs from its caption also yields
    its twin: the same clip with the frames reversed, that caption, and a video id of its own,
    so the two are negatives of each other in the batch's contrastive and matching losses.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, str]],
        clips: ClipLoader,
        reversed_texts: Sequence[str] | None = None,
    ) -> None:
        super().__init__(clips)
        self.pairs = list(pairs)
        self.reversed_texts = reversed_texts
        self.videos = unique_videos([str(p) for p, _ in self.pairs])
        position = {v: i for i, v in enumerate(self.videos)}
        self.video_ids = [position[str(p)] for p, _ in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        path, text = self.pairs[index]
        clip = self._clip(path, index)
        if clip is None:
            return {"skipped": str(path)}
        sample = {"video": clip, "video_id": self.video_ids[index], "text": text}
        if self.reversed_texts is not None and self.reversed_texts[index] != text:
            sample["twin"] = {
                "video": clip.flip(0),
                "video_id": self.video_ids[index] + len(self.videos),
                "text": self.reversed_texts[index],
            }
        return sample


class VideoDataset(_VideoSamples):
    """Unique videos of an evaluation set; "video_id" is the position in `paths`."""

    def __init__(self, paths: Sequence[Path], clips: ClipLoader) -> None:
        super().__init__(clips)
        self.paths = list(paths)

    def __reduce__(self) -> tuple[type[BadVideosError], tuple[list[str]]]:
        return (type(self), (self.paths,))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        clip = self._clip(self.paths[index], index)
        if clip is None:
            return {"skipped": str(self.paths[index])}
        return {"video": clip, "video_id": index}


class QADataset(_VideoSamples):
    """Questions about videos. With `reversed_answers`, a question whose answer for the video
    played backwards differs also yields its twin: the same clip with the frames reversed, the
    same question, that answer, and a video id of its own (as `TextVideoDataset`'s twins)."""

    def __init__(
        self,
        items: Sequence[tuple[Path, str, str, int]],
        answers: Sequence[str],
        clips: ClipLoader,
        reversed_answers: Sequence[str] | None = None,
    ) -> None:
        """`items`: (video path, question, answer, question_id)."""
        super().__init__(clips)
        self.items = list(items)
        self.answers = list(answers)
        self.reversed_answers = reversed_answers
        self._index = {a: i for i, a in enumerate(self.answers)}
        self.answer_index = [self._index.get(answer, -1) for _, _, answer, _ in self.items]
        self.videos = unique_videos([str(p) for p, *_ in self.items])
        position = {v: i for i, v in enumerate(self.videos)}
        self.video_ids = [position[str(p)] for p, *_ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        path, question, answer, question_id = self.items[index]
        clip = self._clip(path, index)
        if clip is None:
            return {"skipped": str(path)}
        sample: Sample = {
            "video": clip,
            "video_id": self.video_ids[index],
            "question": question,
            "answer": answer,
            "answer_index": self.answer_index[index],
            "question_id": question_id,
        }
        if self.reversed_answers is not None and self.reversed_answers[index] != answer:
            reversed_answer = self.reversed_answers[index]
            sample["twin"] = sample | {
                "video": clip.flip(0),
                "video_id": self.video_ids[index] + len(self.videos),
                "answer": reversed_answer,
                "answer_index": self._index.get(reversed_answer, -1),
            }
        return sample


class Collator:
    """Drops skip markers, stacks clips and tokenises texts of a batch."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        clip_shape: tuple[int, ...],
        text_max_len: int,
        answer_max_len: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.clip_shape = clip_shape
        self.text_max_len = text_max_len
        self.answer_max_len = answer_max_len

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        good = [s for s in samples if "skipped" not in s]
        originals = [row for row, s in enumerate(good) if "twin" in s]
        good += [good[row]["twin"] for row in originals]
        batch: dict[str, Any] = {
            "skipped": [s["skipped"] for s in samples if "skipped" in s],
            "video": torch.stack([s["video"] for s in good])
            if good
            else torch.empty((0, *self.clip_shape)),
            "video_id": torch.tensor([s["video_id"] for s in good], dtype=torch.long),
        }
        if originals:
            twins = torch.arange(len(good) - len(originals), len(good))
            batch["twin_rows"] = torch.stack([torch.tensor(originals), twins], dim=1)
        kinds = {k for s in samples for k in s if k != "skipped"}
        if "text" in kinds:
            batch["text_ids"], batch["text_mask"] = self._tokens(good, "text", self.text_max_len)
        if "question" in kinds:
            batch["question_ids"], batch["question_mask"] = self._tokens(
                good, "question", self.text_max_len
            )
            batch["answer_ids"], batch["answer_mask"] = self._tokens(
                good, "answer", self.answer_max_len
            )
            for key in ("answer_index", "question_id"):
                batch[key] = torch.tensor([s[key] for s in good], dtype=torch.long)
        return batch

    def _tokens(
        self, samples: Sequence[Sample], key: str, max_len: int
    ) -> tuple[torch.Tensor, ...]:
        return self.tokenizer.encode([s[key] for s in samples], max_len)


class EvalLoader:
    """An evaluation pass that never substitutes videos: bad files are dropped from their
    batches and, after the last batch, raise `BadVideosError` unless `allow_bad`."""

    def __init__(self, loader: DataLoader, allow_bad: bool) -> None:
        self.loader = loader
        self.allow_bad = allow_bad
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skipped = []
        for batch in self.loader:
            self.skipped.extend(batch["skipped"])
            yield batch
        if self.skipped and not self.allow_bad:
            raise BadVideosError(self.skipped)


def eval_loader(
    dataset: Dataset, collate: Collator, batch_size: int, num_workers: int, allow_bad: bool
) -> EvalLoader:
    return EvalLoader(
        DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate,
        ),
        allow_bad,
    )


# --- building from a RunConfig ---------------------------------------------------------------


def clip_loader(cfg: RunConfig, train: bool) -> ClipLoader:
    """T and the crop size from the model config (T overridable at evaluation), normalisation
    from the data config, the frame-order probe and the number of test clips from the eval
    config."""
    vision = cfg.model.vision
    frames = vision.num_frames if train else (cfg.eval.num_frames or vision.num_frames)
    return ClipLoader(
        ClipSpec(
            num_frames=frames,
            image_size=vision.image_size,
            mean=cfg.data.mean,
            std=cfg.data.std,
            train=train,
            frame_order="normal" if train else cfg.eval.frame_order,
            seed=cfg.seed,
            crop_scale=cfg.data.crop_scale,
            num_clips=1 if train else cfg.eval.num_clips,
        )
    )


def collator(cfg: RunConfig, tokenizer: TextTokenizer, clips: ClipLoader) -> Collator:
    return Collator(tokenizer, clips.clip_shape, cfg.data.text_max_len, cfg.data.answer_max_len)


def _downstream(cfg: RunConfig, task: str) -> str:
    from svitt.data.annotations import REGISTRY, find_spec

    name = cfg.data.dataset
    allowed = [n for n, s in REGISTRY.items() if s.task == task]
    spec = None if name is None else find_spec(name, cfg.data.root)
    if spec is None or spec.task != task:
        raise ConfigError(f"data.dataset: got {name!r}; allowed for {task}: {allowed}")
    return name


def _missing_reversal(
    annotation: Path, key: str, missing: Sequence[str], entries: Sequence[Any]
) -> ConfigError:
    """The error of `data.reversal_negatives: true` on a file whose entries lack `key`."""
    return ConfigError(
        f"data.reversal_negatives: true needs a {key!r} in every entry of {annotation}; "
        f"missing for {len(missing)} of {len(entries)} (first: {missing[0]!r}). Set it to "
        "false for this dataset."
    )


def text_video_dataset(
    root: str | Path,
    names: Sequence[str],
    split: Split,
    clips: ClipLoader,
    reversal_negatives: bool = False,
) -> TextVideoDataset:
    """Training pairs of one or more datasets (pre-training concatenates cfg.data.train)."""
    pairs, reversed_texts = [], []
    for name in names:
        paths = dataset_paths(root, name)
        if paths.spec.task == "qa":
            raise ConfigError(f"dataset {name!r} is a QA dataset, not a caption dataset")
        records = load_text_video(paths.annotation(split))
        missing = [r.video for r in records if r.reversed_caption is None]
        if reversal_negatives and missing:
            raise _missing_reversal(paths.annotation(split), "reversed_caption", missing, records)
        pairs += [(paths.video(r.video), r.caption) for r in records]
        reversed_texts += [r.reversed_caption for r in records]
    return TextVideoDataset(pairs, clips, reversed_texts if reversal_negatives else None)


@dataclass
class RetrievalEvalSet:
    """Queries, unique videos and the ground truth text -> set of video indices."""

    texts: list[str]
    videos: list[Path]
    ground_truth: list[frozenset[int]]

    def video_dataset(self, clips: ClipLoader) -> VideoDataset:
        return VideoDataset(self.videos, clips)

    def tokenized_texts(self, tokenizer: TextTokenizer, max_len: int) -> tuple[torch.Tensor, ...]:
        return tokenizer.encode(self.texts, max_len)


def retrieval_eval_set(root: str | Path, name: str, split: Split = "test") -> RetrievalEvalSet:
    paths = dataset_paths(root, name)
    queries = load_retrieval_queries(paths.annotation(split))
    videos = unique_videos([v for q in queries for v in q.videos])
    position = {v: i for i, v in enumerate(videos)}
    return RetrievalEvalSet(
        texts=[q.caption for q in queries],
        videos=[paths.video(v) for v in videos],
        ground_truth=[frozenset(position[v] for v in q.videos) for q in queries],
    )


def qa_dataset(
    root: str | Path,
    name: str,
    split: Split,
    clips: ClipLoader,
    reversal_negatives: bool = False,
) -> QADataset:
    """Questions of one split; `reversal_negatives` adds each order-dependent question's
    time-reversed twin (training only: an evaluation never sees twins)."""
    paths = dataset_paths(root, name)
    questions = load_qa(paths.annotation(split))
    missing = [q.video for q in questions if q.reversed_answer is None]
    if reversal_negatives and missing:
        raise _missing_reversal(paths.annotation(split), "reversed_answer", missing, questions)
    items = [(paths.video(q.video), q.question, q.answer, q.question_id) for q in questions]
    reversed_answers = [str(q.reversed_answer) for q in questions] if reversal_negatives else None
    return QADataset(items, load_answer_list(paths.answer_list), clips, reversed_answers)


def training_data(cfg: RunConfig, tokenizer: TextTokenizer, task: Task) -> tuple[Dataset, Collator]:
    """A training stage's dataset (`cfg.data.train` for pre-training, else the downstream
    `cfg.data.dataset`) and its collate function; `svitt.engine.loop.train` batches it."""
    clips = clip_loader(cfg, train=True)
    if task == "qa":
        dataset: Dataset = qa_dataset(
            cfg.data.root, _downstream(cfg, "qa"), "train", clips, cfg.data.reversal_negatives
        )
    else:
        names = cfg.data.train if task == "pretrain" else (_downstream(cfg, "retrieval"),)
        dataset = text_video_dataset(
            cfg.data.root, names, "train", clips, cfg.data.reversal_negatives
        )
    return dataset, collator(cfg, tokenizer, clips)


@dataclass
class RetrievalEval:
    """Everything a retrieval evaluation needs: embed `videos` and `text_ids` separately,
    score every pair, rank against `ground_truth`."""

    data: RetrievalEvalSet
    videos: EvalLoader
    text_ids: torch.Tensor
    text_mask: torch.Tensor


def retrieval_eval(
    cfg: RunConfig, tokenizer: TextTokenizer, split: Split = "test"
) -> RetrievalEval:
    clips = clip_loader(cfg, train=False)
    data = retrieval_eval_set(cfg.data.root, _downstream(cfg, "retrieval"), split)
    videos = eval_loader(
        data.video_dataset(clips),
        collator(cfg, tokenizer, clips),
        cfg.eval.batch_size,
        cfg.data.num_workers,
        cfg.data.allow_bad_videos_at_eval,
    )
    ids, mask = data.tokenized_texts(tokenizer, cfg.data.text_max_len)
    return RetrievalEval(data, videos, ids, mask)


@dataclass
class QAEval:
    """The evaluation questions and the tokenised answer list to rank."""

    questions: EvalLoader
    answers: list[str]
    answer_ids: torch.Tensor
    answer_mask: torch.Tensor


def qa_eval(cfg: RunConfig, tokenizer: TextTokenizer, split: Split = "test") -> QAEval:
    clips = clip_loader(cfg, train=False)
    dataset = qa_dataset(cfg.data.root, _downstream(cfg, "qa"), split, clips)
    questions = eval_loader(
        dataset,
        collator(cfg, tokenizer, clips),
        cfg.eval.batch_size,
        cfg.data.num_workers,
        cfg.data.allow_bad_videos_at_eval,
    )
    ids, mask = tokenizer.encode(dataset.answers, cfg.data.answer_max_len)
    return QAEval(questions, dataset.answers, ids, mask)
