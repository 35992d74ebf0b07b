"""Run resolution, study specs and table building (no training: metrics files are written here)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from svitt.config import load_config
from svitt.plan.runs import (
    Profile,
    Run,
    Variant,
    figure_a1_runs,
    run_chain,
    table_rows,
    table_runs,
)
from svitt.plan.specs import SpecError, load_sparsity_table, load_spec
from svitt.report.intervals import mean_interval
from svitt.report.outcomes import outcomes_path
from svitt.report.settings import non_paper_settings
from svitt.report.tables import (
    REPORTED,
    _with_exceptions,
    build_table,
    format_lr,
    write_table,
)

REPO = Path(__file__).resolve().parents[1]


def load_profile_config(name: str) -> dict:
    return yaml.safe_load((REPO / "workflow" / "config" / f"{name}.yaml").read_text())


def synthetic_profile() -> Profile:
    return Profile(load_profile_config("default"))


# --- runs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "pretrain/svitt-hybrid/T4",
        "pretrain/singularity/T1",
        "zero-shot/svitt-dense/T8/msrvtt/keep0.5",
        "finetune-retrieval/svitt-hybrid-morton/T8/ssv2_label",
        "finetune-qa/frozen-dense/T8/anet_qa/shuffle",
        "tokens/svitt-hybrid/T8/didemo",
        "pretrain/svitt-hybrid+plain/T4",
        "finetune-qa/svitt-hybrid-morton+plain/T8/anet_qa/shuffle",
        "zero-shot/singularity+plain/T4/msrvtt/normal",
        "pretrain/svitt-hybrid@seed1/T4",
        "finetune-qa/svitt-hybrid-morton+plain@seed12/T8/anet_qa/shuffle",
    ],
)
def test_run_paths_round_trip(path: str) -> None:
    assert Run.from_path(path).path == path


def test_a_recipe_is_its_own_part_of_the_variant() -> None:
    assert Variant.parse("svitt-hybrid-morton+plain") == Variant(
        "svitt", "hybrid", "morton", "plain"
    )
    assert Variant.parse("svitt-dense") != Variant.parse("svitt-dense+plain")


@pytest.mark.parametrize(
    "path",
    [
        "pretrain/svitt/T4",  # svitt needs a sparsity row
        "pretrain/singularity-dense/T4",  # frame-level models take none
        "pretrain/svitt-hybrid/T4/msrvtt",  # pre-training has no dataset
        "zero-shot/svitt-hybrid/T4/msrvtt",  # zero-shot needs a probe
        "zero-shot/svitt-hybrid/T4/msrvtt/sideways",
        "bogus/svitt-hybrid/T4",
        "pretrain/svitt-hybrid+/T4",  # an empty recipe name
        "pretrain/svitt-hybrid+plain+more/T4",
        "pretrain/svitt-hybrid+Plain/T4",
        "pretrain/singularity-raster-x/T4",
        "pretrain/svitt-hybrid@seed0/T4",  # seed 0 is the plain path
        "pretrain/svitt-hybrid@seed/T4",
        "pretrain/svitt-hybrid@1/T4",
        "pretrain/svitt-hybrid@seed1+plain/T4",  # the seed comes last
    ],
)
def test_bad_run_paths_are_rejected(path: str) -> None:
    with pytest.raises(SpecError):
        Run.from_path(path)


def test_progressive_chain_and_evaluation_sources(workdir: Path) -> None:
    profile = synthetic_profile()
    hybrid = Variant("svitt", "hybrid")
    assert profile.loads(Run("pretrain", hybrid, 4)) is None
    assert profile.loads(Run("pretrain", hybrid, 8)) == Run("pretrain", hybrid, 4)
    assert profile.loads(Run("pretrain", hybrid, 16)) == Run("pretrain", hybrid, 8)
    # Frame-level models start every clip length from scratch.
    assert profile.loads(Run("pretrain", Variant("singularity"), 1)) is None
    assert profile.loads(Run("pretrain", Variant("singularity"), 8)) is None
    # ... with the chain start's schedule, not the short one meant to continue from T = 4.
    singularity8 = load_config(profile.resolve(Run("pretrain", Variant("singularity"), 8)))
    hybrid4 = load_config(profile.resolve(Run("pretrain", hybrid, 4)))
    hybrid8 = load_config(profile.resolve(Run("pretrain", hybrid, 8)))
    assert singularity8.optim == hybrid4.optim != hybrid8.optim
    finetuned = Run("finetune-retrieval", hybrid, 8, "ssv2_label")
    assert profile.loads(finetuned) == Run("pretrain", hybrid, 8)
    probe = Run("finetune-retrieval", hybrid, 8, "ssv2_label", "shuffle")
    assert profile.loads(probe) == finetuned
    assert probe.command == "eval-retrieval"
    assert Run("finetune-qa", hybrid, 8, "anet_qa", "shuffle").command == "eval-qa"


def test_seeds_multiply_the_runs_and_set_the_training_seed(workdir: Path) -> None:
    config = load_profile_config("default")
    assert Profile(config).seeds == (0,)
    profile = Profile({**config, "seeds": [0, 3]})
    hybrid = Variant("svitt", "hybrid")
    probe = Run("finetune-qa", hybrid, 8, "anet_qa", "shuffle")
    assert [run.path for run in profile.replicates(probe)] == [
        "finetune-qa/svitt-hybrid/T8/anet_qa/shuffle",
        "finetune-qa/svitt-hybrid@seed3/T8/anet_qa/shuffle",
    ]
    seeded = profile.replicates(probe)[1]
    # A seed's chain is its own, back to the chain's start.
    assert [step.path for step in run_chain(profile, seeded)[1:]] == [
        "finetune-qa/svitt-hybrid@seed3/T8/anet_qa",
        "pretrain/svitt-hybrid@seed3/T8",
        "pretrain/svitt-hybrid@seed3/T4",
    ]
    assert [load_config(profile.resolve(step)).seed for step in run_chain(profile, seeded)] == [
        3
    ] * 4
    # The seed is the only difference between the two seeds' configs.
    first, other = (profile.resolve(run) for run in profile.replicates(probe))
    assert {**other, "seed": 0, "tags": first["tags"]} == first
    assert list(first) == list(other) and next(iter(first)) == "seed"
    rows = table_rows(profile, load_spec(profile.ablations, "A8"))
    assert all(len(runs) == 2 for row in rows for runs in row.runs.values())
    assert len(table_runs(profile, "A8")) == 2 * len(table_runs(Profile(config), "A8"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": []}, r"seeds: got \[\]; allowed: a non-empty list of distinct integers"),
        ({"seeds": [0, 0]}, r"seeds: got \[0, 0\]; allowed"),
        ({"seeds": [0, -1]}, r"seeds: got \[0, -1\]; need >= 0"),
        ({"seeds": "0"}, r"seeds: got '0'"),
        ({"run": {"seed": 1}}, r"run.seed is set per run from the top-level `seeds` list"),
    ],
)
def test_bad_seeds_are_named(change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        Profile({**load_profile_config("default"), **change})


def test_resolved_config_layers(workdir: Path) -> None:
    profile = Profile(load_profile_config("paper"))
    hybrid = Variant("svitt", "hybrid")
    didemo = load_config(profile.resolve(Run("zero-shot", hybrid, 8, "didemo", "keep0.5")))
    assert didemo.data.text_max_len == 64  # by_dataset over settings
    assert didemo.eval.visual_keep_rate == 0.5  # the probe
    assert didemo.model.sparsity.visual_keep_rate == 0.6  # q_v of T = 8
    assert didemo.model.sparsity.block_size == 56  # paper frames: G unscaled
    assert didemo.model.weights.vision is None  # weights come from the checkpoint
    qa = load_config(profile.resolve(Run("finetune-qa", hybrid, 8, "agqa")))
    assert (qa.model.sparsity.cross_keep_rate, qa.optim.epochs) == (0.5, 1)
    start = load_config(profile.resolve(Run("pretrain", hybrid, 4)))
    assert start.model.weights.vision is not None  # the chain's start loads image weights
    assert start.data.train == ("webvid",)
    morton = load_config(profile.resolve(Run("pretrain", Variant("svitt", "hybrid", "morton"), 4)))
    assert morton.model.sparsity.token_order == "morton"
    frozen = load_config(profile.resolve(Run("pretrain", Variant("frozen", "dense"), 4)))
    assert (frozen.model.arch, frozen.model.vision.abs_pos_emb) == ("frozen", True)


def test_paper_profile_takes_the_release_recipe(workdir: Path) -> None:
    profile = Profile(load_profile_config("paper"))
    hybrid = Variant("svitt", "hybrid")
    pretrain = load_config(profile.resolve(Run("pretrain", hybrid, 4)))
    assert set(pretrain.model.loss_weights) == {"vtc", "vtm", "mlm"}  # MLM in pre-training
    assert pretrain.optim.min_lr_ratio == 0.01
    finetune = load_config(profile.resolve(Run("finetune-retrieval", hybrid, 4, "msrvtt")))
    assert finetune.model.loss_weights == {"vtc": 1.0, "vtm": 1.0}  # no MLM downstream
    assert finetune.optim.min_lr_ratio == 0.1
    assert (finetune.eval.num_clips, finetune.eval.clip_ensemble) == (3, "lse")
    assert finetune.eval.rerank == "itm_logit"
    qa = load_config(profile.resolve(Run("finetune-qa", hybrid, 8, "anet_qa")))
    assert (qa.optim.min_lr_ratio, qa.eval.num_clips) == (0.1, 3)
    # Tables A5 and A8 have both Singularity baselines in the paper profile, only the frame
    # mean in the embedded default (which configures no singularity_temporal).
    for table in ("A5", "A8"):
        paper_archs = {run.variant.arch for run in table_runs(profile, table)}
        assert {"singularity", "singularity_temporal"} <= paper_archs
        default_archs = {run.variant.arch for run in table_runs(synthetic_profile(), table)}
        assert "singularity_temporal" not in default_archs and "singularity" in default_archs


def test_the_plain_recipe_drops_the_profile_additions_in_every_stage(workdir: Path) -> None:
    profile = synthetic_profile()
    plain = Variant("svitt", "hybrid", recipe="plain")
    runs = [Run("pretrain", plain, 4), Run("pretrain", plain, 8)]
    runs += [Run("finetune-retrieval", plain, 8, "ssv2_label", "shuffle")]
    for run in runs:
        cfg = load_config(profile.resolve(run))
        assert cfg.model.loss_weights == {"vtc": 1.0, "vtm": 1.0, "twin": 0.0}
        assert not cfg.data.reversal_negatives and not cfg.model.vision.abs_pos_emb
    qa = load_config(profile.resolve(Run("finetune-qa", plain, 8, "anet_qa", "shuffle")))
    assert qa.model.loss_weights == {"twin": 0.0}
    assert not qa.data.reversal_negatives and not qa.model.vision.abs_pos_emb
    # QA has the twins and their loss too, and the plain recipe drops them there as well.
    hybrid = Variant("svitt", "hybrid")
    ours = load_config(profile.resolve(Run("finetune-qa", hybrid, 8, "anet_qa")))
    assert ours.model.loss_weights == {"twin": 10.0} and ours.data.reversal_negatives
    assert ours.model.vision.abs_pos_emb
    # The rest of the schedule is the profile's.
    ours = load_config(profile.resolve(Run("pretrain", hybrid, 8)))
    assert load_config(profile.resolve(runs[1])).optim == ours.optim


def test_recipes_leave_every_other_run_as_it_was(workdir: Path) -> None:
    config = load_profile_config("default")
    without = Profile({key: value for key, value in config.items() if key != "recipes"})
    profile = Profile(config)
    runs = [run for table in ("A3", "A5", "A6", "A7", "A8") for run in table_runs(profile, table)]
    existing = [run for run in runs if run.variant.recipe is None]
    assert len(existing) < len(runs)
    for run in existing:
        for step in run_chain(profile, run):
            assert profile.resolve(step) == without.resolve(step), step.path


def test_an_unknown_recipe_names_the_profile_recipes(workdir: Path) -> None:
    run = Run("pretrain", Variant("svitt", "dense", recipe="fancy"), 4)
    with pytest.raises(SpecError, match=r"no recipe 'fancy' in `recipes` \(plain\)"):
        synthetic_profile().resolve(run)
    # A spec row of a recipe the profile does not configure is not one of its rows.
    assert all(run.variant.recipe is None for run in table_runs(paper_profile(), "A8"))


def test_a_misspelt_arch_in_a_spec_row_fails_even_where_it_is_not_configured(
    workdir: Path,
) -> None:
    spec = load_spec(workdir / "ablations", "A8")
    spec["rows"].append({"method": "typo", "arch": "singularity_temporl", "frames": 4})
    with pytest.raises(SpecError, match="unknown arch 'singularity_temporl'"):
        table_rows(synthetic_profile(), spec)


def test_block_size_scales_with_frame_tokens(workdir: Path) -> None:
    # 32 px frames in 8 px patches: 16 tokens per frame, so G = 56 * 16 / 196 -> 5.
    cfg = load_config(synthetic_profile().resolve(Run("pretrain", Variant("svitt", "hybrid"), 4)))
    assert cfg.model.sparsity.block_size == 5


def test_resolve_names_a_bad_run_key(workdir: Path) -> None:
    config = load_profile_config("default")
    config["retrieval"]["settings"]["optim"]["bogus_rate"] = 1.0
    with pytest.raises(SpecError, match=r"optim\.bogus_rate"):
        Profile(config).resolve(Run("finetune-retrieval", Variant("svitt", "dense"), 8, "charades"))


def test_new_sparsity_row_adds_runs_and_an_a1_row(workdir: Path) -> None:
    with (workdir / "ablations" / "sparsity.tsv").open("a") as handle:
        handle.write("edge\tEdge\tsparse\t1\t3\t56\t1.0\t1.0\t1.0\t1.0\t1.0\n")
    profile = synthetic_profile()
    a1 = build_table(profile, "A1", paper_profile()).frame
    assert list(a1[a1.config == "Edge"].frames) == profile.chain
    assert (a1[a1.config == "Edge"].sparsity.astype(float) > 0).all()  # blocks alone prune edges
    runs = table_runs(profile, "A3")
    variants = {str(run.variant) for run in runs}
    assert {"svitt-dense", "svitt-hybrid", "svitt-edge", "singularity"} <= variants
    assert len(runs) == 2 * (3 + 3)  # MSR-VTT and DiDeMo x (3 Singularity + 3 sparsity rows)


def test_sparsity_table_errors_name_row_and_column(tmp_path: Path) -> None:
    table = tmp_path / "sparsity.tsv"
    header = "name\tlabel\tattention\tK_l\tK_r\tG\tq_v_T4\tq_m\tq_m_qa\n"
    table.write_text(header + "dense\tDense\tdense\t1\t3\t56\t1.5\t1.0\t1.0\n")
    with pytest.raises(SpecError, match=r"row 1 \('dense'\), column 'q_v_T4'"):
        load_sparsity_table(table)
    table.write_text(header + "a-b\tX\tdense\t1\t3\t56\t1.0\t1.0\t1.0\n")
    with pytest.raises(SpecError, match="column 'name'"):
        load_sparsity_table(table)
    table.write_text(header + "x\tX\tdiagonal\t1\t3\t56\t1.0\t1.0\t1.0\n")
    with pytest.raises(SpecError, match="column 'attention'"):
        load_sparsity_table(table)


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ("2\t3\t56", r"row 1 \('x'\), column 'K_l': an integer odd >= 1 is required, got 2"),
        ("1\t-1\t56", r"row 1 \('x'\), column 'K_r': an integer >= 0 is required, got -1"),
        ("1\t3\t0", r"row 1 \('x'\), column 'G': an integer >= 1 is required, got 0"),
        ("1\t3\t56\t1.0", r"row 1 has more cells than the 9 columns"),
    ],
)
def test_sparsity_table_checks_block_counts(tmp_path: Path, cells: str, message: str) -> None:
    table = tmp_path / "sparsity.tsv"
    header = "name\tlabel\tattention\tK_l\tK_r\tG\tq_v_T4\tq_m\tq_m_qa\n"
    table.write_text(header + f"x\tX\tsparse\t{cells}\t1.0\t1.0\t1.0\n")
    with pytest.raises(SpecError, match=message):
        load_sparsity_table(table)


def test_sparsity_table_rejects_an_unknown_column(tmp_path: Path) -> None:
    table = tmp_path / "sparsity.tsv"
    table.write_text(
        "name\tlabel\tattention\tK_l\tK_r\tG\tq_v_T4\tq_m\tq_m_qa\tnote\n"
        "x\tX\tsparse\t1\t3\t56\t1.0\t1.0\t1.0\thello\n"
    )
    with pytest.raises(SpecError, match=r"unknown column 'note'; allowed: \['name'"):
        load_sparsity_table(table)


# --- tables -----------------------------------------------------------------------------


def test_format_helpers() -> None:
    assert [format_lr(v) for v in (3e-5, 1e-5, 5e-6, 2.5e-4)] == ["3e-5", "1e-5", "5e-6", "2.5e-4"]
    labels = {name: type("L", (), {"label": name.upper()})() for name in ("a", "b", "c", "d")}
    assert _with_exceptions({"a": "32", "b": "64", "c": "32", "d": "32"}, labels) == "32 (64 for B)"
    assert _with_exceptions({"a": "5", "b": "5"}, labels) == "5"


def test_paper_a1_and_a4_equal_the_supplement(workdir: Path) -> None:
    profile = Profile(load_profile_config("paper"))
    a1 = build_table(profile, "A1", paper_profile()).frame
    ours = a1[(a1.source == "paper") & (a1.config == "Hybrid")].drop(columns=["source", "edges"])
    reported = a1[a1.source == REPORTED].drop(columns=["source", "edges"])
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), reported.reset_index(drop=True))
    dense = a1[(a1.source == "paper") & (a1.config == "Dense")]
    assert set(dense.sparsity) == {"0.00"}

    a4 = build_table(profile, "A4", paper_profile()).frame
    ours = a4[a4.source == "paper"].drop(columns="source").reset_index(drop=True)
    reported = a4[a4.source == REPORTED].drop(columns="source").reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, reported)


def test_synthetic_a4_shows_its_own_settings(workdir: Path) -> None:
    a4 = build_table(synthetic_profile(), "A4", paper_profile()).frame
    ours = a4[a4.source == "synthetic"].set_index("hyperparameter")
    assert ours.loc["Attn. blocks (K_l, K_r, G)", "Pre-training T=4"] == "(1, 3, 5)"
    assert ours.loc["Text length", "Retrieval T=8"] == "24 (48 for DiDeMo)"


def write_metrics(profile: Profile, run: Run, **metrics: float) -> None:
    path = Path(profile.metrics(run))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def write_retrieval_run(profile: Profile, run: Run, hits: tuple[int, int, int]) -> None:
    """Ten queries: `hits` of them first-positive at rank 0, 4 and 9 (R@1, R@5, R@10 steps),
    the rest at rank 20; metrics.json from the same outcomes, as the engine writes them."""
    ranks = [0] * hits[0] + [4] * hits[1] + [9] * hits[2]
    ranks += [20] * (10 - len(ranks))
    r1, r5, r10 = (10.0 * sum(r < k for r in ranks) for k in (1, 5, 10))
    write_metrics(profile, run, r1=r1, r5=r5, r10=r10, mean_recall=(r1 + r5 + r10) / 3)
    outcomes = {"task": "retrieval", "query": list(range(10)), "rank": ranks}
    Path(outcomes_path(profile, run)).write_text(json.dumps(outcomes))


def write_qa_run(profile: Profile, run: Run, correct: list[int]) -> None:
    write_metrics(profile, run, accuracy=100.0 * sum(correct) / len(correct))
    outcomes = {"task": "qa", "question_id": list(range(len(correct))), "correct": correct}
    Path(outcomes_path(profile, run)).write_text(json.dumps(outcomes))


def write_annotations(name: str, split: str, records: list[dict]) -> None:
    path = Path("results/synthetic/data") / name / "annotations" / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))


def write_retrieval_split(name: str) -> None:
    """Ten test queries, one video each: chance R@1 10 %, R@5 50 %, R@10 100 %."""
    write_annotations(name, "test", [{"video": f"v{i}.mp4", "caption": f"c{i}"} for i in range(10)])


def write_qa_split(name: str) -> None:
    """Training: color -> red (2 of 3), count -> three (3 of 4), direction (temporal) -> left
    (2 of 3); "three" is the majority. Test: four static questions, then one temporal."""
    train = [("color", "red"), ("color", "red"), ("color", "blue"), ("count", "two")]
    train += [("count", "three")] * 3 + [("direction", "left")] * 2 + [("direction", "right")]
    test = [("color", "red"), ("color", "blue"), ("count", "three"), ("count", "two")]
    test += [("direction", "left")]
    for split, pairs in (("train", train), ("test", test)):
        records = [
            {"video": "v.mp4", "question": "q?", "answer": a, "question_id": i, "question_type": t}
            for i, (t, a) in enumerate(pairs)
        ]
        write_annotations(name, split, records)
    answers = Path("results/synthetic/data") / name / "annotations" / "answer_list.json"
    answers.write_text(json.dumps(["red", "blue", "two", "three", "left", "right"]))


def paper_profile() -> Profile:
    return Profile(load_profile_config("paper"))


def test_retrieval_table_reads_each_run(workdir: Path) -> None:
    profile = synthetic_profile()
    runs = table_runs(profile, "A3")
    for index, run in enumerate(runs):
        write_retrieval_run(profile, run, (index % 3, 2, 1))
    for name in ("msrvtt", "didemo"):
        write_retrieval_split(name)
    table = build_table(profile, "A3", paper_profile())
    frame = table.frame
    ours = frame[frame.source == "synthetic"]
    assert list(ours.method) == ["Singularity*"] * 3 + ["SViTT"] * 2 + ["chance (baseline)"]
    assert list(ours.sparsity) == ["—", "—", "—", "Dense", "Hybrid", ""]
    hybrid = Run("zero-shot", Variant("svitt", "hybrid"), 8, "didemo", "normal")
    first = runs.index(hybrid) % 3
    assert ours.iloc[4]["DiDeMo R1"] == 10.0 * first
    assert ours.iloc[4]["DiDeMo R10"] == 10.0 * (first + 3)
    low, high = ours.iloc[4]["DiDeMo R10 low"], ours.iloc[4]["DiDeMo R10 high"]
    assert low < 10.0 * (first + 3) < high
    chance = ours.iloc[5]
    assert [chance[f"MSR-VTT {k}"] for k in ("R1", "R5", "R10", "Mean")] == [
        10.0,
        50.0,
        100.0,
        53.3,
    ]
    # The embedded default's non-paper settings, read from the resolved configs
    assert "twin loss 10" in ours.iloc[4]["non-paper settings"]
    assert "no MLM" in ours.iloc[4]["non-paper settings"]
    assert "learned pos. emb. (std 0.5)" in ours.iloc[4]["non-paper settings"]
    reported = frame[frame.source == REPORTED]
    assert reported.iloc[-1]["MSR-VTT Mean"] == 43.8
    paths = write_table(table, workdir / "tables")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    markdown = paths[1].read_text()
    assert "| synthetic" in markdown and "\\toprule" in paths[2].read_text()
    assert f"{10.0 * (first + 3)} [{low}, {high}]" in markdown
    assert "R10 low" not in markdown
    assert len(pd.read_csv(paths[0])) == len(frame)


def test_probe_table_delta_and_missing_metric(workdir: Path) -> None:
    profile = synthetic_profile()
    for run in table_runs(profile, "A8"):
        shuffled = run.probe == "shuffle"
        if run.task == "finetune-retrieval":
            write_retrieval_run(profile, run, (1, 4, 1) if shuffled else (3, 2, 1))
        else:
            write_qa_run(profile, run, [1, 1, 0, 0, 0] if shuffled else [1, 1, 1, 0, 1])
    write_retrieval_split("ssv2_label")
    write_qa_split("anet_qa")
    frame = build_table(profile, "A8", paper_profile()).frame
    ours = frame[frame.source == "synthetic"]
    models = ours[~ours.method.str.endswith("(baseline)")]
    assert list(models.method) == ["Singularity"] + ["SViTT"] * 2 + ["SViTT (plain recipe)"] * 2
    assert list(models.sparsity) == ["—", "Dense", "Hybrid", "Dense", "Hybrid"]
    # The plain recipe's rows lose the settings it drops, computed from their configs.
    settings = list(models["non-paper settings"])
    assert "twin loss 10" in settings[1] and "learned pos. emb." in settings[1]
    assert settings[3] == settings[4] == "no MLM, from scratch"
    # N - S: R@1 20 points, R@5 and R@10 none -> mean recall 6.7; QA: two questions of five,
    # the temporal one and one of the four static ones
    assert list(models["SSv2-Label Δ"]) == [6.7] * 5
    assert list(models["ActivityNet-QA Δ"]) == [40.0] * 5
    assert list(models["ActivityNet-QA temporal Δ"]) == [100.0] * 5
    assert list(models["ActivityNet-QA static N"]) == [75.0] * 5
    assert list(models["ActivityNet-QA static Δ"]) == [25.0] * 5
    # One static question of four differs: a resample of the four holds it 0 (p = 0.32) to 4
    # times (p = 0.004), so the 95 % interval is [0, 75].
    assert list(models["ActivityNet-QA static Δ low"]) == [0.0] * 5
    assert list(models["ActivityNet-QA static Δ high"]) == [75.0] * 5
    baselines = ours[ours.method.str.endswith("(baseline)")].set_index("method")
    assert baselines.loc["chance (baseline)", "ActivityNet-QA N"] == 16.7  # 1 of 6 answers
    assert baselines.loc["chance (baseline)", "SSv2-Label N"] == 53.3  # (10 + 50 + 100) / 3
    # majority "three": test question 3 of 5; prior red, three, left: questions 1, 3 and 5
    assert baselines.loc["majority answer (baseline)", "ActivityNet-QA N"] == 20.0
    assert baselines.loc["question-only prior (baseline)", "ActivityNet-QA N"] == 60.0
    assert baselines.loc["question-only prior (baseline)", "ActivityNet-QA temporal N"] == 100.0
    assert baselines.loc["question-only prior (baseline)", "ActivityNet-QA static N"] == 50.0
    broken = Run("finetune-qa", Variant("singularity"), 4, "anet_qa")
    write_metrics(profile, broken, acc=1.0)
    with pytest.raises(SpecError, match=r"metrics.json: no metric 'accuracy'; found: acc"):
        build_table(profile, "A8", paper_profile())


def test_two_seeds_give_mean_std_and_a_pooled_interval(workdir: Path) -> None:
    profile = Profile({**load_profile_config("default"), "seeds": [0, 1]})
    # Seed 0 answers the four static questions 3/4 normal, 2/4 shuffled; seed 1 4/4 and 4/4.
    answers = {
        (0, None): [1, 1, 1, 0, 1],
        (0, "shuffle"): [1, 1, 0, 0, 0],
        (1, None): [1, 1, 1, 1, 1],
        (1, "shuffle"): [1, 1, 1, 1, 0],
    }
    for run in table_runs(profile, "A8"):
        if run.task == "finetune-retrieval":
            write_retrieval_run(profile, run, (1, 1, 1))
        else:
            write_qa_run(profile, run, answers[(run.seed, run.probe)])
    write_retrieval_split("ssv2_label")
    write_qa_split("anet_qa")
    table = build_table(profile, "A8", paper_profile())
    hybrid = table.frame[table.frame.sparsity == "Hybrid"].iloc[0]
    assert hybrid["ActivityNet-QA static N"] == 87.5  # (75 + 100) / 2
    assert hybrid["ActivityNet-QA static N std"] == 17.7  # stdev(75, 100)
    assert hybrid["ActivityNet-QA static Δ"] == 12.5  # (25 + 0) / 2
    assert hybrid["ActivityNet-QA static Δ std"] == 17.7
    # Identical seeds: no deviation; the pooled interval is the one of the pooled outcomes.
    assert hybrid["SSv2-Label N std"] == 0.0
    pooled = mean_interval([1, 1, 1, 0, 1, 1, 1, 1, 1, 1])
    assert (hybrid["ActivityNet-QA N low"], hybrid["ActivityNet-QA N high"]) == (
        round(pooled.low, 1),
        round(pooled.high, 1),
    )
    paths = write_table(table, workdir / "tables")
    markdown = paths[1].read_text()
    assert (
        "87.5 ± 17.7 [" in markdown
        and "standard deviation over the training seeds 0, 1" in markdown
    )
    assert "N std" in paths[0].read_text() and "N std" not in markdown


def test_outcomes_that_disagree_with_metrics_are_refused(workdir: Path) -> None:
    profile = synthetic_profile()
    for run in table_runs(profile, "A3"):
        write_retrieval_run(profile, run, (1, 1, 1))
    for name in ("msrvtt", "didemo"):
        write_retrieval_split(name)
    run = table_runs(profile, "A3")[0]
    write_metrics(profile, run, r1=50.0, r5=20.0, r10=30.0, mean_recall=33.3)
    with pytest.raises(SpecError, match=r"outcomes.json: r1 of the per-query outcomes is 10"):
        build_table(profile, "A3", paper_profile())


def test_the_paper_profile_has_no_non_paper_settings(workdir: Path) -> None:
    paper = paper_profile()
    rows = table_rows(paper, load_spec(paper.ablations, "A8"))
    runs = [[run for seeds in row.runs.values() for run in seeds] for row in rows]
    assert {non_paper_settings(paper, paper, row) for row in runs} == {""}


def test_figure_a1_sweep_covers_each_rate(workdir: Path) -> None:
    profile = synthetic_profile()
    spec = load_spec(profile.ablations, "figure_A1")
    points = figure_a1_runs(profile, spec)
    assert all(len(point) == 1 for point in points)  # one training seed
    runs = [run for (run,) in points]
    assert len(runs) == len(spec["frames"]) * len(spec["datasets"]) * len(spec["keep_rates"])
    assert {run.variant for run in runs} == {Variant("svitt", "dense")}
    assert all(run.task == "zero-shot" and run.probe.startswith("keep") for run in runs)
