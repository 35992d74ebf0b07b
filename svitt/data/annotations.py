"""Singularity/SViTT annotation files and the dataset registry.

One on-disk layout serves real and synthetic data alike:

    <root>/<name>/videos/<video file>            (the "video" field is relative to this folder)
    <root>/<name>/annotations/<split>.json       (split: train | test)
    <root>/<name>/annotations/answer_list.json   (QA datasets only: a JSON list of strings)
    <root>/<name>/dataset.json                    (a dataset not in REGISTRY declares itself)

A new dataset needs no code and no borrowed name: its folder holds `dataset.json`, e.g.
`{"task": "retrieval", "splits": ["test"], "description": "VATEX captions"}` (task: pretrain,
retrieval or qa; splits: train and/or test), and every command takes its name.

Record shapes (JSON lists of objects; extra keys are ignored):
    text-video (pre-training, retrieval): {"video": "a.mp4", "caption": "..."}; "caption" may
        be a list of sentences (DiDeMo: joined into one paragraph), "video" may be a list of
        videos that all match the caption (SSv2-Label: several positives).
    QA: {"video": "a.mp4", "question": "...", "answer": "...", "question_id": 7}; optional
        "question_type" (a string, e.g. "direction"), which the synthetic stand-ins write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from svitt.errors import MissingFileError, UserError

Task = Literal["pretrain", "retrieval", "qa"]
Split = Literal["train", "test"]
TASKS: tuple[Task, ...] = get_args(Task)
SPLITS: tuple[Split, ...] = get_args(Split)


class AnnotationError(UserError, ValueError):
    """An annotation file is malformed; the message names the file, entry index and field."""


class DatasetError(UserError, LookupError):
    """A dataset name, split or file that the registry does not know."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: Task
    splits: tuple[Split, ...]
    description: str

    @property
    def has_answer_list(self) -> bool:
        return self.task == "qa"


REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("webvid", "pretrain", ("train",), "WebVid-2M video-caption pairs"),
        DatasetSpec("msrvtt", "retrieval", ("train", "test"), "MSR-VTT (zero-shot: test)"),
        DatasetSpec("didemo", "retrieval", ("train", "test"), "DiDeMo paragraph retrieval"),
        DatasetSpec("charades", "retrieval", ("train", "test"), "Charades captions"),
        DatasetSpec("ssv2_label", "retrieval", ("train", "test"), "SSv2-Label, multi-positive"),
        DatasetSpec("msrvtt_qa", "qa", ("train", "test"), "MSRVTT-QA"),
        DatasetSpec("anet_qa", "qa", ("train", "test"), "ActivityNet-QA"),
        DatasetSpec("agqa", "qa", ("train", "test"), "AGQA 2.0"),
    )
}


DECLARATION = "dataset.json"


def find_spec(name: str, root: str | Path | None) -> DatasetSpec | None:
    """A registered dataset, else one declared by `<root>/<name>/dataset.json`, else None."""
    if name in REGISTRY:
        return REGISTRY[name]
    if root is None or not name or not (Path(root) / name / DECLARATION).is_file():
        return None
    path = Path(root) / name / DECLARATION
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or set(data) - {"task", "splits", "description"}:
        raise AnnotationError(
            f"{path}: expected an object with keys task, splits and optionally description, "
            f"got {data!r:.80}"
        )
    task, splits = data.get("task"), data.get("splits")
    if task not in TASKS:
        raise AnnotationError(f"{path}: task: got {task!r}; allowed: {', '.join(TASKS)}")
    if not isinstance(splits, list) or not splits or not set(splits) <= set(SPLITS):
        raise AnnotationError(
            f"{path}: splits: got {splits!r}; allowed: a non-empty list of {', '.join(SPLITS)}"
        )
    description = str(data.get("description", name))
    return DatasetSpec(name, task, tuple(s for s in SPLITS if s in splits), description)


def dataset_spec(name: str, root: str | Path | None = None) -> DatasetSpec:
    spec = find_spec(name, root)
    if spec is None:
        where = f"{Path(root) / name / DECLARATION}" if root is not None else "its dataset.json"
        raise DatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)}, or a new one "
            f"declared by {where}"
        )
    return spec


@dataclass(frozen=True)
class DatasetPaths:
    """Where one registered dataset lives under a data root."""

    root: Path
    spec: DatasetSpec

    @property
    def base(self) -> Path:
        return self.root / self.spec.name

    @property
    def video_dir(self) -> Path:
        return self.base / "videos"

    def annotation(self, split: Split) -> Path:
        if split not in self.spec.splits:
            raise DatasetError(
                f"dataset {self.spec.name!r} has no split {split!r}; "
                f"allowed: {', '.join(self.spec.splits)}"
            )
        return self.base / "annotations" / f"{split}.json"

    @property
    def answer_list(self) -> Path:
        if not self.spec.has_answer_list:
            raise DatasetError(f"dataset {self.spec.name!r} ({self.spec.task}) has no answer list")
        return self.base / "annotations" / "answer_list.json"

    def video(self, name: str) -> Path:
        return self.video_dir / name


def dataset_paths(root: str | Path, name: str) -> DatasetPaths:
    return DatasetPaths(Path(root), dataset_spec(name, root))


@dataclass(frozen=True)
class TextVideo:
    """One caption paired with one video (a training pair); `reversed_caption`, where the
    annotation has it, describes the same video played backwards."""

    video: str
    caption: str
    reversed_caption: str | None = None


