"""Every stage end to end on the synthetic "ci" benchmark with a tiny model: outputs, metrics,
exact resume, finished-run detection, MLflow records and bad-input errors."""

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from svitt.cli import main


@pytest.fixture(scope="module")
def bench(make_bench):
    """The ci benchmark, a config for it, and one MLflow store for the whole module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    yield make_bench("engine")
    torch.set_num_threads(threads)


def stage(bench, command, out, *extra):
    return main([command, "--config", bench["config"], "--out", str(out), *extra])


def metrics_of(out):
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def pretrained(bench):
    out = bench["base"] / "pretrain"
    assert stage(bench, "pretrain", out) == 0
    return out


def test_pretrain_writes_outputs_and_losses_fall(pretrained):
    metrics = metrics_of(pretrained)
    assert metrics["stage"] == "pretrain" and metrics["dataset"] == "webvid"
    assert metrics["num_frames"] == 4 and metrics["arch"] == "svitt"
    assert metrics["sparsity"]["attention"] == "sparse"
    assert 0 < metrics["edge_sparsity"] < 1
    first, last = metrics["train_loss_first_epoch"], metrics["train_loss_last_epoch"]
    assert set(first) == {"loss", "vtc", "vtm", "mlm"}
    assert last["loss"] < first["loss"]
    assert metrics["train_steps"] == 16  # 64 pairs / 8 per batch * 2 epochs
    assert metrics["skipped_videos"] == []
    assert (pretrained / "checkpoint.pt").is_file() and not (pretrained / "last.pt").exists()
    log = (pretrained / "log.txt").read_text()
    assert "epoch 2/2" in log
    # no terminal here: progress lines with step/total, rate and ETA (at least the last step)
    assert re.search(r"step 16/16  [0-9.]+ steps/s  ETA 00:00:00  loss [0-9.]+", log)
    state = torch.load(pretrained / "checkpoint.pt", weights_only=True)
    assert state["step"] == 16 and state["config"]["model"]["vision"]["num_frames"] == 4
    assert state["config"]["model"]["text"]["vocab_size"] > 5  # taken from the tokenizer


def test_rerun_of_a_finished_run_does_nothing_and_another_config_fails(bench, pretrained, capsys):
    before = (pretrained / "checkpoint.pt").stat().st_mtime_ns
    assert stage(bench, "pretrain", pretrained) == 0
    assert "already holds this finished run; nothing to do" in capsys.readouterr().out
    assert (pretrained / "checkpoint.pt").stat().st_mtime_ns == before
    assert stage(bench, "pretrain", pretrained, "--set", "optim.lr=0.5") == 2
    assert "different stage, config or starting checkpoint" in capsys.readouterr().err
    assert (pretrained / "checkpoint.pt").stat().st_mtime_ns == before


def test_progressive_pretraining_inflates_a_shorter_clip_checkpoint(bench, pretrained):
    out = bench["base"] / "pretrain-T8"
    ckpt = str(pretrained / "checkpoint.pt")
    longer = ["--set", "model.vision.num_frames=8", "--set", "data.train=[msrvtt]"]
    assert (
        stage(bench, "pretrain", out, "--init-from", ckpt, *longer, "--set", "optim.epochs=1") == 0
    )
    assert metrics_of(out)["num_frames"] == 8
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["config"]["model"]["vision"]["num_frames"] == 8


def test_frame_level_baseline_loads_into_another_clip_length(bench):
    """Singularity's encoder sees one frame at a time: no temporal table to inflate."""
    four, eight = bench["base"] / "sing-T4", bench["base"] / "sing-T8"
    arch = ["--set", "model.arch=singularity", "--set", "model.sparsity.attention=dense"]
    arch += ["--set", "optim.epochs=1"]
    assert stage(bench, "pretrain", four, *arch) == 0
    ckpt = str(four / "checkpoint.pt")
    longer = ["--set", "model.vision.num_frames=8"]
    assert stage(bench, "pretrain", eight, "--init-from", ckpt, *arch, *longer) == 0
    assert metrics_of(eight)["num_frames"] == 8 and metrics_of(eight)["arch"] == "singularity"


def test_singularity_temporal_pretrains_to_the_schedule_floor(bench):
    out = bench["base"] / "sing-temporal"
    arch = ["--set", "model.arch=singularity_temporal", "--set", "model.sparsity.attention=dense"]
    floor = ["--set", "optim.epochs=1", "--set", "optim.min_lr_ratio=0.1"]
    assert stage(bench, "pretrain", out, *arch, *floor) == 0
    metrics = metrics_of(out)
    assert metrics["arch"] == "singularity_temporal" and "edges" not in metrics
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    lr = state["config"]["optim"]["lr"]
    assert state["scheduler"]["_last_lr"][0] == pytest.approx(0.1 * lr)


