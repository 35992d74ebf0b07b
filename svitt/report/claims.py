"""`svitt claims --profile PROFILE.yaml --out-dir DIR`: the supplement's claims, checked.

Each row of `ablations/claims.tsv` is one qualitative claim of the supplement: where it is made,
the statement, the metric, and a `difference` of runs (planner paths, `svitt.plan.runs`)
with a `relation` to 0:

    A8-hybrid-anet_qa  Table A8  Shuffled frames hurt ...  accuracy
        finetune-qa/svitt-hybrid/T8/anet_qa - finetune-qa/svitt-hybrid/T8/anet_qa/shuffle  >

The difference is a signed sum of runs (`a - b`, or `a - b - c + d` for a difference of
differences), measured on the runs' per-query outcomes (`outcomes.json`) with the paired 95 %
bootstrap interval of `svitt.report.intervals.paired_sum`. The verdict compares the interval
with the region the relation claims:

    supported     the interval lies entirely inside it
    contradicted  the interval lies entirely outside it
    inconclusive  otherwise

A run path names no seed: over a profile with several training `seeds` each term is the run
of every seed, their outcomes pooled seed after seed (pairs are the same seed and query), and
the report shows the standard deviation of the difference over the seeds beside it.

`>` claims (0, inf), `>=` [0, inf), `<` and `<=` their mirrors. `=` claims exactly 0: it is
supported only when no test query tells the runs apart (the interval is [0, 0], as for a model
that is order-blind by construction), contradicted when the interval excludes 0. A claim whose
runs this profile does not have (no table or figure of it reads them, e.g. Singularity-temporal
outside the paper profile) is listed as skipped. Written as `claims.md` and `claims.csv`.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from svitt.errors import UserError
from svitt.files import atomic_write_text
from svitt.plan.runs import RESULTS_TABLES, Profile, Run, figure_a1_runs, table_runs
from svitt.plan.specs import SpecError, load_spec, read_tsv
from svitt.report.intervals import Interval, paired_sum, seed_std
from svitt.report.outcomes import METRICS, outcomes_path, read_outcomes
from svitt.report.tables import add_profile_argument, load_profile

SPEC = "claims.tsv"
COLUMNS = ("id", "where", "statement", "metric", "difference", "relation")
RELATIONS = (">", ">=", "<", "<=", "=")
EVALUATIONS = ("zero-shot", "finetune-retrieval", "finetune-qa")
SKIPPED = "skipped"
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Claim:
    id: str
    where: str
    statement: str
    metric: str
    terms: tuple[tuple[int, Run], ...]  # (sign, run) of the signed sum
    relation: str

    @property
    def difference(self) -> str:
        """The signed sum as the spec writes it: `a - b - c + d`."""
        text = " ".join(f"{'+' if sign > 0 else '-'} {run.path}" for sign, run in self.terms)
        return text[2:] if text.startswith("+ ") else text


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    interval: Interval | None  # None: the profile lacks one of the claim's runs
    verdict: str
    missing: tuple[str, ...] = ()
    std: float | None = None  # of the difference over the training seeds (several seeds)


def parse_difference(text: str, where: str) -> tuple[tuple[int, Run], ...]:
    """`a - b + c` (operators between spaces; run paths contain hyphens) -> signed runs."""
    tokens = text.split()
    if tokens and tokens[0] not in ("+", "-"):
        tokens.insert(0, "+")
    signs, paths = tokens[::2], tokens[1::2]
    if len(paths) < 2 or len(signs) != len(paths) or not set(signs) <= {"+", "-"}:
        raise SpecError(
            f"{where}: expected '<run> - <run> [+|- <run> ...]', a space on each side of"
            f" every + and -, got {text!r}"
        )
    terms = []
    for sign, path in zip(signs, paths, strict=True):
        try:
            run = Run.from_path(path)
        except SpecError as err:
            raise SpecError(f"{where}: {err}") from None
        if run.seed:
            raise SpecError(
                f"{where}: run {path} names a seed; a claim compares the runs of every seed of"
                " the profile (`seeds`): write the path without @seed<N>"
            )
        if run.task not in EVALUATIONS:
            raise SpecError(
                f"{where}: run {path} has no per-query outcomes; allowed tasks: {list(EVALUATIONS)}"
            )
        terms.append((1 if sign == "+" else -1, run))
    return tuple(terms)


def _check_comparable(claim: Claim, where: str) -> None:
    """Paired outcomes need one test split, and the metric must be the runs' kind."""
    datasets = {run.dataset for _, run in claim.terms}
    if len(datasets) != 1:
        raise SpecError(f"{where}: runs on datasets {sorted(datasets)}; a claim compares one")
    qa = {run.task == "finetune-qa" for _, run in claim.terms}
    if len(qa) != 1 or (claim.metric == "accuracy") != qa.pop():
        raise SpecError(
            f"{where}: metric {claim.metric!r} needs all runs to be "
            + ("finetune-qa runs" if claim.metric == "accuracy" else "retrieval runs")
        )


