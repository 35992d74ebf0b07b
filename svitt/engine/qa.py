"""Video QA: `finetune-qa` (train the answer decoder, then evaluate) and `eval-qa`.

Answers are chosen from the dataset's answer list: the `eval.answer_top_k` candidates with
the most probable first token are re-ranked by the likelihood of the whole answer; with
`eval.num_clips` > 1 both scores are combined over the clips by `eval.clip_ensemble`.
Accuracy is exact match in percent; a question whose answer is not in the list counts as wrong.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from svitt.config import ModelConfig, RunConfig
from svitt.engine import lifecycle
from svitt.engine.loop import train
from svitt.engine.stage import Results, Run, TrainSummary, autocast, downstream_stages, progress

# --- metrics (pure) ---------------------------------------------------------------------------


def correct_answers(predicted: Sequence[int] | Tensor, gold: Sequence[int] | Tensor) -> Tensor:
    """Per question, whether the predicted answer-list index is the gold one; a gold index
    of -1 (answer not in the list) is never matched."""
    predicted, gold = torch.as_tensor(predicted), torch.as_tensor(gold)
    if predicted.shape != gold.shape or predicted.ndim != 1 or len(gold) == 0:
        raise ValueError(
            f"accuracy: need two equal non-empty 1-d index lists, got {list(predicted.shape)} "
            f"and {list(gold.shape)}"
        )
    return (predicted == gold) & (gold >= 0)


def accuracy(predicted: Sequence[int] | Tensor, gold: Sequence[int] | Tensor) -> float:
    """Exact-match accuracy in percent (`correct_answers`)."""
    return 100.0 * correct_answers(predicted, gold).double().mean().item()


# --- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(run: Run, model: nn.Module, cfg: RunConfig) -> Results:
    from svitt.data.datasets import qa_eval

    env = run.env
    data = qa_eval(cfg, run.tokenizer)
    model.eval().to(env.device)
    answer_ids, answer_mask = data.answer_ids.to(env.device), data.answer_mask.to(env.device)
    predicted, gold, question_ids, videos = [], [], [], set()
    for batch in progress(env, iterable=data.questions, desc="answer", unit="batch"):
        if len(batch["video"]) == 0:
            continue
        with autocast(env):
            choice = model.rank_answers(
                batch["video"].to(env.device),
                batch["question_ids"].to(env.device),
                batch["question_mask"].to(env.device),
                answer_ids,
                answer_mask,
                cfg.eval.answer_top_k,
                cfg.eval.num_clips,
                cfg.eval.clip_ensemble,
            )
        predicted.append(choice.cpu())
        gold.append(batch["answer_index"])
        question_ids.append(batch["question_id"])
        videos.update(batch["video_id"].tolist())
    run.skipped.extend(data.questions.skipped)
    predicted_all, gold_all = torch.cat(predicted), torch.cat(gold)
    correct = correct_answers(predicted_all, gold_all)
    outcomes = {
        "task": "qa",
        "question_id": torch.cat(question_ids).tolist(),
        "correct": correct.int().tolist(),
    }
    metrics = {
        "accuracy": accuracy(predicted_all, gold_all),
        "num_queries": len(gold_all),
        "num_videos": len(videos),
        "num_answers": len(data.answers),
        "answers_in_list": 100.0 * (gold_all >= 0).double().mean().item(),
        "answer_top_k": cfg.eval.answer_top_k,
    }
    return Results(metrics, outcomes)


# --- stages -----------------------------------------------------------------------------------


def build(model_cfg: ModelConfig) -> nn.Module:
    """VideoQA; a pre-trained video-text checkpoint starts its encoders and decoder
    (`svitt.models.checkpoints.load_checkpoint_weights`)."""
    from svitt.models.factory import create_qa_model

    return create_qa_model(model_cfg)


def finetune(run: Run) -> TrainSummary | None:
    """Train the answer decoder (and the encoders) on `data.dataset`'s train split."""
    from svitt.data.datasets import training_data
    from svitt.models.checkpoints import load_checkpoint_weights

    model = build(run.cfg.model)
    if run.init_from is not None:
        load_checkpoint_weights(model, run.init_from)
    dataset, collate = training_data(run.cfg, run.tokenizer, "qa")
    return train(run, model, dataset, collate, lambda m, batch: m(batch))


STAGES = downstream_stages("qa", build, finetune, evaluate)


def run(args: argparse.Namespace) -> int:
    return lifecycle.run(STAGES[args.command], args)