def test_zero_shot_retrieval_with_eval_overrides(bench, pretrained):
    out = bench["base"] / "zero-shot"
    ckpt = str(pretrained / "checkpoint.pt")
    args = ["--init-from", ckpt, "--set", "data.dataset=msrvtt", "--set", "eval.num_frames=8"]
    assert stage(bench, "eval-retrieval", out, *args, "--set", "eval.frame_order=reverse") == 0
    metrics = metrics_of(out)
    assert metrics["num_queries"] == 16 and metrics["num_videos"] == 16
    for key in ("r1", "r5", "r10", "mean_recall"):
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["r1"] <= metrics["r5"] <= metrics["r10"]
    assert metrics["overrides"] == {"frame_order": "reverse", "num_frames": 8}
    assert metrics["num_frames"] == 8  # the checkpoint's 4-frame weights were inflated
    assert not (out / "checkpoint.pt").exists()  # evaluation writes metrics only


def test_three_clip_evaluation_with_the_release_rules(bench, pretrained):
    """eval.num_clips 3 (the release's num_frames_test = 3T), logsumexp over clips, ranking
    by the match logit: the VTC-only recall does not depend on the re-rank rule."""
    ckpt = ["--init-from", str(pretrained / "checkpoint.pt")]
    clips = ["--set", "eval.num_clips=3", "--set", "eval.clip_ensemble=lse"]
    runs = {}
    for rule in ("itm_logit", "sigmoid_plus_cosine"):
        out = bench["base"] / f"clips3-{rule}"
        rerank = ["--set", f"eval.rerank={rule}", "--set", "data.dataset=msrvtt"]
        assert stage(bench, "eval-retrieval", out, *ckpt, *clips, *rerank) == 0
        runs[rule] = metrics_of(out)
        assert 0.0 <= runs[rule]["r1"] <= runs[rule]["r5"] <= runs[rule]["r10"] <= 100.0
    vtc = [{k: v for k, v in m.items() if k.startswith("vtc_")} for m in runs.values()]
    assert vtc[0] == vtc[1] and vtc[0]
    qa = bench["base"] / "clips3-qa"
    assert stage(bench, "eval-qa", qa, *ckpt, *clips, "--set", "data.dataset=msrvtt_qa") == 0
    # the "ci" size: 16 test videos, 4 questions each
    assert 0.0 <= metrics_of(qa)["accuracy"] <= 100.0 and metrics_of(qa)["num_queries"] == 64


def test_one_evaluation_process_writes_one_run_per_config(bench, pretrained, capsys):
    """Several --config/--out pairs: each run is what it would be alone, with its own log and
    MLflow run."""
    base, ckpt = bench["base"] / "multi", str(pretrained / "checkpoint.pt")
    config = yaml.safe_load(Path(bench["config"]).read_text())
    pairs = []
    for dataset in ("msrvtt", "didemo"):
        path = base / f"{dataset}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({**config, "data": {**config["data"], "dataset": dataset}}))
        pairs += ["--config", str(path), "--out", str(base / dataset)]
    assert main(["eval-retrieval", *pairs, "--init-from", ckpt]) == 0
    alone = base / "didemo-alone"
    assert main(["eval-retrieval", *pairs[4:7], str(alone), "--init-from", ckpt]) == 0
    together = metrics_of(base / "didemo")
    assert metrics_of(base / "msrvtt")["dataset"] == "msrvtt" and together["dataset"] == "didemo"
    assert together["mean_recall"] == metrics_of(alone)["mean_recall"]
    first_log = (base / "msrvtt" / "log.txt").read_text()
    assert "msrvtt" in first_log and "didemo" not in first_log
    db = sqlite3.connect(bench["db"])
    for dataset in ("msrvtt", "didemo"):
        query = "select count(*) from tags where key = 'out' and value = ?"
        assert db.execute(query, (str(base / dataset),)).fetchone()[0] == 1
    assert main(["eval-retrieval", *pairs[:4], "--config", pairs[1], "--init-from", ckpt]) == 2
    assert "2 --config but 1 --out" in capsys.readouterr().err


