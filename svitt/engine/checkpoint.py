"""Checkpoints and result files: exact resume, plain-data contents, atomic writes.

Everything saved is plain data and tensors, so `torch.load(path, weights_only=True)` reads it
(the authors' release pickled a config object that recent torch refuses to load). Files are
written through `svitt.files.atomic_write`, so a killed run never leaves a truncated
`checkpoint.pt` or `metrics.json` that Snakemake would take for a finished one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svitt.errors import OutputExistsError
from svitt.files import atomic_write, atomic_write_text

CHECKPOINT = "checkpoint.pt"  # final, written only when the stage has finished
LAST = "last.pt"  # periodic, resumable
METRICS = "metrics.json"
OUTCOMES = "outcomes.json"  # per test query: see svitt.engine.stage.Results


def save_json(path: str | Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor | np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(dict(state), f))


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states, as weights_only-loadable data."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_identity(stage: str, config: Mapping[str, Any], source: str | None) -> dict[str, Any]:
    """What makes two runs the same run: stage, resolved config and starting weights.
    Tracking and loader workers change nothing in the results, so they do not count."""
    config = {k: v for k, v in config.items() if k != "tracking"}
    config["data"] = {k: v for k, v in config["data"].items() if k != "num_workers"}
    return {"stage": stage, "config": config, "source": source}


def finished_run(
    out: Path, identity: Mapping[str, Any], needs_checkpoint: bool, needs_outcomes: bool = False
) -> bool:
    """True if `out` already holds this exact finished run; an error if it holds another.

    A finished run is `metrics.json` (plus `checkpoint.pt` for training stages and
    `outcomes.json` for evaluations) recording the run identity. A different identity raises
    unless the caller passes --force.
    """
    metrics_path = out / METRICS
    needed = [metrics_path]
    needed += [out / CHECKPOINT] if needs_checkpoint else []
    needed += [out / OUTCOMES] if needs_outcomes else []
    if not all(path.is_file() for path in needed):
        return False
    previous = json.loads(metrics_path.read_text()).get("run")
    if previous == json.loads(json.dumps(dict(identity))):
        return True
    raise OutputExistsError(
        f"{out} already holds a finished run with a different stage, config or starting "
        f"checkpoint (see {metrics_path}, key 'run'); use another --out or pass --force "
        "to overwrite it"
    )