@dataclass(frozen=True)
class RetrievalQuery:
    """One evaluation query: a text and every video it describes."""

    caption: str
    videos: tuple[str, ...]


@dataclass(frozen=True)
class QAItem:
    video: str
    question: str
    answer: str
    question_id: int
    # Optional: what the question asks about (the synthetic stand-ins write e.g. "color" or
    # "direction"), so accuracy can be reported per type; real datasets' files have none.
    question_type: str | None = None
    # Optional: the answer for the same video played backwards (the synthetic stand-ins).
    reversed_answer: str | None = None


def _read_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise MissingFileError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return data


def _field(path: Path, index: int, entry: Any, name: str) -> Any:
    if not isinstance(entry, dict):
        raise AnnotationError(f"{path}: entry {index}: expected an object, got {entry!r:.80}")
    if name not in entry:
        raise AnnotationError(f"{path}: entry {index}: missing field {name!r}")
    return entry[name]


def _bad(path: Path, index: int, name: str, allowed: str, value: Any) -> AnnotationError:
    return AnnotationError(
        f"{path}: entry {index}: field {name!r}: expected {allowed}, got {value!r:.80}"
    )


def _text(path: Path, index: int, entry: Any, name: str) -> str:
    """A non-empty string, or a non-empty list of them joined into one paragraph."""
    value = _field(path, index, entry, name)
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return " ".join(v.strip() for v in value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise _bad(path, index, name, "a non-empty string or list of strings", value)


def _videos(path: Path, index: int, entry: Any) -> tuple[str, ...]:
    value = _field(path, index, entry, "video")
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise _bad(path, index, "video", "a file name or a non-empty list of file names", value)
    return tuple(items)


def annotation_counts(path: str | Path) -> tuple[list[str], int]:
    """Videos referenced by one annotation file (first-appearance order) and its number of
    texts: questions for QA, sentences otherwise (a DiDeMo paragraph counts each sentence)."""
    path = Path(path)
    videos, texts = [], 0
    for i, entry in enumerate(_read_list(path)):
        videos.extend(_videos(path, i, entry))
        if isinstance(entry, dict) and "question" in entry:
            texts += 1
        else:
            value = _field(path, i, entry, "caption")
            texts += len(value) if isinstance(value, list) else 1
    return unique_videos(videos), texts


def load_text_video(path: str | Path) -> list[TextVideo]:
    """Training pairs; a multi-video entry becomes one pair per video."""
    path = Path(path)
    pairs = []
    for i, entry in enumerate(_read_list(path)):
        caption = _text(path, i, entry, "caption")
        reverse = None
        if isinstance(entry, dict) and "reversed_caption" in entry:
            reverse = _text(path, i, entry, "reversed_caption")
        pairs += [TextVideo(video, caption, reverse) for video in _videos(path, i, entry)]
    return pairs


def load_retrieval_queries(path: str | Path) -> list[RetrievalQuery]:
    """Evaluation queries; identical caption texts share their ground truth (the union of
    their videos), so a repeated caption never counts a correct video as a false match."""
    path = Path(path)
    raw = [
        (_text(path, i, entry, "caption"), _videos(path, i, entry))
        for i, entry in enumerate(_read_list(path))
    ]
    by_text: dict[str, list[str]] = {}
    for caption, videos in raw:
        bucket = by_text.setdefault(caption, [])
        bucket.extend(v for v in videos if v not in bucket)
    return [RetrievalQuery(caption, tuple(by_text[caption])) for caption, _ in raw]


def load_qa(path: str | Path) -> list[QAItem]:
    path = Path(path)
    items = []
    for i, entry in enumerate(_read_list(path)):
        videos = _videos(path, i, entry)
        if len(videos) != 1:
            raise _bad(path, i, "video", "a single file name", list(videos))
        qid = _field(path, i, entry, "question_id")
        if isinstance(qid, bool) or not isinstance(qid, int | str):
            raise _bad(path, i, "question_id", "an integer", qid)
        try:
            qid = int(qid)
        except ValueError:
            raise _bad(path, i, "question_id", "an integer", qid) from None
        question_type = entry.get("question_type")
        if question_type is not None and (not isinstance(question_type, str) or not question_type):
            raise _bad(path, i, "question_type", "a non-empty string", question_type)
        reversed_answer = None
        if isinstance(entry, dict) and "reversed_answer" in entry:
            reversed_answer = _text(path, i, entry, "reversed_answer")
        items.append(
            QAItem(
                video=videos[0],
                question=_text(path, i, entry, "question"),
                answer=_text(path, i, entry, "answer"),
                question_id=qid,
                question_type=question_type,
                reversed_answer=reversed_answer,
            )
        )
    return items


def load_answer_list(path: str | Path) -> list[str]:
    path = Path(path)
    answers = _read_list(path)
    for i, answer in enumerate(answers):
        if not isinstance(answer, str) or not answer.strip():
            raise AnnotationError(
                f"{path}: entry {i}: expected a non-empty string, got {answer!r:.80}"
            )
    if len(set(answers)) != len(answers):
        dupes = sorted({a for a in answers if answers.count(a) > 1})
        raise AnnotationError(f"{path}: duplicate answers {dupes[:10]}")
    return [a.strip() for a in answers]


def unique_videos(names: Sequence[str]) -> list[str]:
    """Video names in order of first appearance; the position is the stable video id."""
    return list(dict.fromkeys(names))
