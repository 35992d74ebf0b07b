"""Retrieval and QA metrics on hand-built scores, where the right answer is known."""

import math

import pytest
import torch

from svitt.engine.qa import accuracy
from svitt.engine.retrieval import (
    candidate_scores,
    match_scores,
    positive_ranks,
    recall_metrics,
    rerank_top_k,
)
from svitt.models.clips import clip_similarity, ensemble_clip_scores, split_clips


def test_recall_on_a_hand_built_similarity_matrix():
    # 4 queries x 12 videos; the positive of query q sits at rank q*4 (0, 4, 8, 11).
    scores = torch.arange(12, 0, -1, dtype=torch.float).repeat(4, 1)  # video v has rank v
    positives = [[0], [4], [8], [11]]
    assert positive_ranks(scores, positives).tolist() == [0, 4, 8, 11]
    metrics = recall_metrics(scores, positives)
    assert metrics["r1"] == pytest.approx(25.0)
    assert metrics["r5"] == pytest.approx(50.0)
    assert metrics["r10"] == pytest.approx(75.0)
    assert metrics["mean_recall"] == pytest.approx(50.0)
    assert metrics["median_rank"] == pytest.approx(7.0)  # 1-based ranks 1, 5, 9, 12


def test_multi_positive_query_hits_when_any_positive_is_in_top_k():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7, 0.2, 0.3]])
    # positives 2 and 3: video 3 ranks third (0-based 2)
    assert positive_ranks(scores, [frozenset({2, 3})]).tolist() == [2]
    metrics = recall_metrics(scores, [frozenset({2, 3})], ks=(1, 2, 3))
    assert (metrics["r1"], metrics["r2"], metrics["r3"]) == (0.0, 0.0, 100.0)


def test_ties_are_broken_by_video_order():
    scores = torch.zeros(2, 5)
    assert positive_ranks(scores, [[3], [0]]).tolist() == [3, 0]


def test_bad_ground_truth_is_rejected():
    with pytest.raises(ValueError, match="at least one positive"):
        recall_metrics(torch.zeros(1, 3), [[]])
    with pytest.raises(ValueError, match="2 score rows for 1 queries"):
        recall_metrics(torch.zeros(2, 3), [[0]])


def test_rerank_puts_top_k_first_by_match_score_and_keeps_the_rest_in_order():
    similarity = torch.tensor([[0.9, 0.1, 0.8, 0.5, 0.7]])
    top_index = similarity.topk(3, dim=1).indices  # videos 0, 2, 4
    match = torch.tensor([[-2.0, 3.0, 0.5]])  # VTM prefers video 2, then 4, then 0
    final = rerank_top_k(similarity, top_index, match)
    assert final.argsort(dim=1, descending=True).tolist() == [[2, 4, 0, 3, 1]]
    # The re-scored videos keep exactly their VTM scores.
    assert final[0, [0, 2, 4]].tolist() == [-2.0, 3.0, 0.5]


def test_match_scores_add_vtm_probability_to_vtc_similarity():
    similarity = torch.tensor([[0.5, -0.2]])
    logits = torch.tensor([[0.0, 2.0]])
    expected = torch.sigmoid(logits) + similarity
    assert torch.allclose(match_scores(similarity, logits), expected)


def test_a_video_only_vtm_head_cannot_erase_the_vtc_ranking():
    # Two queries whose VTC similarity ranks their own video first; an untrained VTM head
    # that gives every query the same, nearly flat scores (by the video alone) must not
    # make both queries rank the videos in the same order.
    similarity = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.9, 0.2]])
    top_index = similarity.topk(3, dim=1).indices
    video_bias = torch.tensor([0.3, 0.1, 0.2])  # VTM logit per video, whatever the query
    logits = video_bias[top_index]
    top_similarity = similarity.gather(1, top_index)
    final = rerank_top_k(similarity, top_index, match_scores(top_similarity, logits))
    assert positive_ranks(final, [[0], [1]]).tolist() == [0, 0]
    assert recall_metrics(final, [[0], [1]])["r1"] == pytest.approx(100.0)


def test_itm_logit_rerank_ranks_candidates_by_the_logit_alone():
    """The release: the top k by VTC, then ranked by the raw match logit."""
    similarity = torch.tensor([[0.9, 0.1, 0.8]])
    top_index = torch.tensor([[0, 2]])
    logits = torch.tensor([[-1.0, 0.5]])
    top_similarity = similarity.gather(1, top_index)
    assert candidate_scores(top_similarity, logits, "itm_logit").tolist() == [[-1.0, 0.5]]
    ours = candidate_scores(top_similarity, logits, "sigmoid_plus_cosine")
    assert torch.equal(ours, match_scores(top_similarity, logits))
    # A cosine gap (0.7) larger than the probability gap (0.35) keeps VTC's order in ours.
    wide = torch.tensor([[0.9, 0.2]])
    assert candidate_scores(wide, logits, "sigmoid_plus_cosine").argmax().item() == 0
    assert candidate_scores(wide, logits, "itm_logit").argmax().item() == 1
    with pytest.raises(ValueError, match="allowed"):
        candidate_scores(top_similarity, logits, "vtc")


def test_clip_ensemble_known_answers():
    scores = torch.tensor([[0.0, 2.0], [math.log(3.0), -1.0]])  # 2 clips x 2 pairs
    lse = ensemble_clip_scores(scores, "lse")
    assert lse.tolist() == pytest.approx([math.log(4.0), math.log(math.exp(2) + math.exp(-1))])
    assert ensemble_clip_scores(scores, "mean").tolist() == pytest.approx([math.log(3) / 2, 0.5])
    one = torch.tensor([[0.3, -7.25]])
    for rule in ("lse", "mean"):  # one clip: the plain evaluation, bit for bit
        assert torch.equal(ensemble_clip_scores(one, rule), one[0])
    with pytest.raises(ValueError, match=r"eval\.clip_ensemble"):
        ensemble_clip_scores(scores, "max")


def test_clip_similarity_averages_cosines_over_clips():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    video = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.6, 0.8]]])  # [V, C, E]
    expected = torch.tensor([[0.5, 0.6], [0.5, 0.8]])
    torch.testing.assert_close(clip_similarity(text, video), expected)
    single = video[:, :1]
    assert torch.equal(clip_similarity(text, single), text @ single[:, 0].T)


def test_split_clips_cuts_consecutive_clips():
    video = torch.arange(2 * 6).view(2, 6)  # [B, 3 clips * 2 frames]
    clips = split_clips(video, 3)
    assert [c.tolist() for c in clips] == [[[0, 1], [6, 7]], [[2, 3], [8, 9]], [[4, 5], [10, 11]]]
    assert all(c.is_contiguous() for c in clips)
    with pytest.raises(ValueError, match=r"eval\.num_clips"):
        split_clips(video, 4)


def test_qa_accuracy_is_exact_match_and_answers_outside_the_list_never_match():
    assert accuracy([1, 2, 3, 0], [1, 2, 0, 0]) == pytest.approx(75.0)
    assert accuracy([-1, 2], [-1, 2]) == pytest.approx(50.0)  # gold -1: not in the answer list
    with pytest.raises(ValueError, match="equal non-empty"):
        accuracy([1, 2], [1])
