"""Which settings a table row's runs use that the paper's recipe does not.

The paper's recipe is the paper profile (`workflow/config/paper.yaml`): the same run resolved
there, without the variant's recipe (`recipes`: the paper has one recipe, its own), is the
reference. A row's runs are compared with it along the settings that change what a model
learns (its losses, the time-reversed twins, position embeddings, where its weights start),
not along its scale (widths, epochs, batch sizes), which every small profile changes by
design. The labels come from the two resolved configs, so a profile that changes a setting
changes its tables' text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from svitt.config import RunConfig, load_config
from svitt.plan.runs import Profile, Run, run_chain

# The weighted losses a stage computes: QA trains its answer loss and, where weighted, the twin
# hinge; the other weights are not read there.
STAGE_LOSSES = {"qa": frozenset({"twin"})}


def _losses(cfg: RunConfig, paper: RunConfig, stage: str) -> list[str]:
    ours, theirs = cfg.model.loss_weights, paper.model.loss_weights
    names = set(ours) | set(theirs)
    labels = []
    for name in sorted(names & STAGE_LOSSES.get(stage, names)):
        weight = ours.get(name, 0.0)
        if weight == theirs.get(name, 0.0):
            continue
        labels.append(f"no {name.upper()}" if not weight else f"{name} loss {weight:g}")
    return labels


def _twins(cfg: RunConfig, paper: RunConfig, stage: str) -> list[str]:
    # With a twin loss the twins are implied; its label says enough.
    if cfg.model.loss_weights.get("twin"):
        return []
    if cfg.data.reversal_negatives and not paper.data.reversal_negatives:
        return ["time-reversed twins"]
    return []


def _positions(cfg: RunConfig, paper: RunConfig, stage: str) -> list[str]:
    ours, theirs = cfg.model.vision, paper.model.vision
    labels = []
    if ours.abs_pos_emb and not theirs.abs_pos_emb:
        labels.append(f"learned pos. emb. (std {ours.pos_init_std:g})")
    elif ours.abs_pos_emb and ours.pos_init_std != theirs.pos_init_std:
        labels.append(f"pos. emb. std {ours.pos_init_std:g}")
    if theirs.rel_pos_bias and not ours.rel_pos_bias:
        labels.append("no relative position bias")
    return labels


def _start(cfg: RunConfig, paper: RunConfig, stage: str) -> list[str]:
    ours, theirs = cfg.model.weights, paper.model.weights
    if ours.vision is None and ours.text is None and (theirs.vision or theirs.text):
        return ["from scratch"]
    return []


# In the order the labels are shown.
SETTINGS = (_losses, _twins, _positions, _start)


def non_paper_settings(profile: Profile, paper: Profile, runs: Iterable[Run]) -> str:
    """The settings of `runs` (and the runs they start from) that differ from the same runs
    in `paper`, in `SETTINGS` order; "" where there are none."""
    labels: list[dict[str, None]] = [{} for _ in SETTINGS]
    for run in runs:
        for step in run_chain(profile, run):
            if step.variant.arch not in paper.config["archs"]:
                continue  # not a run of the paper profile: nothing to compare with
            # The paper has one recipe, its own: a recipe's run compares with the plain run.
            paper_step = replace(step, variant=replace(step.variant, recipe=None))
            ours = load_config(profile.resolve(step))
            theirs = load_config(paper.resolve(paper_step))
            for found, setting in zip(labels, SETTINGS, strict=True):
                found.update(dict.fromkeys(setting(ours, theirs, step.stage)))
    return ", ".join(label for found in labels for label in found)
