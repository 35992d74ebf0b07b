"""The command-line options of the stages (`svitt pretrain|finetune-*|eval-* ...`).

Apart from the stages' code so that `svitt <stage> --help` imports neither torch nor MLflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TRAINING = ("pretrain", "finetune-retrieval", "finetune-qa")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The options of stage `command`: one --config/--out for training stages, repeatable
    pairs for evaluations."""
    training = command in TRAINING
    # Evaluations take several --config/--out pairs: one process (libraries and the model
    # load once) writes one run directory and one MLflow run per pair.
    repeat = {} if training else {"action": "append"}
    parser.add_argument(
        "--config",
        required=True,
        type=Path,
        help="run config (YAML or JSON)" + ("" if training else "; repeatable, with --out"),
        **repeat,
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="run directory: metrics.json, log.txt"
        + (
            ", checkpoint.pt (final) and last.pt (resumable)"
            if training
            else "; one per --config, evaluated in the given order"
        ),
        **repeat,
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, dotted key and YAML value, e.g. "
        "eval.frame_order=shuffle (repeatable, applied in order)",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        required=not training,
        metavar="CKPT",
        help="checkpoint.pt to start from"
        + (
            " (another clip length is inflated; default: model.weights or scratch)"
            if training
            else " (the model to evaluate; another clip length is inflated)"
        ),
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite a finished run in --out whose config differs"
        + (", and ignore its last.pt instead of resuming" if training else ""),
    )
    if training:
        parser.add_argument(
            "--max-steps-this-run",
            type=int,
            default=None,
            metavar="N",
            help="stop after N optimizer steps, leaving a resumable last.pt (rerun to resume)",
        )
