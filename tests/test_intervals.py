"""The bootstrap intervals against cases with a known answer."""

import numpy as np
import pytest

from svitt.report.intervals import (
    mean_interval,
    mean_recall_outcomes,
    paired_difference,
    paired_sum,
    recall_outcomes,
)


def test_all_hits_is_exactly_one_hundred() -> None:
    interval = mean_interval(np.ones(100))
    assert (interval.value, interval.low, interval.high) == (100.0, 100.0, 100.0)


def test_identical_runs_differ_by_exactly_zero() -> None:
    outcomes = np.random.default_rng(1).integers(0, 2, 200).astype(float)
    interval = paired_difference(outcomes, outcomes)
    assert (interval.value, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_interval_matches_the_normal_approximation() -> None:
    # 18 hits in 100 queries: the binomial standard error is 3.84 points, so the 95 %
    # interval spans about +-7.5 points around 18.
    outcomes = np.array([1.0] * 18 + [0.0] * 82)
    interval = mean_interval(outcomes)
    assert interval.value == pytest.approx(18.0)
    assert interval.low == pytest.approx(18.0 - 7.5, abs=1.5)
    assert interval.high == pytest.approx(18.0 + 7.5, abs=1.5)
    assert mean_interval(outcomes) == interval  # fixed seed: the same bytes every run


def test_pairing_narrows_the_interval_of_correlated_runs() -> None:
    rng = np.random.default_rng(2)
    first = rng.integers(0, 2, 100).astype(float)
    second = first.copy()
    second[:5] = 1.0 - second[:5]  # the runs disagree on five queries only
    paired = paired_difference(first, second)
    unpaired_width = (mean_interval(first).high - mean_interval(first).low) * np.sqrt(2)
    assert paired.high - paired.low < unpaired_width / 2
    assert paired.low <= paired.value <= paired.high


def test_recall_outcomes_from_ranks() -> None:
    ranks = [0, 3, 7, 20]
    assert recall_outcomes(ranks, 1).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert recall_outcomes(ranks, 5).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert mean_recall_outcomes(ranks, (1, 5, 10)).tolist() == pytest.approx(
        [1.0, 2 / 3, 1 / 3, 0.0]
    )


def test_unpaired_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="same queries"):
        paired_difference([1.0, 0.0], [1.0])


def test_difference_of_differences_that_cancel_is_exactly_zero() -> None:
    # Mean-recall outcomes are thirds: the two runs' drops are equal on every query, but
    # (2/3 - 1/3) - (1 - 2/3) is not 0 in floating point.
    ks = (1, 5, 10)
    a, b = mean_recall_outcomes([3] * 50, ks), mean_recall_outcomes([7] * 50, ks)
    c, d = mean_recall_outcomes([0] * 50, ks), mean_recall_outcomes([3] * 50, ks)
    interval = paired_sum([(1, a), (-1, b), (-1, c), (1, d)])
    assert (interval.value, interval.low, interval.high) == (0.0, 0.0, 0.0)
    first, second = np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0])
    assert paired_sum([(1, first), (-1, second)]) == paired_difference(first, second)
    with pytest.raises(ValueError, match=r"sign \+1 or -1"):
        paired_sum([(2, first)])
