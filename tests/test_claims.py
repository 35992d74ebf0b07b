"""The claims report: spec rows, verdicts on hand-made per-query outcomes, the outcomes loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from svitt.cli import main
from svitt.errors import MissingFileError, UnreadableFileError, UserError
from svitt.plan.runs import Profile, Run
from svitt.plan.specs import SpecError
from svitt.report.claims import (
    SKIPPED,
    check_claims,
    claim_runs,
    claims_frame,
    load_claims,
    parse_difference,
    to_markdown,
    verdict,
    write_claims,
)
from svitt.report.intervals import Interval
from svitt.report.outcomes import outcomes_path, read_outcomes

REPO = Path(__file__).resolve().parents[1]
QUERIES = 40
HALF = np.array([0] * (QUERIES // 2) + [50] * (QUERIES // 2))  # ranks: R@k = 50 % for k <= 10


def synthetic_profile() -> Profile:
    return Profile(yaml.safe_load((REPO / "workflow/config/default.yaml").read_text()))


def write_outcomes(profile: Profile, run: Run | str, scores: np.ndarray) -> None:
    """Ranks of each query's first positive (retrieval) or 1/0 correct (QA), in test order."""
    run = Run.from_path(run) if isinstance(run, str) else run
    path = Path(outcomes_path(profile, run))
    path.parent.mkdir(parents=True, exist_ok=True)
    scores = [int(s) for s in scores]
    if run.task == "finetune-qa":
        ids = [f"q{i}" for i in range(len(scores))]
        data = {"task": "qa", "question_id": ids, "correct": scores}
        data["question_type"] = [None] * len(scores)
    else:
        data = {"task": "retrieval", "query": list(range(len(scores))), "rank": scores}
    path.write_text(json.dumps(data))


def write_all_outcomes(profile: Profile) -> None:
    """The same outcomes for every compared run: every difference is exactly 0."""
    for run in claim_runs(profile, load_claims(profile.ablations)):
        write_outcomes(profile, run, HALF if run.task != "finetune-qa" else HALF == 0)


def by_id(profile: Profile) -> dict:
    return {v.claim.id: v for v in check_claims(profile)}


def test_identical_runs_support_equal_and_contradict_strict_claims(workdir: Path) -> None:
    profile = synthetic_profile()
    write_all_outcomes(profile)
    verdicts = by_id(profile)
    assert len(verdicts) == len(load_claims(profile.ablations))
    for claim_id in ("A8-singularity-ssv2_label", "A8-singularity-anet_qa"):  # `=`
        interval = verdicts[claim_id].interval
        assert (interval.value, interval.low, interval.high) == (0.0, 0.0, 0.0)
        assert verdicts[claim_id].verdict == "supported"
    assert verdicts["A7-raster-morton-msrvtt"].verdict == "supported"  # `>=`: 0 is on its side
    assert verdicts["A3-hybrid-msrvtt"].verdict == "contradicted"  # `>`: 0 is not
    assert verdicts["FA1-robust-q0.3-didemo"].verdict == "contradicted"  # `<`, four terms
    # Singularity-temporal is configured in the paper profile only.
    skipped = {key for key, v in verdicts.items() if v.verdict == SKIPPED}
    assert skipped == {"A8-singularity_temporal-ssv2_label", "A8-singularity_temporal-anet_qa"}
    assert verdicts["A8-singularity_temporal-anet_qa"].missing == (
        "finetune-qa/singularity_temporal/T4/anet_qa",
        "finetune-qa/singularity_temporal/T4/anet_qa/shuffle",
    )


def test_all_hits_against_all_misses(workdir: Path) -> None:
    profile = synthetic_profile()
    write_all_outcomes(profile)
    hits, misses = np.zeros(QUERIES), np.full(QUERIES, 99)
    write_outcomes(profile, "zero-shot/svitt-hybrid/T8/msrvtt/normal", hits)
    write_outcomes(profile, "zero-shot/svitt-dense/T8/msrvtt/normal", misses)
    write_outcomes(profile, "zero-shot/svitt-hybrid/T8/didemo/normal", misses)
    write_outcomes(profile, "zero-shot/svitt-dense/T8/didemo/normal", hits)
    # A drop from every answer right to every answer wrong, for dense SViTT only.
    write_outcomes(profile, "finetune-qa/svitt-dense/T8/anet_qa", np.ones(QUERIES))
    write_outcomes(profile, "finetune-qa/svitt-dense/T8/anet_qa/shuffle", np.zeros(QUERIES))
    verdicts = by_id(profile)
    supported, contradicted = verdicts["A3-hybrid-msrvtt"], verdicts["A3-hybrid-didemo"]
    assert (supported.verdict, supported.interval) == ("supported", Interval(100.0, 100.0, 100.0))
    assert (contradicted.verdict, contradicted.interval.value) == ("contradicted", -100.0)
    assert verdicts["A8-dense-anet_qa"].verdict == "supported"
    # Hybrid drops by 0, dense by 100: the difference of the drops is -100 points.
    larger = verdicts["A8-hybrid-vs-dense-anet_qa"]
    assert (larger.verdict, larger.interval.value) == ("contradicted", -100.0)