def load_claims(ablations: str | Path) -> list[Claim]:
    """The rows of `ablations/claims.tsv`; errors name the row and column."""
    path = Path(ablations) / SPEC
    claims: list[Claim] = []
    for index, row in enumerate(read_tsv(path, COLUMNS)):
        cells = {key: row[key].strip() for key in COLUMNS}
        where = f"{path}: row {index + 1} ({cells['id']!r})"
        if not _ID.match(cells["id"]):
            raise SpecError(f"{where}, column 'id': must match {_ID.pattern}")
        if cells["id"] in {claim.id for claim in claims}:
            raise SpecError(f"{where}, column 'id': duplicate id")
        if cells["metric"] not in METRICS:
            raise SpecError(f"{where}, column 'metric': allowed: {list(METRICS)}")
        if cells["relation"] not in RELATIONS:
            raise SpecError(f"{where}, column 'relation': allowed: {list(RELATIONS)}")
        terms = parse_difference(cells["difference"], f"{where}, column 'difference'")
        claim = Claim(
            cells["id"],
            cells["where"],
            cells["statement"],
            cells["metric"],
            terms,
            cells["relation"],
        )
        _check_comparable(claim, f"{where}, column 'difference'")
        claims.append(claim)
    if not claims:
        raise SpecError(f"{path}: no rows; add one claim per line")
    return claims


def profile_runs(profile: Profile) -> set[Run]:
    """Every evaluation run the profile's tables and Figure A1 read: the runs the DAG has."""
    runs = {run for table in RESULTS_TABLES for run in table_runs(profile, table)}
    sweep = figure_a1_runs(profile, load_spec(profile.ablations, "figure_A1"))
    return runs | {run for point in sweep for run in point}


def claim_runs(profile: Profile, claims: list[Claim]) -> list[Run]:
    """The compared runs of the claims this profile can check, every seed's (the inputs of
    `claims`)."""
    available = profile_runs(profile)
    runs = [
        run
        for claim in claims
        if not _missing(profile, claim, available)
        for _, term in claim.terms
        for run in profile.replicates(term)
    ]
    return list(dict.fromkeys(runs))


def _missing(profile: Profile, claim: Claim, available: set[Run]) -> tuple[str, ...]:
    return tuple(
        run.path
        for _, term in claim.terms
        for run in profile.replicates(term)
        if run not in available
    )


def verdict(interval: Interval, relation: str) -> str:
    """supported / contradicted / inconclusive: the interval inside, outside or across the
    region `relation` claims for the difference (see the module docstring)."""
    low, high = interval.low, interval.high
    inside, outside = {
        ">": (low > 0, high <= 0),
        ">=": (low >= 0, high < 0),
        "<": (high < 0, low >= 0),
        "<=": (high <= 0, low > 0),
        "=": (low == high == 0, low > 0 or high < 0),
    }[relation]
    return "supported" if inside else "contradicted" if outside else "inconclusive"


def _seed_terms(profile: Profile, claim: Claim, seed: int) -> list[tuple[int, np.ndarray]]:
    """The claim's signed per-query values on the runs of one training seed."""
    outcomes = [
        read_outcomes(outcomes_path(profile, replace(run, seed=seed))) for _, run in claim.terms
    ]
    first = outcomes[0]
    for other in outcomes[1:]:
        if other.ids != first.ids:
            raise UserError(
                f"claim {claim.id}: {other.path} and {first.path} scored different test"
                " queries (or in another order); paired outcomes need the same ones"
            )
    return [
        (sign, out.values(claim.metric))
        for (sign, _), out in zip(claim.terms, outcomes, strict=True)
    ]