def test_a_declared_dataset_runs_without_a_registered_name(bench, pretrained):
    """A test-only copy of MSR-VTT under a new name, declared by its dataset.json: validated
    and evaluated like the registered one."""
    root = bench["base"] / "new-data"
    shutil.copytree(bench["root"] / "msrvtt", root / "vatex")
    (root / "vatex" / "annotations" / "train.json").unlink()
    (root / "vatex" / "dataset.json").write_text('{"task": "retrieval", "splits": ["test"]}')
    report = bench["base"] / "vatex.json"
    validate = ["validate-data", "--root", str(root), "--dataset", "vatex", "--out", str(report)]
    assert main([*validate, "--workers", "1", "--strict"]) == 0
    assert json.loads(report.read_text())["num_bad"] == 0
    out = bench["base"] / "vatex-zero-shot"
    data = ["--set", f"data.root={root}", "--set", "data.dataset=vatex"]
    assert (
        stage(bench, "eval-retrieval", out, *data, "--init-from", str(pretrained / "checkpoint.pt"))
        == 0
    )
    metrics = metrics_of(out)
    assert metrics["dataset"] == "vatex" and metrics["num_queries"] == 16


def test_multi_positive_retrieval_counts_label_queries(bench, pretrained):
    out = bench["base"] / "ssv2"
    ckpt = str(pretrained / "checkpoint.pt")
    assert (
        stage(
            bench,
            "eval-retrieval",
            out,
            "--init-from",
            ckpt,
            "--set",
            "data.dataset=ssv2_label",
            "--set",
            "eval.visual_keep_rate=0.5",
        )
        == 0
    )
    metrics = metrics_of(out)
    assert (metrics["num_queries"], metrics["num_videos"]) == (8, 16)  # 8 labels x 2 videos
    assert metrics["overrides"]["visual_keep_rate"] == 0.5
    assert metrics["sparsity"]["visual_keep_rate"] == 0.5
    assert 0.0 <= metrics["r1"] <= metrics["r5"] <= metrics["r10"] <= 100.0
    # outcomes.json: each query's first-positive rank, from which R@k follows
    outcomes = json.loads((out / "outcomes.json").read_text())
    assert outcomes["query"] == list(range(8))
    for k in (1, 5, 10):
        hits = sum(rank < k for rank in outcomes["rank"])
        assert 100.0 * hits / 8 == pytest.approx(metrics[f"r{k}"])


def test_finetune_qa_then_eval_qa_reproduces_its_accuracy(bench, pretrained):
    ckpt = str(pretrained / "checkpoint.pt")
    finetuned = bench["base"] / "qa"
    common = ["--set", "data.dataset=msrvtt_qa", "--set", "optim.epochs=1"]
    assert stage(bench, "finetune-qa", finetuned, "--init-from", ckpt, *common) == 0
    trained = metrics_of(finetuned)
    assert 0.0 <= trained["accuracy"] <= 100.0 and trained["num_queries"] == 64
    assert set(trained["train_loss_last_epoch"]) == {"loss", "qa"}
    evaluated = bench["base"] / "qa-eval"
    again = ["--init-from", str(finetuned / "checkpoint.pt"), *common]
    assert stage(bench, "eval-qa", evaluated, *again) == 0
    assert metrics_of(evaluated)["accuracy"] == trained["accuracy"]
    # outcomes.json: one entry per question, each test question once, averaging to accuracy
    outcomes = json.loads((evaluated / "outcomes.json").read_text())
    assert outcomes["task"] == "qa" and len(set(outcomes["question_id"])) == 64
    assert 100.0 * sum(outcomes["correct"]) / 64 == pytest.approx(trained["accuracy"])


def test_frozen_trains_with_vtc_only_and_ranks_by_cosine(bench):
    out = bench["base"] / "frozen"
    frozen = [
        "--set",
        "model.arch=frozen",
        "--set",
        "model.vision.abs_pos_emb=true",
        "--set",
        "model.vision.rel_pos_bias=false",
        "--set",
        "model.loss_weights={vtc: 1.0}",
        "--set",
        "data.dataset=didemo",
        "--set",
        "optim.epochs=1",
    ]
    assert stage(bench, "finetune-retrieval", out, *frozen) == 0
    metrics = metrics_of(out)
    assert set(metrics["train_loss_last_epoch"]) == {"loss", "vtc"}
    assert metrics["k_test"] == 0  # no matching head: cosine ranking only
    assert metrics["num_queries"] == 16 and 0.0 <= metrics["mean_recall"] <= 100.0


