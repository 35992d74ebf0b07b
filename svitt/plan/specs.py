"""The study specs under `ablations/`: the sparsity table, the dataset table, one YAML per study.

`sparsity.tsv` holds one sparsity configuration per row; every table that compares sparsity
configurations expands its `sparsity: each` rows over it, so a new row adds runs and table rows
without code changes. Errors name the file, the row and the column.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from svitt.config import ATTENTIONS, Attention
from svitt.errors import UserError

SPARSITY_COLUMNS = ("name", "label", "attention", "K_l", "K_r", "G", "q_m", "q_m_qa")
DATASET_COLUMNS = (
    "name",
    "label",
    "group",
    "reported_label",
    "reported_avg_duration",
    "reported_videos",
    "reported_texts",
)
_NAME = re.compile(r"^[A-Za-z0-9_]+$")  # names become path components and variant parts
_KEEP_COLUMN = re.compile(r"^q_v_T([0-9]+)$")


class SpecError(UserError, ValueError):
    """A study spec or parameter table is malformed; the message names file, row and column."""


@dataclass(frozen=True)
class SparsityRow:
    """One sparsity configuration (supplement A.1); G is in the paper's 14x14-patch units."""

    name: str
    label: str
    attention: Attention
    local_blocks: int  # K_l
    random_blocks: int  # K_r
    block_size: int  # G
    visual_keep: dict[int, float]  # q_v per clip length T
    cross_keep: float  # q_m for pre-training and retrieval
    cross_keep_qa: float  # q_m for video QA

    def visual_keep_rate(self, frames: int) -> float:
        if frames not in self.visual_keep:
            raise SpecError(
                f"sparsity row {self.name!r} has no q_v_T{frames} column; clip lengths with a "
                f"keep rate: {sorted(self.visual_keep)}"
            )
        return self.visual_keep[frames]


def read_tsv(
    path: Path, required: tuple[str, ...], optional: re.Pattern[str] | None = None
) -> list[dict[str, str]]:
    """Rows of a TSV with exactly the `required` columns plus any matching `optional`."""
    if not path.is_file():
        raise SpecError(f"{path}: file not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    missing = [c for c in required if c not in columns]
    if missing:
        raise SpecError(f"{path}: missing columns {missing}; required: {list(required)}")
    extra = [c for c in columns if c not in required and not (optional and optional.match(c))]
    if extra:
        allowed = list(required) + ([optional.pattern] if optional else [])
        raise SpecError(f"{path}: unknown column {extra[0]!r}; allowed: {allowed}")
    for i, row in enumerate(rows):
        if None in row or None in row.values():  # csv's marks of extra and missing cells
            more = "more" if None in row else "fewer"
            raise SpecError(
                f"{path}: row {i + 1} has {more} cells than the {len(columns)} columns of the "
                "header; separate the cells by one tab each"
            )
    return rows


def _number(path: Path, index: int, row: dict[str, str], column: str, kind: type) -> Any:
    raw = (row.get(column) or "").strip()
    try:
        return kind(raw)
    except ValueError:
        raise SpecError(
            f"{path}: row {index + 1} ({row.get('name')!r}), column {column!r}: expected "
            f"{'an integer' if kind is int else 'a number'}, got {raw!r}"
        ) from None


def _count(path: Path, index: int, row: dict[str, str], column: str, allowed: str) -> int:
    """An integer cell checked against `allowed`: "odd >= 1", ">= 0" or ">= 1"."""
    value = _number(path, index, row, column, int)
    ok = {"odd >= 1": value >= 1 and value % 2 == 1, ">= 0": value >= 0, ">= 1": value >= 1}
    if not ok[allowed]:
        raise SpecError(
            f"{path}: row {index + 1} ({row['name']!r}), column {column!r}: an integer "
            f"{allowed} is required, got {value}"
        )
    return value


def _rate(path: Path, index: int, row: dict[str, str], column: str) -> float:
    value = _number(path, index, row, column, float)
    if not 0.0 < value <= 1.0:
        raise SpecError(
            f"{path}: row {index + 1} ({row['name']!r}), column {column!r}: a keep rate in "
            f"(0, 1] is required, got {value}"
        )
    return value


def load_sparsity_table(path: str | Path) -> list[SparsityRow]:
    """Read `sparsity.tsv`: name, label, attention, K_l, K_r, G, q_v_T<frames>..., q_m, q_m_qa."""
    path = Path(path)
    rows = read_tsv(path, SPARSITY_COLUMNS, _KEEP_COLUMN)
    if not rows:
        raise SpecError(f"{path}: no rows; add one sparsity configuration per line")
    keep_columns = {int(m.group(1)): c for c in rows[0] if (m := _KEEP_COLUMN.match(c))}
    if not keep_columns:
        raise SpecError(f"{path}: no q_v_T<frames> column (visual keep rate per clip length)")
    out: list[SparsityRow] = []
    for i, row in enumerate(rows):
        name = row["name"].strip()
        if not _NAME.match(name):
            raise SpecError(
                f"{path}: row {i + 1}, column 'name': {name!r} must match {_NAME.pattern}"
            )
        if name in {r.name for r in out}:
            raise SpecError(f"{path}: row {i + 1}, column 'name': duplicate name {name!r}")
        attention = row["attention"].strip()
        if attention not in ATTENTIONS:
            raise SpecError(
                f"{path}: row {i + 1} ({name!r}), column 'attention': expected "
                f"{' or '.join(map(repr, ATTENTIONS))}, got {attention!r}"
            )
        out.append(
            SparsityRow(
                name=name,
                label=row["label"].strip(),
                attention=attention,
                local_blocks=_count(path, i, row, "K_l", "odd >= 1"),  # a centred window
                random_blocks=_count(path, i, row, "K_r", ">= 0"),
                block_size=_count(path, i, row, "G", ">= 1"),
                visual_keep={t: _rate(path, i, row, c) for t, c in sorted(keep_columns.items())},
                cross_keep=_rate(path, i, row, "q_m"),
                cross_keep_qa=_rate(path, i, row, "q_m_qa"),
            )
        )
    return out


@dataclass(frozen=True)
class DatasetRow:
    """A dataset's display names and the supplement's Table A2 statistics of the real one."""

    name: str
    label: str
    group: str
    reported_label: str
    reported_avg_duration: str
    reported_videos: str
    reported_texts: str


def load_datasets(ablations: str | Path) -> dict[str, DatasetRow]:
    rows = read_tsv(Path(ablations) / "datasets.tsv", DATASET_COLUMNS)
    return {r["name"]: DatasetRow(**{c: r[c].strip() for c in DATASET_COLUMNS}) for r in rows}


def load_spec(ablations: str | Path, name: str) -> dict[str, Any]:
    """The study spec `ablations/<name>.yaml` (a table like `A3` or a figure like `figure_A1`)."""
    path = Path(ablations) / f"{name}.yaml"
    if not path.is_file():
        raise SpecError(f"{path}: study spec not found")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise SpecError(f"{path}: expected a YAML mapping")
    return spec