def check_claim(profile: Profile, claim: Claim, available: set[Run]) -> Verdict:
    missing = _missing(profile, claim, available)
    if missing:
        return Verdict(claim, None, SKIPPED, missing)
    by_seed = [_seed_terms(profile, claim, seed) for seed in profile.seeds]
    pooled = [
        (sign, np.concatenate([terms[i][1] for terms in by_seed]))
        for i, (sign, _) in enumerate(claim.terms)
    ]
    interval = paired_sum(pooled)
    std = seed_std(
        [sum(sign * 100.0 * float(values.mean()) for sign, values in terms) for terms in by_seed]
    )
    return Verdict(claim, interval, verdict(interval, claim.relation), std=std)


def check_claims(profile: Profile) -> list[Verdict]:
    available = profile_runs(profile)
    return [check_claim(profile, claim, available) for claim in load_claims(profile.ablations)]


def claims_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    rows = []
    for v in verdicts:
        c, interval = v.claim, v.interval
        rows.append(
            {
                "claim": c.id,
                "where": c.where,
                "statement": c.statement,
                "metric": c.metric,
                "compared": c.difference,
                "relation": f"{c.relation} 0",
                "difference": None if interval is None else round(interval.value, 2),
                **({} if v.std is None else {"std": round(v.std, 2)}),
                "low": None if interval is None else round(interval.low, 2),
                "high": None if interval is None else round(interval.high, 2),
                "verdict": v.verdict,
            }
        )
    return pd.DataFrame(rows, dtype=object)


def _measured(v: Verdict) -> str:
    """`d [low, high]`, or `d ± std [low, high]` over several seeds."""
    if v.std is None:
        return v.interval.compact()
    i = v.interval
    return f"{i.value:.1f} ± {v.std:.1f} [{i.low:.1f}, {i.high:.1f}]"


def to_markdown(profile: Profile, verdicts: list[Verdict]) -> str:
    checked = [v for v in verdicts if v.interval is not None]
    rows = [
        [
            v.claim.id,
            v.claim.where,
            v.claim.statement,
            v.claim.metric,
            _measured(v),
            f"**{v.verdict}**",
            f"`{v.claim.difference}` {v.claim.relation} 0",
        ]
        for v in checked
    ]
    body = tabulate(
        rows,
        headers=[
            "claim",
            "where",
            "statement",
            "metric",
            "measured [95 % CI]",
            "verdict",
            "compared",
        ],
        tablefmt="pipe",
        disable_numparse=True,
    )
    counts = Counter(v.verdict for v in checked)
    summary = ", ".join(f"{counts[k]} {k}" for k in ("supported", "contradicted", "inconclusive"))
    text = (
        f"**Claims of the supplement, checked on profile `{profile.name}`** ({summary}). "
        "Measured: the difference of the compared runs in percent points with its paired 95 % "
        "bootstrap interval over test queries. A verdict is `supported` when the interval lies "
        "inside the claimed region (`> 0`, `>= 0`, ...; `= 0`: exactly [0, 0]), "
        f"`contradicted` when it lies outside, else `inconclusive`. Spec: `{SPEC}`."
    )
    if len(profile.seeds) > 1:
        text += (
            f" Training seeds {', '.join(map(str, profile.seeds))}: the difference over every"
            " seed's runs ± its standard deviation over the seeds, the interval over the seeds'"
            " queries pooled."
        )
    text += f"\n\n{body}\n"
    skipped = [v for v in verdicts if v.interval is None]
    if skipped:
        lines = [f"- {v.claim.id} ({v.claim.where}): {', '.join(v.missing)}" for v in skipped]
        text += "\nNot checked: this profile has no such runs.\n\n" + "\n".join(lines) + "\n"
    return text


def write_claims(profile: Profile, verdicts: list[Verdict], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / "claims.md", out_dir / "claims.csv"]
    atomic_write_text(paths[0], to_markdown(profile, verdicts))
    atomic_write_text(paths[1], claims_frame(verdicts).to_csv(index=False))
    return paths


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_profile_argument(parser)
    parser.add_argument("--out-dir", required=True, help="writes claims.md and claims.csv here")


def run(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    for path in write_claims(profile, check_claims(profile), args.out_dir):
        print(path)
    return 0
