"""`svitt table <A1..A8> --profile PROFILE.yaml --out-dir DIR`: one of the supplement's tables.

Each table is built from its study spec (`ablations/<table>.yaml`), the profile config the
workflow ran with (`results/<profile>/runs/profile.yaml`) and, for result tables, the runs'
`metrics.json` files. Rows computed by this profile carry the profile's name in the `source`
column; the supplement's numbers follow as `reported` rows in the same layout. Written as CSV,
Markdown and LaTeX, each atomically.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from tabulate import tabulate

from svitt.config import RECALL_KS, RunConfig, load_config
from svitt.errors import MissingFileError
from svitt.files import atomic_write_text
from svitt.plan.runs import ALL_TABLES, Profile, Run, TableRow, Variant, table_rows
from svitt.plan.specs import SpecError, load_datasets, load_spec
from svitt.report.baselines import (
    QA_BASELINES,
    group_question_ids,
    qa_reference,
    retrieval_reference,
)
from svitt.report.intervals import Interval, mean_interval, paired_difference, seed_std
from svitt.report.outcomes import outcomes_path, read_outcomes
from svitt.report.settings import non_paper_settings
from svitt.sparsity import count_edges

REPORTED = "reported"
BASELINE = "{} (baseline)"
PAPER_PROFILE = "workflow/config/paper.yaml"
RECALL_KEYS = (*(f"r{k}" for k in RECALL_KS), "mean_recall")
RECALL_NAMES = ("R1", "R5", "R10", "Mean")
MISSING = "—"


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    caption: str
    frame: pd.DataFrame
    note: str


def read_metric(path: str | Path, key: str) -> float:
    """One number from a run's metrics.json; a missing key names the file and the keys found."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"metrics file not found: {path} (run its job first)")
    metrics = json.loads(path.read_text())
    if key not in metrics:
        raise SpecError(f"{path}: no metric {key!r}; found: {', '.join(sorted(metrics))}")
    return float(metrics[key])


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# A cell's 95 % interval: CSV keeps the bounds in columns of their own ("<column> low",
# "<column> high"), and with several seeds the standard deviation over them ("<column> std");
# Markdown and LaTeX show "value [low, high]" or "value ± std [low, high]" in the one column.
LOW, HIGH, STD = " low", " high", " std"


def _with_interval(
    column: str, value: float, interval: Interval, std: float | None = None
) -> dict[str, float]:
    out = {column: round(value, 1)}
    if std is not None:
        out[column + STD] = round(std, 1)
    out.update({column + LOW: round(interval.low, 1), column + HIGH: round(interval.high, 1)})
    return out


def run_outcomes(
    profile: Profile, run: Run, metric: str, questions: frozenset[int] | None = None
) -> tuple[float, np.ndarray]:
    """The run's metric in percent and its per-query outcomes (`outcomes.json`): over every
    test query, where the value is metrics.json's and the outcomes must agree with it, or
    over the test questions `questions` alone."""
    # metrics.json first: a run not yet evaluated is named by its metrics file
    value = read_metric(profile.metrics(run), metric) if questions is None else None
    path = outcomes_path(profile, run)
    outcomes = read_outcomes(path)
    values = outcomes.values(metric)
    if questions is not None:
        values = values[np.array([question in questions for question in outcomes.ids])]
        return 100.0 * float(values.mean()), values
    if not math.isclose(100.0 * float(values.mean()), value, abs_tol=1e-6):
        raise SpecError(
            f"{path}: {metric} of the per-query outcomes is {100.0 * values.mean():.4f}, "
            f"metrics.json says {value:.4f}; rerun the evaluation"
        )
    return value, values


@dataclass(frozen=True)
class Cell:
    """A metric of one table cell: its runs, one per training seed, each with its value in
    percent and its per-query outcomes (the same test queries in the same order)."""

    values: tuple[float, ...]
    outcomes: tuple[np.ndarray, ...]

    @property
    def value(self) -> float:
        """The mean over seeds."""
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        """The sample standard deviation over seeds; None for one seed."""
        return seed_std(self.values)

    @property
    def pooled(self) -> np.ndarray:
        """Every seed's outcomes in one sample, seed after seed."""
        return np.concatenate(self.outcomes)

    def interval(self) -> Interval:
        """The bootstrap interval over the pooled outcomes (every seed and test query)."""
        return mean_interval(self.pooled)

    def cells(self, column: str) -> dict[str, float]:
        return _with_interval(column, self.value, self.interval(), self.std)


