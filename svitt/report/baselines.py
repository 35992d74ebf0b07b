"""Reference rows: what a table's metric is without looking at the video.

Computed from the dataset's annotation files alone, so each table can show them beside the
models as labelled baselines:

    retrieval   chance: the expected R@k of a random ranking (K / N for one positive)
    QA          uniform chance over the answer list; the majority answer of the training
                split; the question-only prior: the most common training answer of each
                question type

A question's type is its `question_type` where the annotation has one (the synthetic
stand-ins), else its first word ("what", "who", "how", ...): a prior that reads the
question but never the video.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from svitt.data.annotations import (
    dataset_paths,
    load_answer_list,
    load_qa,
    load_retrieval_queries,
    unique_videos,
)
from svitt.data.synthetic import TEMPORAL_QUESTION_TYPES


def chance_recall(num_videos: int, positives: Sequence[int], k: int) -> float:
    """Expected R@k in percent of a uniformly random ranking of `num_videos` videos, for
    queries with `positives[q]` positive videos each: a query misses only when all k
    draws are negatives, C(N - P, k) / C(N, k)."""
    if num_videos < 1 or not positives:
        raise ValueError("chance recall: need at least one video and one query")
    k = min(k, num_videos)
    hits = [1.0 - math.comb(num_videos - p, k) / math.comb(num_videos, k) for p in positives]
    return 100.0 * float(np.mean(hits))


def question_type(question: str, annotated: str | None) -> str:
    """The annotated type, else the question's first word in lower case."""
    if annotated:
        return annotated
    words = question.strip().split()
    return words[0].lower().strip("?,.") if words else ""


def most_common(answers: Iterable[str]) -> str:
    """The most frequent answer; ties go to the alphabetically first, so it is reproducible."""
    counts = Counter(answers)
    if not counts:
        raise ValueError("most common answer: no answers")
    best = max(counts.values())
    return min(answer for answer, count in counts.items() if count == best)


def uniform_chance(test_answers: Sequence[str], answer_list: Sequence[str]) -> float:
    """Expected accuracy in percent of a uniform draw from the answer list (an answer not in
    the list is never right)."""
    listed = set(answer_list)
    return (
        100.0
        * sum(answer in listed for answer in test_answers)
        / (len(answer_list) * len(test_answers))
    )


def majority_outcomes(train_answers: Iterable[str], test_answers: Sequence[str]) -> np.ndarray:
    """Per test question, 1.0 where the training split's most common answer is right."""
    guess = most_common(train_answers)
    return np.array([answer == guess for answer in test_answers], dtype=np.float64)


def prior_outcomes(train: Iterable[tuple[str, str]], test: Sequence[tuple[str, str]]) -> np.ndarray:
    """Per test question, 1.0 where the most common training answer of its type is right;
    `train` and `test` are (question type, answer) pairs. A type unseen in training gets
    the overall majority answer."""
    train = list(train)
    by_type: dict[str, list[str]] = {}
    for kind, answer in train:
        by_type.setdefault(kind, []).append(answer)
    guesses = {kind: most_common(answers) for kind, answers in by_type.items()}
    fallback = most_common(answer for _, answer in train)
    return np.array(
        [answer == guesses.get(kind, fallback) for kind, answer in test], dtype=np.float64
    )


# --- from a dataset's annotation files ----------------------------------------------------


def retrieval_reference(root: str | Path, name: str, ks: Sequence[int]) -> dict[str, float]:
    """Chance R@k (`r1`, ...) and their mean (`mean_recall`) on the test split of `name`."""
    queries = load_retrieval_queries(dataset_paths(root, name).annotation("test"))
    num_videos = len(unique_videos([v for q in queries for v in q.videos]))
    positives = [len(set(q.videos)) for q in queries]
    out = {f"r{k}": chance_recall(num_videos, positives, k) for k in ks}
    out["mean_recall"] = sum(out[f"r{k}"] for k in ks) / len(ks)
    return out


QA_BASELINES = {
    "chance": "chance",
    "majority": "majority answer",
    "prior": "question-only prior",
}


QUESTION_GROUPS = ("temporal", "static")


def in_group(annotated_type: str | None, group: str | None) -> bool:
    """Whether a question of annotated type `annotated_type` belongs to `group`: "temporal"
    (its answer depends on the frame order: `TEMPORAL_QUESTION_TYPES`), "static" (typed,
    not temporal), or None (every question)."""
    if group is None:
        return True
    if group not in QUESTION_GROUPS:
        raise ValueError(f"question group {group!r}; allowed: {list(QUESTION_GROUPS)}")
    if annotated_type is None:
        return False
    return (annotated_type in TEMPORAL_QUESTION_TYPES) == (group == "temporal")


def group_question_ids(root: str | Path, name: str, group: str) -> frozenset[int] | None:
    """The test question ids of `group`; None when the test split has no question types
    (real datasets' files), so the group cannot be told."""
    test = load_qa(dataset_paths(root, name).annotation("test"))
    if not any(q.question_type for q in test):
        return None
    return frozenset(q.question_id for q in test if in_group(q.question_type, group))


def qa_reference(root: str | Path, name: str, group: str | None = None) -> dict[str, float]:
    """Accuracy in percent of each of `QA_BASELINES` on the test questions of `name` (those
    of `group`, see `in_group`), the majority and the prior learned from its training split."""
    paths = dataset_paths(root, name)
    train = load_qa(paths.annotation("train"))
    test = [q for q in load_qa(paths.annotation("test")) if in_group(q.question_type, group)]
    if not test:
        return {}
    typed_train = [(question_type(q.question, q.question_type), q.answer) for q in train]
    typed_test = [(question_type(q.question, q.question_type), q.answer) for q in test]
    answers = [answer for _, answer in typed_test]
    return {
        "chance": uniform_chance(answers, load_answer_list(paths.answer_list)),
        "majority": 100.0 * float(majority_outcomes((a for _, a in typed_train), answers).mean()),
        "prior": 100.0 * float(prior_outcomes(typed_train, typed_test).mean()),
    }
