"""Reference rows against values computed by hand on tiny splits."""

import pytest

from svitt.report.baselines import (
    chance_recall,
    majority_outcomes,
    prior_outcomes,
    question_type,
    uniform_chance,
)


def test_chance_recall_is_k_over_n_for_one_positive() -> None:
    assert chance_recall(100, [1] * 100, 1) == pytest.approx(1.0)
    assert chance_recall(100, [1] * 100, 10) == pytest.approx(10.0)
    assert chance_recall(4, [1], 10) == pytest.approx(100.0)  # k beyond N: every video


def test_chance_recall_with_several_positives() -> None:
    # 4 videos, 2 positives, k = 1: half the draws hit; k = 2: miss only if both
    # draws are the 2 negatives, 1 of C(4, 2) = 6 pairs.
    assert chance_recall(4, [2], 1) == pytest.approx(50.0)
    assert chance_recall(4, [2], 2) == pytest.approx(100.0 * 5 / 6)


def test_question_type_falls_back_to_the_first_word() -> None:
    assert question_type("What color is the ball?", None) == "what"
    assert question_type("is it moving?", "direction") == "direction"


def test_qa_baselines_on_a_tiny_split() -> None:
    train = [("color", "red"), ("color", "red"), ("color", "blue"), ("count", "two")] + [
        ("count", "three")
    ] * 3
    test = [("color", "red"), ("color", "blue"), ("count", "three"), ("shape", "three")]
    answers = ["red", "blue", "two", "three"]
    # uniform: every test answer is listed, 1 / 4 each
    assert uniform_chance([a for _, a in test], answers) == pytest.approx(25.0)
    # majority of training is "three" (3 of 7): right on the last two questions
    assert majority_outcomes([a for _, a in train], [a for _, a in test]).tolist() == [
        0.0,
        0.0,
        1.0,
        1.0,
    ]
    # prior: color -> red, count -> three, unseen shape -> overall majority "three"
    assert prior_outcomes(train, test).tolist() == [1.0, 0.0, 1.0, 1.0]


def test_an_answer_missing_from_the_list_counts_against_uniform_chance() -> None:
    assert uniform_chance(["red", "purple"], ["red", "blue"]) == pytest.approx(25.0)