def cell(
    profile: Profile, runs: Sequence[Run], metric: str, questions: frozenset[int] | None = None
) -> Cell:
    """`metric` of a cell's runs (`run_outcomes` of each)."""
    measured = [run_outcomes(profile, run, metric, questions) for run in runs]
    return Cell(tuple(v for v, _ in measured), tuple(o for _, o in measured))


def difference_cells(column: str, first: Cell, second: Cell) -> dict[str, float]:
    """first - second per seed, with the paired interval over the pooled outcomes."""
    per_seed = [a - b for a, b in zip(first.values, second.values, strict=True)]
    interval = paired_difference(first.pooled, second.pooled)
    return _with_interval(column, first.value - second.value, interval, seed_std(per_seed))


def _pretrain_label(profile: Profile) -> str:
    labels = load_datasets(profile.ablations)
    return "+".join(labels[name].label for name in profile.config["pretrain"]["datasets"])


def _row_label(profile: Profile, variant: Variant) -> str:
    if variant.sparsity is None:
        return MISSING
    return profile.sparsity[variant.sparsity].label


def _source_note(profile: Profile) -> str:
    data = profile.config["data"]
    kind = "synthetic stand-ins" if data["source"] == "synthetic" else "dataset files"
    return (
        f"Rows with source `{profile.name}`: computed by this workflow (profile "
        f"`{profile.name}`, {kind} under `{data['root']}`). Rows with source `{REPORTED}`: "
        "the supplement's numbers."
    )


# --- A1: sparsity configurations (config only) -------------------------------------------


def _blocks(cfg: RunConfig) -> str:
    sp = cfg.model.sparsity
    if sp.attention == "dense":
        return MISSING
    return f"({sp.local_blocks}, {sp.random_blocks}, {sp.block_size})"


def _keep(cfg: RunConfig) -> str:
    sp = cfg.model.sparsity
    return f"({sp.visual_keep_rate:g}, {sp.cross_keep_rate:g})"


def configurations_table(profile: Profile, spec: Mapping[str, Any], paper: Profile) -> pd.DataFrame:
    rows = []
    for name, sparsity in profile.sparsity.items():
        for frames in profile.chain:
            cfg = load_config(profile.resolve(Run("pretrain", Variant(spec["arch"], name), frames)))
            count = count_edges(cfg.model, cfg.data.text_max_len)
            rows.append(
                {
                    "source": profile.name,
                    "config": sparsity.label,
                    "frames": frames,
                    "blocks": _blocks(cfg),
                    "keep": _keep(cfg),
                    "edges": count.edges,
                    "edges_m": f"{count.edges / 1e6:.2f}",
                    "sparsity": f"{count.sparsity:.2f}",
                }
            )
    rows += [{"source": REPORTED, **row} for row in spec["reported"]]
    return pd.DataFrame(rows, dtype=object)


# --- A2: dataset statistics ---------------------------------------------------------------


def datasets_table(profile: Profile, spec: Mapping[str, Any], paper: Profile) -> pd.DataFrame:
    from svitt.data.stats import dataset_statistics

    labels = load_datasets(profile.ablations)
    names = list(labels)
    stats = dataset_statistics(profile.config["data"]["root"], names).set_index("dataset")
    rows = [
        {
            "source": profile.name,
            "group": labels[name].group,
            "dataset": labels[name].label,
            "avg_duration": f"{stats.loc[name, 'avg_duration_s']:.1f}s",
            "videos": int(stats.loc[name, "num_videos"]),
            "sentences_or_questions": int(stats.loc[name, "num_texts"]),
        }
        for name in names
    ]
    rows += [
        {
            "source": REPORTED,
            "group": row.group,
            "dataset": row.reported_label,
            "avg_duration": row.reported_avg_duration,
            "videos": row.reported_videos,
            "sentences_or_questions": row.reported_texts,
        }
        for row in labels.values()
    ]
    return pd.DataFrame(rows, dtype=object)


# --- A3, A5, A6, A7: retrieval ------------------------------------------------------------


def _recall_columns(label: str) -> list[str]:
    return [f"{label} {name}" for name in RECALL_NAMES]