def test_two_seeds_pool_their_pairs_and_show_the_spread(workdir: Path) -> None:
    profile = Profile(
        {**yaml.safe_load((REPO / "workflow/config/default.yaml").read_text()), "seeds": [0, 1]}
    )
    write_all_outcomes(profile)
    # Seed 1's hybrid answers every question right in order and wrong shuffled: a drop of
    # 100 points there, 0 for seed 0.
    write_outcomes(profile, "finetune-qa/svitt-hybrid@seed1/T8/anet_qa", np.ones(QUERIES))
    write_outcomes(profile, "finetune-qa/svitt-hybrid@seed1/T8/anet_qa/shuffle", np.zeros(QUERIES))
    verdicts = by_id(profile)
    drop = verdicts["A8-hybrid-anet_qa"]
    assert drop.interval.value == 50.0  # pooled: half the pairs differ by 1
    assert 35.0 < drop.interval.low < 50.0 < drop.interval.high < 65.0  # 80 pairs: about ±11
    assert round(drop.std, 2) == 70.71  # stdev(0, 100)
    assert verdicts["A8-dense-anet_qa"].std == 0.0
    markdown = to_markdown(profile, list(verdicts.values()))
    assert "50.0 ± 70.7 [" in markdown and "Training seeds 0, 1" in markdown
    assert "std" in claims_frame(list(verdicts.values())).columns


def test_a_claim_names_no_seed(workdir: Path) -> None:
    with pytest.raises(SpecError, match=r"names a seed; a claim compares the runs of every seed"):
        parse_difference(
            "finetune-qa/svitt-hybrid@seed1/T8/anet_qa - finetune-qa/svitt-dense/T8/anet_qa",
            "row 1",
        )


def test_noisy_difference_is_inconclusive(workdir: Path) -> None:
    profile = synthetic_profile()
    write_all_outcomes(profile)
    rng = np.random.default_rng(0)
    for run in ("finetune-qa/singularity/T4/anet_qa", "finetune-qa/singularity/T4/anet_qa/shuffle"):
        write_outcomes(profile, run, rng.integers(0, 2, QUERIES))
    claim = by_id(profile)["A8-singularity-anet_qa"]
    assert claim.interval.low < 0 < claim.interval.high
    assert claim.verdict == "inconclusive"


@pytest.mark.parametrize(
    ("relation", "low", "high", "expected"),
    [
        (">", 0.5, 3.0, "supported"),
        (">", 0.0, 3.0, "inconclusive"),
        (">", -2.0, 0.0, "contradicted"),
        (">=", 0.0, 3.0, "supported"),
        (">=", -2.0, -0.5, "contradicted"),
        ("<", -2.0, -0.5, "supported"),
        ("<", 0.0, 0.0, "contradicted"),
        ("<=", 0.0, 0.0, "supported"),
        ("=", 0.0, 0.0, "supported"),
        ("=", -1.0, 1.0, "inconclusive"),
        ("=", 0.5, 1.0, "contradicted"),
    ],
)
def test_verdict_rule(relation: str, low: float, high: float, expected: str) -> None:
    assert verdict(Interval((low + high) / 2, low, high), relation) == expected


def test_a_spec_row_adds_a_claim(workdir: Path) -> None:
    profile = synthetic_profile()
    write_all_outcomes(profile)
    before = len(check_claims(profile))
    row = (
        "A3-dense-vs-singularity\tTable A3\tSViTT outperforms Singularity* at 8 frames\tr1\t"
        "zero-shot/svitt-dense/T8/msrvtt/normal - zero-shot/singularity/T8/msrvtt/normal\t>\n"
    )
    with open(workdir / "ablations/claims.tsv", "a") as spec:
        spec.write(row)
    write_all_outcomes(profile)  # the new row's runs too
    verdicts = check_claims(profile)
    assert len(verdicts) == before + 1
    md, csv = write_claims(profile, verdicts, workdir / "results/synthetic")
    assert "SViTT outperforms Singularity* at 8 frames" in md.read_text()
    frame = pd.read_csv(csv)
    assert len(frame) == before + 1
    added = frame.set_index("claim").loc["A3-dense-vs-singularity"]
    assert (added.difference, added.verdict) == (0.0, "contradicted")


