"""Text-to-video retrieval: `eval-retrieval` (zero-shot) and `finetune-retrieval`.

Every test video is ranked by the VTC similarity of its embedding to the query's; with a
matching head the top `eval.k_test` are re-scored and ranked above the rest (Frozen ranks by
cosine similarity alone). The re-scoring rule is `eval.rerank`: `sigmoid_plus_cosine` (ours,
as in BLIP) adds a candidate's VTM match probability (sigmoid of the VTM logit) to its VTC
cosine similarity (`match_scores`), so the VTM head refines the VTC ranking instead of
replacing it (an under-trained VTM head scores a pair by the video alone and would rank every
query's candidates the same way); `itm_logit` (the release) ranks them by the match logit
alone. With `eval.num_clips` > 1 every video is read as that many consecutive clips
(`svitt.models.clips`): similarities are averaged over the clips, match logits combined by
`eval.clip_ensemble`. The VTC-only recall is reported too (`vtc_r1`, ...). A query hits at k
when any of its positive videos is among the first k (SSv2-Label captions have several).
DiDeMo queries are whole paragraphs (the data layer joins the sentences). Ties are broken by
video order, so the metrics are deterministic.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from svitt.config import RECALL_KS, ModelConfig, Rerank, RunConfig
from svitt.engine import lifecycle
from svitt.engine.pretrain import train_video_text
from svitt.engine.stage import Results, Run, TrainSummary, autocast, downstream_stages, progress
from svitt.models.clips import clip_similarity, ensemble_clip_scores, split_clips

# --- metrics (pure) ---------------------------------------------------------------------------


def positive_ranks(scores: Tensor, positives: Sequence[Sequence[int] | frozenset[int]]) -> Tensor:
    """0-based rank [Q] of each query's best-ranked positive video (higher score first,
    ties in video order)."""
    if scores.shape[0] != len(positives):
        raise ValueError(f"{scores.shape[0]} score rows for {len(positives)} queries")
    if any(len(p) == 0 for p in positives):
        raise ValueError("every query needs at least one positive video")
    order = scores.argsort(dim=1, descending=True, stable=True)
    rank_of = torch.empty_like(order)
    rank_of.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order).contiguous())
    return torch.stack([rank_of[q, sorted(p)].min() for q, p in enumerate(positives)])


def recall_metrics(
    scores: Tensor,
    positives: Sequence[Sequence[int] | frozenset[int]],
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """R@k in percent for each k, their mean ("mean_recall"), and the median rank (1-based)."""
    ranks = positive_ranks(scores, positives)
    out = {f"r{k}": 100.0 * (ranks < k).double().mean().item() for k in ks}
    out["mean_recall"] = sum(out[f"r{k}"] for k in ks) / len(ks)
    out["median_rank"] = (ranks + 1).double().quantile(0.5).item()
    return out


def match_scores(top_similarity: Tensor, vtm_logits: Tensor) -> Tensor:
    """Score of each re-scored candidate: VTM match probability + VTC cosine similarity.

    Both terms are bounded (probability in [0, 1], cosine in [-1, 1]), so neither head can
    overrule the other by scale alone."""
    return torch.sigmoid(vtm_logits.float()) + top_similarity.float()


def candidate_scores(top_similarity: Tensor, vtm_logits: Tensor, rule: Rerank) -> Tensor:
    """Score of each re-scored candidate by `eval.rerank`: `match_scores`
    (`sigmoid_plus_cosine`) or the match logit alone (`itm_logit`, the release)."""
    if rule == "itm_logit":
        return vtm_logits.float()
    if rule == "sigmoid_plus_cosine":
        return match_scores(top_similarity, vtm_logits)
    raise ValueError(f"rerank rule {rule!r}; allowed: sigmoid_plus_cosine, itm_logit")


def rerank_top_k(similarity: Tensor, top_index: Tensor, top_scores: Tensor) -> Tensor:
    """Scores [Q, V] where each query's re-scored candidates (`top_index` [Q, k], their
    `top_scores`) rank above all others by that score; the others keep their similarity order."""
    floor = top_scores.min(dim=1, keepdim=True).values - 1.0
    rest = similarity - similarity.max(dim=1, keepdim=True).values + floor
    return rest.scatter(1, top_index, top_scores.to(rest.dtype))


# --- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(run: Run, model: nn.Module, cfg: RunConfig) -> Results:
    """Retrieval metrics of `model` on the test split of `cfg.data.dataset`."""
    from svitt.data.datasets import retrieval_eval

    env = run.env
    data = retrieval_eval(cfg, run.tokenizer)
    model.eval().to(env.device)
    num_clips, ensemble = cfg.eval.num_clips, cfg.eval.clip_ensemble
    video_embeds, video_tokens, kept = [], [], []  # per batch: [B, C, E], [B, C, N, Dv]
    for batch in progress(env, iterable=data.videos, desc="encode videos", unit="batch"):
        with autocast(env):
            encoded = [
                model.encode_video(clip)
                for clip in split_clips(batch["video"].to(env.device), num_clips)
            ]
        video_embeds.append(torch.stack([e.embed.float() for e in encoded], dim=1))
        video_tokens.append(torch.stack([e.tokens for e in encoded], dim=1))
        kept.append(batch["video_id"])
    kept_ids = torch.cat(kept).tolist()
    row_of = {video: row for row, video in enumerate(kept_ids)}
    queries = [
        (q, [row_of[v] for v in sorted(truth) if v in row_of])
        for q, truth in enumerate(data.data.ground_truth)
    ]
    # A query whose positives were all unreadable cannot be scored (only with allow_bad).
    queries = [(q, p) for q, p in queries if p]
    query_index = torch.tensor([q for q, _ in queries], dtype=torch.long)
    positives = [p for _, p in queries]
    video_embed = torch.cat(video_embeds)
    tokens = torch.cat(video_tokens)

    text_embeds, text_hidden = [], []
    ids_all = data.text_ids[query_index].to(env.device)
    mask_all = data.text_mask[query_index].to(env.device)
    for start in range(0, len(ids_all), cfg.eval.batch_size):
        ids = ids_all[start : start + cfg.eval.batch_size]
        mask = mask_all[start : start + cfg.eval.batch_size]
        with autocast(env):
            encoded = model.encode_text(ids, mask)
        text_embeds.append(encoded.embed.float())
        text_hidden.append(encoded.hidden)
    similarity = clip_similarity(torch.cat(text_embeds), video_embed)
    scores = similarity
    if model.has_matching_head:
        hidden = torch.cat(text_hidden)
        k = min(cfg.eval.k_test, similarity.shape[1])
        top_index = similarity.topk(k, dim=1).indices
        top_scores = torch.empty(top_index.shape, device=similarity.device)
        bar = progress(env, total=len(top_index), desc="VTM re-rank", unit="query")
        per_chunk = max(1, cfg.eval.batch_size // k)
        for start in range(0, len(top_index), per_chunk):
            rows = torch.arange(start, min(start + per_chunk, len(top_index)), device=hidden.device)
            videos = top_index[rows].flatten()
            texts = rows.repeat_interleave(k)
            with autocast(env):
                per_clip = torch.stack(
                    [
                        model.match_logits(tokens[videos, clip], hidden[texts], mask_all[texts])
                        for clip in range(num_clips)
                    ]
                )
            logits = ensemble_clip_scores(per_clip.float(), ensemble)
            top_scores[rows] = candidate_scores(
                similarity[rows.unsqueeze(1), top_index[rows]],
                logits.view(len(rows), k),
                cfg.eval.rerank,
            )
            bar.update(len(rows))
        bar.close()
        scores = rerank_top_k(similarity, top_index, top_scores)
    metrics = recall_metrics(scores.cpu(), positives)
    if model.has_matching_head:
        vtc_only = recall_metrics(similarity.cpu(), positives)
        metrics.update({f"vtc_{name}": value for name, value in vtc_only.items()})
    run.skipped.extend(data.videos.skipped)
    metrics["num_queries"] = len(positives)
    metrics["num_videos"] = len(kept_ids)
    metrics["k_test"] = cfg.eval.k_test if model.has_matching_head else 0
    ranks = positive_ranks(scores.cpu(), positives)
    outcomes = {"task": "retrieval", "query": query_index.tolist(), "rank": ranks.tolist()}
    return Results(metrics, outcomes)


# --- stages -----------------------------------------------------------------------------------


def build(model_cfg: ModelConfig) -> nn.Module:
    from svitt.models.factory import create_model

    return create_model(model_cfg)


def finetune(run: Run) -> TrainSummary | None:
    trained = train_video_text(run, "retrieval")
    return None if trained is None else trained[0]


STAGES = downstream_stages("retrieval", build, finetune, evaluate)


def run(args: argparse.Namespace) -> int:
    return lifecycle.run(STAGES[args.command], args)
