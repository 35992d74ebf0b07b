"""The runs of the experiment DAG: their ids, paths, initialisation chain and resolved configs.

A run is a path under `results/<profile>/runs/`:

    pretrain/<model>/T<frames>
    zero-shot/<model>/T<frames>/<dataset>/<probe>
    finetune-retrieval/<model>/T<frames>/<dataset>[/<probe>]
    finetune-qa/<model>/T<frames>/<dataset>[/<probe>]
    tokens/<model>/T<frames>/<dataset>

`<model>` is the variant, `<arch>-<sparsity>[-<order>][+<recipe>]` (`singularity`,
`singularity_temporal` alone: frame-level, no sparsity), then `@seed<N>` for a training seed
other than 0; `<recipe>` names one of the profile's `recipes`; `<probe>` is `normal`,
`shuffle`, `reverse` or `keep<q_v>`. Seed 0's runs keep the plain path, so adding seeds to a
profile's `seeds` only adds runs. The Snakefile and the report code both derive paths from
here, so a table always reads exactly the runs the DAG produced. A run's config is its seed,
then the profile's `run` section, then its architecture's settings, then the stage's
`settings`, `by_frames` and `by_dataset`, then the stage's part of the variant's recipe, then
the sparsity row, then the run's own keys (frames, dataset, probe), each merged over the
previous.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import reduce
from pathlib import Path
from typing import Any

from svitt.config import FRAME_ORDERS, TOKEN_ORDERS, load_config, merge
from svitt.models.archs import ARCH_NAMES, ARCHS
from svitt.plan.specs import SparsityRow, SpecError, load_sparsity_table, load_spec

TASKS = ("pretrain", "zero-shot", "finetune-retrieval", "finetune-qa", "tokens")
# The paper's G counts tokens of 14x14-patch frames; smaller frames scale G so that a block
# still covers the same fraction of a frame.
PAPER_FRAME_TOKENS = 196
# A probe: the plain evaluation, another frame order, or a visual keep rate in (0, 1].
_PROBE = re.compile(rf"^({'|'.join(FRAME_ORDERS)}|keep(0(\.[0-9]+)?|1(\.0+)?))$")
# A recipe name: no "-" (it separates arch, sparsity and order) and no "+" (it starts the recipe).
RECIPE_NAME = re.compile(r"^[a-z0-9_]+$")
# A training seed other than 0 after the variant: `svitt-hybrid@seed1`.
SEED_MARK = "@seed"
_SEED = re.compile(r"^(?P<variant>[^@]+)(@seed(?P<seed>[1-9][0-9]*))?$")


@dataclass(frozen=True)
class Variant:
    """A model variant: architecture, sparsity row (None for frame-level), token order and
    training recipe (None: the profile's own settings)."""

    arch: str
    sparsity: str | None = None
    order: str = "raster"
    recipe: str | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise SpecError(f"variant: unknown arch {self.arch!r}; allowed: {list(ARCH_NAMES)}")
        if self.order not in TOKEN_ORDERS:
            raise SpecError(
                f"variant: unknown token order {self.order!r}; allowed: {list(TOKEN_ORDERS)}"
            )
        frame_level = ARCHS[self.arch].frame_level
        if frame_level != (self.sparsity is None):
            raise SpecError(
                f"variant {self.arch!r}: "
                + ("frame-level, takes no sparsity" if frame_level else "needs a sparsity row")
            )
        if self.recipe is not None and not RECIPE_NAME.match(self.recipe):
            raise SpecError(
                f"variant: bad recipe name {self.recipe!r}; allowed: lower-case letters, digits, _"
            )

    def __str__(self) -> str:
        parts = [self.arch] + ([self.sparsity] if self.sparsity else [])
        text = "-".join(parts + ([self.order] if self.order != "raster" else []))
        return text if self.recipe is None else f"{text}+{self.recipe}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        base, *recipes = text.split("+")
        if len(recipes) > 1:
            raise SpecError(f"variant {text!r}: expected <arch>-<sparsity>[-<order>][+<recipe>]")
        recipe = recipes[0] if recipes else None
        arch, *rest = base.split("-")
        if arch in ARCHS and ARCHS[arch].frame_level:
            if len(rest) > 1:
                raise SpecError(f"variant {text!r}: expected <arch>[-<order>][+<recipe>]")
            return cls(arch, None, *rest, recipe=recipe)
        if not rest or len(rest) > 2:
            raise SpecError(f"variant {text!r}: expected <arch>-<sparsity>[-<order>][+<recipe>]")
        return cls(arch, *rest, recipe=recipe)


def parse_model(text: str) -> tuple[Variant, int]:
    """A run path's model component, `<variant>[@seed<N>]`, as (variant, training seed)."""
    match = _SEED.match(text)
    if match is None:
        raise SpecError(f"run model {text!r}: expected <variant>[{SEED_MARK}<N>], N >= 1")
    return Variant.parse(match["variant"]), int(match["seed"] or 0)


@dataclass(frozen=True)
class Run:
    task: str
    variant: Variant
    frames: int
    dataset: str | None = None
    probe: str | None = None  # an evaluation of the trained run with these overrides
    seed: int = 0  # the training seed; an evaluation has its trained run's

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise SpecError(f"run: unknown task {self.task!r}; allowed: {list(TASKS)}")
        if (self.task == "pretrain") != (self.dataset is None):
            raise SpecError(f"run {self.task}: a dataset is required except for pre-training")
        if self.probe is not None and not _PROBE.match(self.probe):
            raise SpecError(
                f"run: bad probe {self.probe!r}; allowed: {', '.join(FRAME_ORDERS)}, keep<q>"
            )
        if self.task == "zero-shot" and self.probe is None:
            raise SpecError("run zero-shot: a probe is required (normal for the plain evaluation)")
        if self.task in ("pretrain", "tokens") and self.probe is not None:
            raise SpecError(f"run {self.task}: takes no probe")
        if self.seed < 0:
            raise SpecError(f"run: bad seed {self.seed}; allowed: an integer >= 0")

    @property
    def model(self) -> str:
        """The path's model component: the variant and a seed other than 0."""
        return f"{self.variant}{SEED_MARK}{self.seed}" if self.seed else str(self.variant)

    @property
    def path(self) -> str:
        parts = [self.task, self.model, f"T{self.frames}", self.dataset, self.probe]
        return "/".join(p for p in parts if p is not None)

    @classmethod
    def from_path(cls, path: str) -> Run:
        parts = path.strip("/").split("/")
        if len(parts) < 3 or not re.fullmatch(r"T[0-9]+", parts[2]):
            raise SpecError(f"run path {path!r}: expected <task>/<variant>/T<frames>[/...]")
        task, model, frames, *rest = parts
        if len(rest) > 2:
            raise SpecError(f"run path {path!r}: too many components")
        variant, seed = parse_model(model)
        return cls(task, variant, int(frames[1:]), *rest, seed=seed)

    @property
    def trained(self) -> Run:
        """The run whose training this one evaluates (itself for training runs)."""
        if self.task in ("zero-shot", "tokens"):
            return replace(self, task="pretrain", dataset=None, probe=None)
        if self.probe is not None:
            return replace(self, probe=None)
        return self

    @property
    def command(self) -> str:
        """The `svitt` sub-command that produces this run's metrics."""
        if self.task == "pretrain":
            return "pretrain"
        qa = self.task == "finetune-qa"
        if self.probe is not None or self.task == "zero-shot":
            return "eval-qa" if qa else "eval-retrieval"
        return self.task

    @property
    def stage(self) -> str:
        """The profile section holding this run's settings."""
        if self.task == "pretrain":
            return "pretrain"
        return "qa" if self.task == "finetune-qa" else "retrieval"


class Profile:
    """A validated workflow config (one experiment profile) and its sparsity rows."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.name: str = config["profile"]
        self.sparsity: dict[str, SparsityRow] = {
            row.name: row for row in load_sparsity_table(config["sparsity_table"])
        }
        self.ablations = Path(config["ablations"])
        self.seeds: tuple[int, ...] = _seeds(config)

    def replicates(self, run: Run) -> tuple[Run, ...]:
        """`run` once per training seed of the profile, in the order of `seeds`."""
        return tuple(replace(run, seed=seed) for seed in self.seeds)

    @property
    def results(self) -> str:
        return f"results/{self.name}"

    @property
    def runs_dir(self) -> str:
        return f"{self.results}/runs"

    def run_dir(self, run: Run) -> str:
        return f"{self.runs_dir}/{run.path}"

    def metrics(self, run: Run) -> str:
        return f"{self.run_dir(run)}/metrics.json"

    def checkpoint(self, run: Run) -> str:
        return f"{self.run_dir(run.trained)}/checkpoint.pt"

    @property
    def chain(self) -> list[int]:
        return list(self.config["pretrain"]["frames"])

    def loads(self, run: Run) -> Run | None:
        """The run whose checkpoint `run` starts from: the trained run for an evaluation, the
        pre-trained model for fine-tuning, the previous clip length of the chain for
        pre-training (None at the chain's start: image weights or scratch)."""
        if run.trained != run:
            return run.trained
        if run.task != "pretrain":
            return replace(run, task="pretrain", dataset=None)
        chain = self.chain
        if ARCHS[run.variant.arch].frame_level:
            # Frame-level models have no temporal weights to grow: each clip length trains
            # from the start, like the Singularity* baselines.
            return None
        if run.frames in chain and chain.index(run.frames) > 0:
            return replace(run, frames=chain[chain.index(run.frames) - 1])
        return None

    def schedule_frames(self, run: Run) -> int:
        """The clip length whose `by_frames` settings `run` takes: a pre-training run that
        starts from the beginning (image weights or scratch) takes the schedule of the chain's
        start, since the later lengths' short schedules assume a pre-trained start."""
        if run.task == "pretrain" and self.loads(run) is None:
            return self.chain[0]
        return run.frames

    @property
    def recipes(self) -> Mapping[str, Any]:
        return self.config.get("recipes", {})

    def variants(self, row: Mapping[str, Any]) -> list[Variant]:
        """Variants of a spec row; `sparsity: each` expands over every sparsity row."""
        arch = row["arch"]
        order = row.get("order", "raster")
        recipe = row.get("recipe")
        if arch not in ARCHS:
            raise SpecError(
                f"spec row {dict(row)}: unknown arch {arch!r}; allowed: {list(ARCH_NAMES)}"
            )
        if ARCHS[arch].frame_level:
            return [Variant(arch, None, order, recipe)]
        names = list(self.sparsity) if row.get("sparsity") == "each" else [row["sparsity"]]
        for name in names:
            if name not in self.sparsity:
                raise SpecError(
                    f"spec row {dict(row)}: sparsity {name!r} is not a row of "
                    f"{self.config['sparsity_table']} ({', '.join(self.sparsity)})"
                )
        return [Variant(arch, name, order, recipe) for name in names]

    def resolve(self, run: Run) -> dict[str, Any]:
        """The run's full RunConfig as plain data, checked by `load_config` (errors name keys)."""
        cfg = self.config
        stage = cfg[run.stage]
        frames_key = f"T{self.schedule_frames(run)}"
        layers: list[Mapping[str, Any]] = [
            {"seed": run.seed},
            cfg["run"],
            cfg["archs"][run.variant.arch],
            stage.get("settings", {}),
            stage.get("by_frames", {}).get(frames_key, {}),
        ]
        if run.dataset is not None:
            layers.append(stage.get("by_dataset", {}).get(run.dataset, {}))
        recipe = run.variant.recipe
        if recipe is not None:
            if recipe not in self.recipes:
                raise SpecError(
                    f"profile {self.name!r}, run {run.path}: no recipe {recipe!r} in `recipes`"
                    f" ({', '.join(self.recipes) or 'none configured'})"
                )
            layers.append(self.recipes[recipe].get(run.stage, {}))
        merged = reduce(merge, layers, {})
        merged = merge(merged, self._sparsity_settings(run, merged))
        merged = merge(merged, self._run_settings(run))
        try:
            load_config(merged)
        except ValueError as err:
            raise SpecError(f"profile {self.name!r}, run {run.path}: {err}") from None
        return merged

    def _sparsity_settings(self, run: Run, merged: Mapping[str, Any]) -> dict[str, Any]:
        if run.variant.sparsity is None:
            return {}
        row = self.sparsity[run.variant.sparsity]
        vision = merged.get("model", {}).get("vision", {})
        side = vision.get("image_size", 224) // vision.get("patch_size", 16)
        block_size = max(1, round(row.block_size * side * side / PAPER_FRAME_TOKENS))
        return {
            "model": {
                "sparsity": {
                    "attention": row.attention,
                    "block_size": block_size,
                    "local_blocks": row.local_blocks,
                    "random_blocks": row.random_blocks,
                    "visual_keep_rate": row.visual_keep_rate(run.frames),
                    "cross_keep_rate": row.cross_keep_qa if run.stage == "qa" else row.cross_keep,
                    "token_order": run.variant.order,
                }
            }
        }

    def _run_settings(self, run: Run) -> dict[str, Any]:
        data_cfg = self.config["data"]
        data: dict[str, Any] = {"root": data_cfg["root"], "tokenizer": data_cfg["tokenizer"]}
        if run.task == "pretrain":
            data["train"] = list(self.config["pretrain"]["datasets"])
        else:
            data["dataset"] = run.dataset
        out: dict[str, Any] = {
            "model": {"vision": {"num_frames": run.frames}},
            "data": data,
            "eval": _probe_settings(run.probe),
            "tags": {
                "profile": self.name,
                "run": run.path,
                "task": run.task,
                "variant": str(run.variant),
                "frames": str(run.frames),
            },
        }
        if self.loads(run) is not None:
            # Weights come from the checkpoint; image/text weights only seed a chain's start.
            out["model"]["weights"] = {"vision": None, "text": None}
        return out


def _seeds(config: Mapping[str, Any]) -> tuple[int, ...]:
    """The profile's training seeds (`seeds`, default [0]); `run.seed` would be overridden by
    them, so it is refused."""
    if "seed" in config["run"]:
        raise SpecError(
            f"profile {config['profile']!r}: run.seed is set per run from the top-level "
            "`seeds` list (e.g. seeds: [0, 1]); remove run.seed"
        )
    seeds = config.get("seeds", [0])
    valid = isinstance(seeds, list) and seeds and len(set(seeds)) == len(seeds)
    if not valid or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SpecError(
            f"profile {config['profile']!r}: seeds: got {seeds!r}; allowed: a non-empty list of"
            " distinct integers >= 0"
        )
    if min(seeds) < 0:
        raise SpecError(f"profile {config['profile']!r}: seeds: got {seeds!r}; need >= 0")
    return tuple(seeds)


def _probe_settings(probe: str | None) -> dict[str, Any]:
    if probe in (None, "normal"):
        return {}
    if probe.startswith("keep"):
        return {"visual_keep_rate": float(probe[len("keep") :])}
    return {"frame_order": probe}


def run_chain(profile: Profile, run: Run) -> list[Run]:
    """`run` and every run whose checkpoint it starts from, back to the chain's start."""
    chain = [run]
    while (earlier := profile.loads(chain[-1])) is not None:
        chain.append(earlier)
    return chain


def probe_name(keep_rate: float) -> str:
    """The probe id of an evaluation at visual keep rate `keep_rate` (Figure A1)."""
    return f"keep{keep_rate:g}"


@dataclass(frozen=True)
class TableRow:
    """One of this profile's rows of a table: its spec row, variant and the runs per column,
    one per training seed (`Profile.replicates`)."""

    spec: Mapping[str, Any]
    variant: Variant
    frames: int
    runs: dict[tuple[str, str], tuple[Run, ...]]  # (dataset, column kind) -> a run per seed


def table_rows(profile: Profile, spec: Mapping[str, Any]) -> list[TableRow]:
    """This profile's rows of a results table spec (layouts `retrieval` and `probe`): a row
    whose arch or recipe the profile does not configure (no `archs.<arch>`, no
    `recipes.<recipe>`) is not one of them."""
    layout = spec["layout"]
    out = []
    for row in spec["rows"]:
        variants = profile.variants(row)  # an unknown arch fails here, configured or not
        if row["arch"] not in profile.config["archs"]:
            continue
        if row.get("recipe") is not None and row["recipe"] not in profile.recipes:
            continue
        for variant in variants:
            frames = int(row["frames"])
            runs: dict[tuple[str, str], Run] = {}
            if layout == "retrieval":
                probe = "normal" if spec["task"] == "zero-shot" else None
                for dataset in row.get("datasets", spec["datasets"]):
                    runs[(dataset, "metrics")] = Run(spec["task"], variant, frames, dataset, probe)
            elif layout == "probe":
                for column in spec["columns"]:
                    dataset, task = column["dataset"], column["task"]
                    runs[(dataset, "N")] = Run(task, variant, frames, dataset)
                    runs[(dataset, "S")] = Run(task, variant, frames, dataset, spec["probe"])
            else:
                raise SpecError(f"table {spec['table']}: layout {layout!r} has no runs")
            seeded = {key: profile.replicates(run) for key, run in runs.items()}
            out.append(TableRow(row, variant, frames, seeded))
    return out


def figure_a1_runs(profile: Profile, spec: Mapping[str, Any]) -> list[tuple[Run, ...]]:
    """The keep-rate sweep of Figure A1: each point's runs, one per training seed."""
    variant = Variant(spec["arch"], spec["sparsity"])
    task = spec["task"]
    return [
        profile.replicates(Run(task, variant, int(frames), dataset, probe_name(float(rate))))
        for frames in spec["frames"]
        for dataset in spec["datasets"]
        for rate in spec["keep_rates"]
    ]


RESULTS_TABLES = ("A3", "A5", "A6", "A7", "A8")
CONFIG_TABLES = ("A1", "A4")  # from the profile config alone: no data, no runs
ALL_TABLES = ("A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8")


def table_runs(profile: Profile, table: str) -> list[Run]:
    """Every run whose metrics table `table` reads (none for A1, A2, A4)."""
    if table not in RESULTS_TABLES:
        return []
    rows = table_rows(profile, load_spec(profile.ablations, table))
    return list(dict.fromkeys(run for row in rows for runs in row.runs.values() for run in runs))