def test_killed_run_resumes_to_the_same_result(bench):
    # 24 pairs, micro-batches of 4, 2 accumulated per step: 3 steps per epoch, 6 in all.
    common = [
        "--set",
        "data.train=[msrvtt]",
        "--set",
        "optim.batch_size=4",
        "--set",
        "optim.grad_accum=2",
        "--set",
        "optim.checkpoint_every=100",
    ]
    straight, resumed = bench["base"] / "straight", bench["base"] / "resumed"
    assert stage(bench, "pretrain", straight, *common) == 0
    # Stop mid-epoch 2 (after step 4), as a kill after a checkpoint would, then rerun.
    assert stage(bench, "pretrain", resumed, *common, "--max-steps-this-run", "4") == 0
    assert (resumed / "last.pt").is_file() and not (resumed / "metrics.json").exists()
    assert torch.load(resumed / "last.pt", weights_only=True)["step"] == 4
    assert stage(bench, "pretrain", resumed, *common) == 0

    a, b = metrics_of(straight), metrics_of(resumed)
    assert a["train_loss_per_epoch"] == b["train_loss_per_epoch"]
    weights_a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    weights_b = torch.load(resumed / "checkpoint.pt", weights_only=True)["model"]
    for name, value in weights_a.items():
        assert torch.equal(value, weights_b[name]), name


def test_every_stage_is_recorded_in_mlflow(bench, pretrained):
    db = sqlite3.connect(bench["db"])
    stages = {row[0] for row in db.execute("select value from tags where key = 'stage'")}
    assert "pretrain" in stages
    run_id = db.execute(
        "select run_uuid from tags where key = 'out' and value = ?", (str(pretrained),)
    ).fetchone()[0]
    status = db.execute("select status from runs where run_uuid = ?", (run_id,)).fetchone()[0]
    assert status == "FINISHED"
    keys = {row[0] for row in db.execute("select key from metrics where run_uuid = ?", (run_id,))}
    assert {"train/loss", "train/vtc", "lr", "train_steps"} <= keys
    steps = db.execute(
        "select count(*) from metrics where run_uuid = ? and key = 'train/loss'", (run_id,)
    ).fetchone()[0]
    assert steps == 16
    params = dict(db.execute("select key, value from params where run_uuid = ?", (run_id,)))
    assert params["optim.lr"] == "0.002" and params["model.sparsity.attention"] == "sparse"
    tags = dict(db.execute("select key, value from tags where run_uuid = ?", (run_id,)))
    assert tags["num_frames"] == "4" and "K_r=1" in tags["sparsity"] and tags["git_commit"]


def test_bad_videos_are_skipped_in_training_and_fail_evaluation_unless_allowed(bench, capsys):
    root = bench["base"] / "bad-data"
    shutil.copytree(bench["root"] / "msrvtt", root / "msrvtt")
    (root / "msrvtt" / "videos" / "train00000.mp4").write_bytes(b"not a video")
    (root / "msrvtt" / "videos" / "test00003.mp4").write_bytes(b"not a video")
    data = ["--set", f"data.root={root}", "--set", "data.dataset=msrvtt"]

    failed = bench["base"] / "bad-eval"
    assert stage(bench, "finetune-retrieval", failed, *data, "--set", "optim.epochs=1") == 2
    assert "test00003.mp4" in capsys.readouterr().err  # never replaced by another video
    assert not (failed / "metrics.json").exists()

    out = bench["base"] / "bad-allowed"
    allow = [*data, "--set", "optim.epochs=1", "--set", "data.allow_bad_videos_at_eval=true"]
    assert stage(bench, "finetune-retrieval", out, *allow) == 0
    metrics = metrics_of(out)
    assert [p.rsplit("/", 1)[1] for p in metrics["skipped_videos"]] == [
        "test00003.mp4",
        "train00000.mp4",
    ]
    assert metrics["num_videos"] == 15 and metrics["num_queries"] == 15


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        ("eval-retrieval", ["--set", "data.dataset=msrvtt_qa"], "data.dataset: got 'msrvtt_qa'"),
        (
            "finetune-qa",
            ["--set", "data.dataset=nope"],
            "allowed: ['msrvtt_qa', 'anet_qa', 'agqa']",
        ),
        ("pretrain", ["--set", "data.train=[webvid, imagenet]"], "data.train: got 'imagenet'"),
        ("pretrain", ["--set", "optim.lr=-1"], "lr: got -1"),
        ("pretrain", ["--set", "model.sparsty.block_size=2"], "unknown config key 'model.sparsty'"),
        ("pretrain", ["--init-from", "missing.pt"], "--init-from: checkpoint not found"),
        (
            "eval-qa",
            ["--set", "data.dataset=agqa", "--set", "data.root=/nonexistent"],
            "annotation file not found: /nonexistent/agqa",
        ),
    ],
)
def test_bad_input_fails_before_any_work(bench, capsys, command, extra, message):
    out = bench["base"] / "bad"
    if command.startswith("eval") and "--init-from" not in extra:
        extra = [*extra, "--init-from", bench["config"]]
    assert stage(bench, command, out, *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
