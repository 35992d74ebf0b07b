"""What a stage is and what its own work gets: `Stage`, `Run`, and the shared pieces.

A stage module (pretrain, retrieval, qa) describes each of its commands as a `Stage`: its
name, whether it trains, its input check, and its work. `svitt.engine.lifecycle.run` does
everything around the work and hands it a `Run`; the work returns its `Results`: the entries
of `metrics.json` and, for an evaluation, what each test query scored (`outcomes.json`); or
None when training stopped early and last.pt resumes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from svitt.config import ConfigError, ModelConfig, RunConfig, asdict, eval_model_config
from svitt.engine.distributed import DistEnv
from svitt.engine.tracking import Tracker
from svitt.errors import MissingFileError, UserError

if TYPE_CHECKING:
    from svitt.data.tokenizer import TextTokenizer


class StageError(UserError, RuntimeError):
    """A stage cannot run as asked; the message says what to change."""


@dataclass
class Run:
    """One run of a stage: its resolved config, run directory, processes and MLflow run."""

    stage: str
    cfg: RunConfig
    out: Path
    env: DistEnv
    tokenizer: TextTokenizer
    identity: dict[str, Any]
    tracker: Tracker
    init_from: Path | None
    max_steps_this_run: int | None = None
    skipped: list[str] = field(default_factory=list)
    # last.pt's contents: read to resume, then the latest state saved (checkpoint.pt's at the end)
    resume_state: dict[str, Any] | None = None


@dataclass
class TrainSummary:
    """What training reports in metrics.json."""

    steps: int
    epochs: list[dict[str, float]]  # mean losses of each epoch, in order

    def as_metrics(self) -> dict[str, Any]:
        first, final = self.epochs[0], self.epochs[-1]
        return {
            "train_steps": self.steps,
            "train_loss_first_epoch": first,
            "train_loss_last_epoch": final,
            "train_loss_per_epoch": self.epochs,
        }


@dataclass
class Results:
    """What a stage's work reports: metrics.json and, for an evaluation, outcomes.json."""

    metrics: dict[str, Any]
    # Per test query, so that reports bootstrap intervals and pair runs without a model:
    # retrieval {"query": [...], "rank": [...]} (0-based rank of the first positive), QA
    # {"question_id": [...], "correct": [...]}; with "task" (svitt.report.outcomes reads it).
    outcomes: dict[str, Any] | None = None


@dataclass(frozen=True)
class Stage:
    """One command: `work(run)` is all it does itself; `lifecycle.run` does the rest."""

    name: str  # the command, part of the run identity
    trains: bool  # resumes from last.pt and ends with checkpoint.pt
    evaluates: bool  # ends with outcomes.json
    check: Callable[[RunConfig], None]  # input checks on the resolved config, before any work
    work: Callable[[Run], Results | None]  # None: training stopped early


# --- input checks (before any work) ------------------------------------------------------------


def check_datasets(cfg: RunConfig, names: Sequence[str], tasks: Sequence[str], split: str) -> None:
    """Each dataset is registered for one of `tasks` and its annotation file exists."""
    from svitt.data.annotations import DECLARATION, REGISTRY, dataset_paths, find_spec

    allowed = [name for name, spec in REGISTRY.items() if spec.task in tasks]
    key = "data.dataset" if len(tasks) == 1 and tasks[0] != "pretrain" else "data.train"
    if not names:
        raise ConfigError(f"{key}: got nothing; allowed: {allowed}")
    for name in names:
        spec = find_spec(name, cfg.data.root)
        if spec is None or spec.task not in tasks:
            raise ConfigError(
                f"{key}: got {name!r}; allowed: {allowed}, or a {'/'.join(tasks)} dataset "
                f"declared by {DECLARATION} in its folder under data.root"
            )
        annotation = dataset_paths(cfg.data.root, name).annotation(split)  # type: ignore[arg-type]
        if not annotation.is_file():
            root = repr(cfg.data.root) if cfg.data.root else "not set"
            raise MissingFileError(
                f"{key} {name!r}: annotation file not found: {annotation} (data.root: {root})"
            )


