"""Video QA: `finetune-qa` (train the answer decoder, then evaluate) and `eval-qa`.

Answers are chosen from the dataset's answer list: the `eval.answer_top_k` candidates with
the most probable first token are re-ranked by the likelihood of the whole answer; with
`eval.num_clips` > 1 both scores are combined over the clips by `eval.clip_ensemble`.
Accuracy is exact match in percent; a question whose answer is not in the list counts as wrong.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from svitt.config import ModelConfig, RunConfig
from svitt.engine import runner

QA_VISION_PREFIX = "encoder.vision."


# --- metrics (pure) ---------------------------------------------------------------------------


def accuracy(predicted: Sequence[int] | Tensor, gold: Sequence[int] | Tensor) -> float:
    """Exact-match accuracy in percent of answer-list indices; a gold index of -1 (answer not
    in the list) is never matched."""
    predicted, gold = torch.as_tensor(predicted), torch.as_tensor(gold)
    if predicted.shape != gold.shape or predicted.ndim != 1 or len(gold) == 0:
        raise ValueError(
            f"accuracy: need two equal non-empty 1-d index lists, got {list(predicted.shape)} "
            f"and {list(gold.shape)}"
        )
    hits = (predicted == gold) & (gold >= 0)
    return 100.0 * hits.double().mean().item()


# --- weights ----------------------------------------------------------------------------------


def load_qa_weights(model: nn.Module, path: Path, model_cfg: ModelConfig) -> None:
    """A fine-tuned QA checkpoint loads as is; a pre-trained video-text checkpoint initialises
    the encoders and the decoder's text layers (VideoQA.load_pretrained)."""
    from svitt.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    frames = runner.checkpoint_frames(state, path)
    if any(key.startswith(QA_VISION_PREFIX) for key in state["model"]):
        weights = runner.resized(state["model"], frames, model_cfg, QA_VISION_PREFIX)
        runner.load_strict(model, weights, path)
    else:
        model.load_pretrained(runner.resized(state["model"], frames, model_cfg, "vision."))


# --- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(run: runner.Run, model: nn.Module, cfg: RunConfig) -> dict[str, Any]:
    from svitt.data.datasets import qa_eval

    env = run.env
    data = qa_eval(cfg, run.tokenizer)
    model.eval().to(env.device)
    answer_ids, answer_mask = data.answer_ids.to(env.device), data.answer_mask.to(env.device)
    predicted, gold, videos = [], [], set()
    for batch in runner.progress(env, iterable=data.questions, desc="answer", unit="batch"):
        if len(batch["video"]) == 0:
            continue
        with runner.autocast(env):
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
        videos.update(batch["video_id"].tolist())
    run.skipped.extend(data.questions.skipped)
    predicted_all, gold_all = torch.cat(predicted), torch.cat(gold)
    return {
        "accuracy": accuracy(predicted_all, gold_all),
        "num_queries": len(gold_all),
        "num_videos": len(videos),
        "num_answers": len(data.answers),
        "answers_in_list": 100.0 * (gold_all >= 0).double().mean().item(),
        "answer_top_k": cfg.eval.answer_top_k,
    }


# --- stages -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    runner.add_common_arguments(parser, training=command == "finetune-qa")


def check_test(cfg: RunConfig) -> None:
    runner.check_datasets(cfg, [cfg.data.dataset] if cfg.data.dataset else [], ["qa"], "test")


def check_train(cfg: RunConfig) -> None:
    check_test(cfg)
    runner.check_datasets(cfg, [cfg.data.dataset], ["qa"], "train")


def run(args: argparse.Namespace) -> int:
    return runner.run_stage(args, _run)


def _run(args: argparse.Namespace, stage: str) -> int:
    from svitt.data.datasets import training_data
    from svitt.models.factory import create_qa_model

    training = stage == "finetune-qa"
    run = runner.start_run(args, stage, check_train if training else check_test, training)
    if run is None:
        return 0
    cfg = run.cfg
    if training:
        model = create_qa_model(cfg.model)
        if run.init_from is not None:
            load_qa_weights(model, run.init_from, cfg.model)
        dataset, collate = training_data(cfg, run.tokenizer, "qa")
        summary = runner.train(
            run,
            model,
            dataset,
            collate,
            lambda m, batch: m(batch),
            args.max_steps_this_run,
        )
        if summary is None:
            return 0
        trained = model.state_dict()
    model_cfg, overrides = runner.eval_model_config(cfg)
    eval_model = create_qa_model(model_cfg)
    if training:
        weights = runner.resized(trained, cfg.model.vision.num_frames, model_cfg, QA_VISION_PREFIX)
        runner.load_strict(eval_model, weights, "the fine-tuned model")
    else:
        load_qa_weights(eval_model, run.init_from, model_cfg)
    metrics = runner.base_metrics(run, model_cfg, overrides)
    metrics.update(evaluate(run, eval_model, cfg))
    if training:
        metrics.update(summary.as_metrics())
    runner.finish_run(run, metrics, training)
    return 0