def retrieval_table(profile: Profile, spec: Mapping[str, Any], paper: Profile) -> pd.DataFrame:
    labels = load_datasets(profile.ablations)
    datasets = spec["datasets"]
    rows = []
    for row in table_rows(profile, spec):
        out: dict[str, Any] = {
            "source": profile.name,
            "method": row.spec["method"],
            "pt": _pretrain_label(profile),
            "frames": row.frames,
            "sparsity": _row_label(profile, row.variant),
            "non-paper settings": _settings(profile, paper, row),
        }
        for dataset in datasets:
            runs = row.runs.get((dataset, "metrics"))
            columns = _recall_columns(labels[dataset].label)
            if runs is None:
                out.update(dict.fromkeys(columns))
                continue
            for column, key in zip(columns, RECALL_KEYS, strict=True):
                out.update(cell(profile, runs, key).cells(column))
        rows.append(out)
    chance: dict[str, Any] = {
        "source": profile.name,
        "method": BASELINE.format(QA_BASELINES["chance"]),
    }
    chance.update({k: "" for k in ("pt", "frames", "sparsity", "non-paper settings")})
    for dataset in datasets:
        reference = retrieval_reference(profile.config["data"]["root"], dataset, RECALL_KS)
        values = [_round(reference[key]) for key in RECALL_KEYS]
        chance.update(zip(_recall_columns(labels[dataset].label), values, strict=True))
    rows.append(chance)
    for reported in spec["reported"]:
        out = {"source": REPORTED}
        out.update({k: reported.get(k, "") for k in ("method", "pt", "frames", "sparsity")})
        out["non-paper settings"] = ""
        for dataset in datasets:
            values = reported.get(dataset) or [None] * len(RECALL_KEYS)
            out.update(zip(_recall_columns(labels[dataset].label), values, strict=True))
        rows.append(out)
    return pd.DataFrame(rows, dtype=object)


# --- A8: temporal probing -----------------------------------------------------------------


def probe_table(profile: Profile, spec: Mapping[str, Any], paper: Profile) -> pd.DataFrame:
    labels = load_datasets(profile.ablations)
    rows = []
    for row in table_rows(profile, spec):
        out: dict[str, Any] = {
            "source": profile.name,
            "method": row.spec["method"],
            "frames": row.frames,
            "sparsity": _row_label(profile, row.variant),
            "non-paper settings": _settings(profile, paper, row),
        }
        out.update(_probe_cells(profile, spec, row, labels))
        rows.append(out)
    rows += _probe_baselines(profile, spec, labels)
    for reported in spec["reported"]:
        out = {
            "source": REPORTED,
            "method": reported["method"],
            "frames": "",
            "sparsity": reported.get("sparsity", ""),
            "non-paper settings": "",
        }
        for column in spec["columns"]:
            label = _probe_label(column, labels)
            # The supplement reports each dataset whole, not by question group.
            values = (None if "questions" in column else reported.get(column["dataset"])) or [
                None
            ] * 3
            out.update(zip((f"{label} N", f"{label} S", f"{label} Δ"), values, strict=True))
        rows.append(out)
    return pd.DataFrame(rows, dtype=object)


def _settings(profile: Profile, paper: Profile, row: TableRow) -> str:
    """The row's non-paper settings; every seed of a row has the same ones."""
    return non_paper_settings(profile, paper, (runs[0] for runs in row.runs.values()))


def _probe_label(column: Mapping[str, Any], labels: Mapping[str, Any]) -> str:
    """ "ActivityNet-QA", or "ActivityNet-QA temporal" for a column of one question group."""
    label = labels[column["dataset"]].label
    return f"{label} {column['questions']}" if "questions" in column else label


def _probe_cells(
    profile: Profile, spec: Mapping[str, Any], row: TableRow, labels: Mapping[str, Any]
) -> dict[str, float]:
    """N and S with their intervals, and Δ = N - S with its paired interval (the same test
    queries, read in order and shuffled)."""
    out: dict[str, float | None] = {}
    for column in spec["columns"]:
        dataset, metric = column["dataset"], column["metric"]
        label = _probe_label(column, labels)
        ids = None
        if "questions" in column:
            ids = group_question_ids(profile.config["data"]["root"], dataset, column["questions"])
            if not ids:  # no question types in this dataset's files, or none of the group
                out.update(dict.fromkeys((f"{label} N", f"{label} S", f"{label} Δ")))
                continue
        normal = cell(profile, row.runs[(dataset, "N")], metric, ids)
        probed = cell(profile, row.runs[(dataset, "S")], metric, ids)
        out.update(normal.cells(f"{label} N"))
        out.update(probed.cells(f"{label} S"))
        out.update(difference_cells(f"{label} Δ", normal, probed))
    return out


