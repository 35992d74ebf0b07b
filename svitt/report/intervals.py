"""95 % confidence intervals on per-query outcomes: one cell, and the paired difference of two.

Every metric of the tables is a mean over test queries of a per-query outcome: R@k is the
mean of "the first positive ranks below k", mean recall the mean over k of those, accuracy
the mean of "answered correctly". So one function serves them all: the percentile bootstrap
over queries (`scipy.stats.bootstrap`), resampled with a fixed seed so that a table is the
same bytes on every run. A difference between two runs on the same test queries (hybrid -
dense, 8 - 4 frames, a probe's drop) resamples the queries once for both runs (`paired`):
the run-to-run agreement on easy and hard queries then cancels, as it should.

The percentile method, not BCa: BCa is undefined where every resample is equal (all hits,
two identical runs), and those are exactly the cases a reader checks first.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A statistic in percent and its bootstrap interval."""

    value: float
    low: float
    high: float

    def compact(self, digits: int = 1) -> str:
        """`18.0 [10.0, 26.0]`, as the Markdown and LaTeX tables show it."""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _as_outcomes(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"{name}: need a non-empty 1-d list of per-query outcomes")
    return array


def _bootstrap_mean(values: np.ndarray, seed: int) -> Interval:
    mean = float(values.mean())
    if np.all(values == values[0]):  # every resample is this one value
        return Interval(100.0 * mean, 100.0 * mean, 100.0 * mean)
    ci = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return Interval(100.0 * mean, 100.0 * float(ci.low), 100.0 * float(ci.high))


def mean_interval(outcomes: Sequence[float] | np.ndarray, seed: int = SEED) -> Interval:
    """Mean of per-query outcomes in [0, 1] (hits, correct answers) in percent, with its
    95 % percentile-bootstrap interval over queries."""
    return _bootstrap_mean(_as_outcomes(outcomes, "outcomes"), seed)


def paired_difference(
    first: Sequence[float] | np.ndarray, second: Sequence[float] | np.ndarray, seed: int = SEED
) -> Interval:
    """mean(first) - mean(second) in percent points, with its paired 95 % interval: both
    runs are outcomes on the same queries in the same order."""
    return paired_sum([(1, first), (-1, second)], seed)


def paired_sum(
    terms: Sequence[tuple[int, Sequence[float] | np.ndarray]], seed: int = SEED
) -> Interval:
    """sum(sign * mean(outcomes)) over `terms` in percent points, with its paired 95 %
    interval: every term's outcomes are on the same queries in the same order, so the
    per-query signed sum is resampled (a difference of differences, such as one model's
    drop against another's, is one such sum)."""
    arrays = [
        (sign, _as_outcomes(values, f"term {i + 1}")) for i, (sign, values) in enumerate(terms)
    ]
    if not arrays or any(sign not in (1, -1) for sign, _ in arrays):
        raise ValueError("paired sum: need one or more terms, each with sign +1 or -1")
    lengths = [len(values) for _, values in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(f"paired sum: {lengths} outcomes per term; need the same queries")
    total = np.zeros(lengths[0])
    for sign, values in arrays:
        total = total + values if sign > 0 else total - values
    # Mean-recall outcomes are thirds: round off the float residue of terms that cancel, so
    # that queries where the runs agree count as exactly 0.
    return _bootstrap_mean(np.round(total, 12), seed)


def recall_outcomes(ranks: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    """Per-query hit at k (1.0 or 0.0) from the 0-based rank of each query's first positive."""
    return (np.asarray(ranks) < k).astype(np.float64)


def mean_recall_outcomes(ranks: Sequence[int] | np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """Per-query mean of the hits at each k: its mean over queries is the mean recall."""
    return np.mean([recall_outcomes(ranks, k) for k in ks], axis=0)


def seed_std(values: Sequence[float]) -> float | None:
    """The sample standard deviation of a metric over seeds (next to the pooled interval);
    None for one seed."""
    return statistics.stdev(values) if len(values) > 1 else None