def test_claims_command_writes_both_reports(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    profile = synthetic_profile()
    write_all_outcomes(profile)
    dump = Path(profile.runs_dir) / "profile.yaml"
    dump.write_text(yaml.safe_dump(dict(profile.config)))
    assert main(["claims", "--profile", str(dump), "--out-dir", profile.results]) == 0
    md = (workdir / profile.results / "claims.md").read_text()
    assert "| A8-singularity-anet_qa" in md and "**supported**" in md
    assert "- A8-singularity_temporal-anet_qa (Table A8): finetune-qa/" in md
    frame = pd.read_csv(workdir / profile.results / "claims.csv")
    assert list(frame.columns) == [
        "claim",
        "where",
        "statement",
        "metric",
        "compared",
        "relation",
        "difference",
        "low",
        "high",
        "verdict",
    ]
    # A missing outcomes file: one line naming it.
    Path(outcomes_path(profile, Run.from_path("finetune-qa/svitt-dense/T8/anet_qa"))).unlink()
    assert main(["claims", "--profile", str(dump), "--out-dir", profile.results]) == 2
    assert (
        "outcomes file not found: results/synthetic/runs/finetune-qa/svitt-dense/T8/anet_qa/"
        in (capsys.readouterr().err)
    )


def test_paired_claims_need_the_same_queries(workdir: Path) -> None:
    profile = synthetic_profile()
    write_all_outcomes(profile)
    write_outcomes(profile, "zero-shot/svitt-dense/T8/msrvtt/normal", HALF[:-1])
    with pytest.raises(UserError, match=r"claim A3-hybrid-msrvtt: .* scored different test"):
        check_claims(profile)


HYBRID, DENSE = "zero-shot/svitt-hybrid/T8/msrvtt/normal", "zero-shot/svitt-dense/T8/msrvtt/normal"


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        (f"mean_recall\t{HYBRID}\t>", r"expected '<run> - <run>"),
        (f"mean_recall\t{HYBRID} -{DENSE}\t>", "a space on each side"),
        ("mean_recall\tpretrain/svitt-hybrid/T8 - pretrain/svitt-dense/T8\t>", "no per-query"),
        (f"accuracy\t{HYBRID} - {DENSE}\t>", "needs all runs to be finetune-qa runs"),
        (f"r1\t{HYBRID} - {DENSE.replace('msrvtt', 'didemo')}\t>", "a claim compares one"),
        (f"r1\t{HYBRID} - {DENSE}\t>>", "column 'relation'"),
        (f"R@1\t{HYBRID} - {DENSE}\t>", "column 'metric'"),
    ],
)
def test_spec_errors_name_the_row(workdir: Path, cells: str, message: str) -> None:
    with open(workdir / "ablations/claims.tsv", "a") as spec:
        spec.write(f"bad\tTable A3\tA statement\t{cells}\n")
    rows = len((workdir / "ablations/claims.tsv").read_text().splitlines()) - 1
    with pytest.raises(SpecError, match=rf"claims.tsv: row {rows} \('bad'\).*{message}"):
        load_claims(workdir / "ablations")


# --- the outcomes loader --------------------------------------------------------------------


def test_outcome_values_per_query(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.json"
    path.write_text(json.dumps({"task": "retrieval", "query": [0, 1, 2, 3], "rank": [0, 3, 7, 12]}))
    assert list(read_outcomes(path).values("r1")) == [1.0, 0.0, 0.0, 0.0]
    assert list(read_outcomes(path).values("r5")) == [1.0, 1.0, 0.0, 0.0]
    assert list(read_outcomes(path).values("r10")) == [1.0, 1.0, 1.0, 0.0]
    assert read_outcomes(path).values("mean_recall") == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps({"task": "qa", "question_id": [7, 8], "correct": [1, 0]}))
    assert list(read_outcomes(qa).values("accuracy")) == [1.0, 0.0]
    with pytest.raises(SpecError, match=r"qa.json: no metric 'r1' in qa outcomes; allowed"):
        read_outcomes(qa).values("r1")


def test_outcomes_loader_errors(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.json"
    with pytest.raises(MissingFileError, match=r"outcomes file not found: .*outcomes.json"):
        read_outcomes(path).values("r1")
    path.write_text(json.dumps({"task": "retrieval", "query": [0], "rank": [0]}))
    with pytest.raises(SpecError, match=r"unknown metric 'recall'; allowed: \['r1'"):
        read_outcomes(path).values("recall")
    path.write_text(json.dumps({"task": "retrieval", "query": [0, 1], "rank": [0]}))
    with pytest.raises(UnreadableFileError, match=r"must be non-empty and of one length"):
        read_outcomes(path).values("r1")
    path.write_text(json.dumps({"task": "ranking"}))
    with pytest.raises(UnreadableFileError, match=r"key 'task' must be one of"):
        read_outcomes(path).values("r1")
    path.write_text("{")
    with pytest.raises(UnreadableFileError, match=r"not JSON"):
        read_outcomes(path).values("r1")