def _probe_baselines(
    profile: Profile, spec: Mapping[str, Any], labels: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The video-blind reference rows under the Normal column of each dataset (a model that
    never sees the video has nothing to shuffle): retrieval chance; for QA also the
    majority answer and the question-only prior."""
    root = profile.config["data"]["root"]
    rows: dict[str, dict[str, Any]] = {}
    for column in spec["columns"]:
        dataset, label = column["dataset"], _probe_label(column, labels)
        if column["task"] == "finetune-qa":
            values = qa_reference(root, dataset, column.get("questions"))
        else:
            values = {"chance": retrieval_reference(root, dataset, RECALL_KS)[column["metric"]]}
        for kind, value in values.items():
            row = rows.setdefault(
                kind,
                {
                    "source": profile.name,
                    "method": BASELINE.format(QA_BASELINES[kind]),
                    "frames": "",
                    "sparsity": "",
                    "non-paper settings": "",
                },
            )
            row.update(
                {f"{label} N": round(value, 1), f"{label} S": MISSING, f"{label} Δ": MISSING}
            )
    return list(rows.values())


# --- A4: training hyperparameters (config only) -------------------------------------------


def format_lr(value: float) -> str:
    """3e-05 -> "3e-5" (the supplement's 3 x 10^-5)."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _with_exceptions(values: Mapping[str, str], labels: Mapping[str, Any]) -> str:
    """The most common value, then the others as "(64 for DiDeMo)"."""
    base = Counter(values.values()).most_common(1)[0][0]
    others: dict[str, list[str]] = {}
    for dataset, value in values.items():
        if value != base:
            others.setdefault(value, []).append(labels[dataset].label)
    notes = [f"{value} for {', '.join(names)}" for value, names in others.items()]
    return base + (f" ({'; '.join(notes)})" if notes else "")


HYPERPARAMETERS: dict[str, Callable[[RunConfig], str]] = {
    "Epochs": lambda c: str(c.optim.epochs),
    "Warm-up": lambda c: f"{c.optim.warmup_epochs:g}",
    "Batch size": lambda c: str(c.optim.batch_size),
    "Learning rate": lambda c: format_lr(c.optim.lr),
    "Weight decay": lambda c: f"{c.optim.weight_decay:g}",
    "Text length": lambda c: str(c.data.text_max_len),
    "Attn. blocks (K_l, K_r, G)": _blocks,
    "Keep rate (q_v, q_m)": _keep,
}


def _qa_text_length(cfg: RunConfig) -> str:
    return f"{cfg.data.text_max_len} (Q), {cfg.data.answer_max_len} (A)"


def _frames(by_frames: Mapping[str, Any]) -> list[int]:
    return sorted(int(key[1:]) for key in by_frames)


def hyperparameters_table(
    profile: Profile, spec: Mapping[str, Any], paper: Profile
) -> pd.DataFrame:
    labels = load_datasets(profile.ablations)
    config = profile.config
    variant = Variant("svitt", spec["sparsity"])
    columns: dict[str, dict[str, RunConfig]] = {}
    for frames in profile.chain:
        run = Run("pretrain", variant, frames)
        columns[f"Pre-training T={frames}"] = {"": load_config(profile.resolve(run))}
    for title, task, stage in (
        ("Retrieval", "finetune-retrieval", "retrieval"),
        ("Video QA", "finetune-qa", "qa"),
    ):
        for frames in _frames(config[stage]["by_frames"]):
            columns[f"{title} T={frames}"] = {
                dataset: load_config(profile.resolve(Run(task, variant, frames, dataset)))
                for dataset in config[stage]["datasets"]
            }
    rows = []
    for name, fmt in HYPERPARAMETERS.items():
        row: dict[str, Any] = {"source": profile.name, "hyperparameter": name}
        for column, configs in columns.items():
            cell_fmt = _qa_text_length if (name, column[:5]) == ("Text length", "Video") else fmt
            row[column] = _with_exceptions({d: cell_fmt(c) for d, c in configs.items()}, labels)
        rows.append(row)
    reported = spec["reported"]
    for name, values in reported["rows"].items():
        rows.append(
            {
                "source": REPORTED,
                "hyperparameter": name,
                **dict(zip(reported["columns"], values, strict=True)),
            }
        )
    return pd.DataFrame(rows, dtype=object)


# --- assembly and output ------------------------------------------------------------------

# Each layout's builder: (this profile, the table's spec, the paper profile). The paper profile
# is the reference recipe that the result tables' "non-paper settings" column compares with.
BUILDERS: dict[str, Callable[[Profile, Mapping[str, Any], Profile], pd.DataFrame]] = {
    "configurations": configurations_table,
    "datasets": datasets_table,
    "retrieval": retrieval_table,
    "probe": probe_table,
    "hyperparameters": hyperparameters_table,
}


def build_table(profile: Profile, name: str, paper: Profile) -> Table:
    spec = load_spec(profile.ablations, name)
    layout = spec.get("layout")
    if layout not in BUILDERS:
        raise SpecError(
            f"{profile.ablations}/{name}.yaml: layout {layout!r}; allowed: {list(BUILDERS)}"
        )
    frame = BUILDERS[layout](profile, spec, paper)
    note = _source_note(profile)
    if any(column.endswith(STD) for column in frame.columns):
        seeds = ", ".join(map(str, profile.seeds))
        note += (
            f" Computed cells: the mean ± the standard deviation over the training seeds"
            f" {seeds}, then in brackets the 95 % bootstrap interval over every seed's test"
            " queries pooled (Δ: paired, the same queries in order and probed); the CSV has"
            " the deviations and bounds in their own columns."
        )
    elif any(column.endswith(LOW) for column in frame.columns):
        note += (
            " In brackets: the 95 % bootstrap interval over the test queries (Δ: paired, the "
            "same queries in order and probed); the CSV has the bounds in their own columns."
        )
    return Table(name, spec["title"], spec.get("caption", ""), frame, note)


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def compact(frame: pd.DataFrame) -> pd.DataFrame:
    """Each interval's bounds (and seed deviation) joined into its value's column:
    "18.0 [10.0, 26.0]", "18.0 ± 2.1 [10.0, 26.0]"."""
    frame = frame.copy()
    for column in [c for c in frame.columns if c + LOW in frame.columns]:
        low, high = frame.pop(column + LOW), frame.pop(column + HIGH)
        std = frame.pop(column + STD) if column + STD in frame.columns else [""] * len(low)
        frame[column] = [
            value
            if _cell(lo) == ""
            else f"{value}{'' if _cell(sd) == '' else f' ± {sd}'} [{lo}, {hi}]"
            for value, sd, lo, hi in zip(frame[column], std, low, high, strict=True)
        ]
    return frame


def _plain(frame: pd.DataFrame) -> tuple[list[str], list[list[Any]]]:
    """Headers and cells of the compact frame, as tabulate takes them."""
    frame = compact(frame)
    return list(frame.columns), [[_cell(v) for v in row] for row in frame.itertuples(index=False)]


def _body(table: Table, tablefmt: str) -> str:
    """The table's rows under its column names, cells as written (no number re-formatting)."""
    headers, cells = _plain(table.frame)
    return tabulate(
        cells,
        headers=headers,
        tablefmt=tablefmt,
        disable_numparse=True,
    )


def to_markdown(table: Table) -> str:
    body = _body(table, "pipe")
    return f"**Table {table.name}. {table.title}.** {table.caption}\n\n{body}\n\n{table.note}\n"


def to_latex(table: Table) -> str:
    body = _body(table, "latex_booktabs")
    caption = f"\\textbf{{{table.title}.}} {table.caption} {table.note}".replace("_", "\\_")
    caption = caption.replace("`", "")
    return (
        "\\begin{table}[t]\n\\centering\n\\small\n"
        f"{body}\n\\caption{{{caption}}}\n\\label{{tab:{table.name}}}\n\\end{{table}}\n"
    )


def write_table(table: Table, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "csv": table.frame.to_csv(index=False),
        "md": to_markdown(table),
        "tex": to_latex(table),
    }
    paths = []
    for ext, text in outputs.items():
        path = out_dir / f"{table.name}.{ext}"
        atomic_write_text(path, text)
        paths.append(path)
    return paths


def load_profile(path: str | Path) -> Profile:
    """A profile config: the one the workflow ran with (its `profile_config` rule's dump), or
    the paper profile."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"profile config not found: {path}")
    return Profile(yaml.safe_load(path.read_text()))


def add_profile_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        required=True,
        help="workflow config as run (results/<profile>/runs/profile.yaml)",
    )


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("table", choices=ALL_TABLES, help="the supplement's table to build")
    add_profile_argument(parser)
    parser.add_argument(
        "--paper-profile",
        default=PAPER_PROFILE,
        help="the paper's recipe, which the non-paper settings column compares each run with "
        f"(default: {PAPER_PROFILE})",
    )
    parser.add_argument("--out-dir", required=True, help="writes <table>.csv, .md and .tex here")


def run(args: argparse.Namespace) -> int:
    paper = load_profile(args.paper_profile)
    table = build_table(load_profile(args.profile), args.table, paper)
    for path in write_table(table, args.out_dir):
        print(path)
    return 0