# --- what the work uses ------------------------------------------------------------------------


def autocast(env: DistEnv) -> Any:
    """bf16 on GPU; full precision on CPU (where bf16 matmuls are slow and inexact)."""
    if env.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def progress(env: DistEnv, **kwargs: Any) -> tqdm:
    """Rate and ETA on a terminal; silent in log files (see loop.ProgressLog) and on ranks
    other than 0."""
    quiet = not env.is_main or not sys.stderr.isatty()
    return tqdm(disable=quiet, dynamic_ncols=True, mininterval=1.0, **kwargs)


def base_metrics(run: Run, model_cfg: ModelConfig, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every metrics.json has besides the metrics themselves."""
    from svitt.sparsity import count_edges

    metrics: dict[str, Any] = {
        "stage": run.stage,
        "dataset": run.cfg.data.dataset or "+".join(run.cfg.data.train),
        "arch": model_cfg.arch,
        "num_frames": model_cfg.vision.num_frames,
        "sparsity": asdict(model_cfg.sparsity),
        "overrides": dict(overrides),
    }
    if not model_cfg.frame_level:
        edges = count_edges(model_cfg, run.cfg.data.text_max_len)
        metrics["edges"] = edges.edges
        metrics["edge_sparsity"] = edges.sparsity
    return metrics


Evaluate = Callable[[Run, nn.Module, RunConfig], Results]


def evaluation_metrics(
    run: Run,
    build: Callable[[ModelConfig], nn.Module],
    evaluate: Evaluate,
    trained: TrainSummary | None = None,
) -> Results:
    """The results of an evaluation stage: `build` makes the model with the eval overrides
    (`eval_model_config`), which loads the weights just fine-tuned (`trained`: their
    training summary) or those of --init-from; then `evaluate`'s metrics."""
    from svitt.models.checkpoints import load_checkpoint_weights

    model_cfg, overrides = eval_model_config(run.cfg)
    model = build(model_cfg)
    if trained is None:
        assert run.init_from is not None  # required by the evaluation stages' options
        load_checkpoint_weights(model, run.init_from)
    else:  # the last training state: what checkpoint.pt will hold
        assert run.resume_state is not None
        load_checkpoint_weights(model, run.resume_state, "the fine-tuned model")
    evaluated = evaluate(run, model, run.cfg)
    metrics = base_metrics(run, model_cfg, overrides)
    metrics.update(evaluated.metrics)
    if trained is not None:
        metrics.update(trained.as_metrics())
    return Results(metrics, evaluated.outcomes)


def downstream_stages(
    task: str,
    build: Callable[[ModelConfig], nn.Module],
    train: Callable[[Run], TrainSummary | None],
    evaluate: Evaluate,
) -> dict[str, Stage]:
    """`finetune-<task>` (`train`, then evaluate the fine-tuned model) and `eval-<task>`
    (evaluate --init-from) on `data.dataset`, by command name."""

    def check_test(cfg: RunConfig) -> None:
        check_datasets(cfg, [cfg.data.dataset] if cfg.data.dataset else [], [task], "test")

    def check_train(cfg: RunConfig) -> None:
        check_test(cfg)
        check_datasets(cfg, [cfg.data.dataset], [task], "train")

    def finetune(run: Run) -> Results | None:
        summary = train(run)
        return None if summary is None else evaluation_metrics(run, build, evaluate, summary)

    def evaluate_init_from(run: Run) -> Results:
        return evaluation_metrics(run, build, evaluate)

    stages = (
        Stage(f"finetune-{task}", trains=True, evaluates=True, check=check_train, work=finetune),
        Stage(
            f"eval-{task}", trains=False, evaluates=True, check=check_test, work=evaluate_init_from
        ),
    )
    return {stage.name: stage for stage in stages}
