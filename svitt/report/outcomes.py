"""Per-query outcomes of an evaluation run: `outcomes.json`, next to the run's `metrics.json`.

Every metric of the tables is a mean over test queries, so an evaluation writes what each query
scored and the report layer bootstraps intervals and compares runs without a model:

    retrieval: {"task": "retrieval", "query": [q0, ...], "rank": [r0, ...]}
    QA:        {"task": "qa", "question_id": [...], "correct": [0/1, ...]}

`query` is each scored text query's index in the test annotation and `rank` the 0-based rank
of its best-ranked positive video: R@k = mean(rank < k), mean recall = the mean over k of R@k.
Accuracy = mean(correct).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svitt.config import RECALL_KS
from svitt.errors import MissingFileError, UnreadableFileError
from svitt.plan.runs import Profile, Run
from svitt.plan.specs import SpecError
from svitt.report.intervals import mean_recall_outcomes, recall_outcomes

RETRIEVAL_METRICS = {f"r{k}": k for k in RECALL_KS}  # metric -> k
METRICS = (*RETRIEVAL_METRICS, "mean_recall", "accuracy")
_FIELDS = {"retrieval": ("query", "rank"), "qa": ("question_id", "correct")}


@dataclass(frozen=True)
class Outcomes:
    """One run's per-query outcomes: the queries' ids and what each scored."""

    path: Path
    task: str  # retrieval | qa
    ids: tuple  # query index (retrieval) or question id (QA), in scoring order
    scores: np.ndarray  # rank of the first positive (retrieval) or 1/0 correct (QA)

    def values(self, metric: str) -> np.ndarray:
        """Per-query values in [0, 1] whose mean is `metric` (r1, r5, r10, mean_recall,
        accuracy) of the run, as a fraction."""
        if metric not in METRICS:
            raise SpecError(f"unknown metric {metric!r}; allowed: {list(METRICS)}")
        allowed = [*RETRIEVAL_METRICS, "mean_recall"] if self.task == "retrieval" else ["accuracy"]
        if metric not in allowed:
            raise SpecError(
                f"{self.path}: no metric {metric!r} in {self.task} outcomes; allowed: {allowed}"
            )
        if metric == "accuracy":
            return self.scores.astype(np.float64)
        if metric == "mean_recall":
            return mean_recall_outcomes(self.scores, RECALL_KS)
        return recall_outcomes(self.scores, RETRIEVAL_METRICS[metric])


def read_outcomes(path: str | Path) -> Outcomes:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"outcomes file not found: {path} (run its evaluation job first)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UnreadableFileError(f"{path}: not JSON ({err})") from None
    task = data.get("task") if isinstance(data, dict) else None
    if task not in _FIELDS:
        raise UnreadableFileError(f"{path}: key 'task' must be one of {list(_FIELDS)}")
    fields = _FIELDS[task]
    missing = [key for key in fields if not isinstance(data.get(key), list)]
    if missing:
        raise UnreadableFileError(f"{path}: {task} outcomes need lists {list(fields)}")
    lengths = {len(data[key]) for key in fields}
    if len(lengths) != 1 or 0 in lengths:
        raise UnreadableFileError(f"{path}: {list(fields)} must be non-empty and of one length")
    ids, scores = data[fields[0]], data[fields[1]]
    return Outcomes(path, task, tuple(ids), np.asarray(scores, dtype=np.int64))


def outcomes_path(profile: Profile, run: Run) -> str:
    return f"{profile.run_dir(run)}/outcomes.json"
