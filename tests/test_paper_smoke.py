"""The paper profile at its real shapes, end to end (`make test-paper-smoke`, run by .ci/run).

`.test/paper-smoke.yaml` over `workflow/config/paper.yaml`: BEiT-B/16 at 224 px (12 layers,
G = 56), BERT-base with a WordPiece vocabulary in bert-base-uncased's layout, the release's
recipe keys, random-init weights written here as a HF BEiT and a HF BERT directory, and
a few dozen short H.264 videos in the real annotation layout (docs/data.md). Every stage of
the paper's DAG behind Tables A1, A3 and A8 runs once: the hybrid pre-training chain
T = 4 -> 8 -> 16, zero-shot MSR-VTT, fine-tuned SSv2-Label and ActivityNet-QA with their
shuffled-frame probes. Numbers are noise (random weights, one or two steps per stage); what
is checked is that every stage finishes at these shapes and writes what the tables read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.paper_smoke]

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "paper-smoke"
CONFIGFILES = ["workflow/config/paper.yaml", ".test/paper-smoke.yaml"]
INPUTS = f"results/{PROFILE}/inputs"  # what the test writes: data, tokenizer, weights
RUNS = f"results/{PROFILE}/runs"
TABLES = ("A1", "A3", "A8")
# Two cores: the chain's start runs alone, so pre-training takes both; the later jobs run two
# at a time on one thread each.
DAG = ["--cores", "2", "--set-threads", "pretrain=2", "--configfile", *CONFIGFILES]
DAG_TIMEOUT = int(os.environ.get("SVITT_PAPER_SMOKE_TIMEOUT", "1200"))  # seconds
# Videos per dataset and split; the SSv2-Label test split holds 4 labels of 2 videos each.
SPLITS = {
    "webvid": {"train": 4},
    "msrvtt": {"train": 2, "test": 8},
    "ssv2_label": {"train": 4, "test": 8},
    "anet_qa": {"train": 4, "test": 8},
}
FRAMES = 24  # 3 s at 8 fps; the 3-clip evaluation at T = 16 repeats frames
BERT_SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
BERT_VOCAB_SIZE = 30522


def copy_workflow(dest: Path) -> Path:
    """What the DAG reads (the `svitt` command comes from the environment, as with `make`)."""
    for name in ("Snakefile", "workflow", "ablations", ".test"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, dest / name)
    return dest


def write_videos(root: Path, seed: int = 0) -> list[str]:
    """Synthetic-benchmark clips (docs/data.md) in the real layout; returns every text."""
    from svitt.data.synthetic import (
        CaptionStyle,
        candidate_questions,
        caption,
        label,
        render,
        sample_script,
        write_video,
    )

    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for dataset, splits in SPLITS.items():
        (root / dataset / "videos").mkdir(parents=True)
        (root / dataset / "annotations").mkdir()
        answers: set[str] = set()
        for split, count in splits.items():
            entries = []
            for index in range(count):
                script = sample_script(rng, "move1" if index % 2 else "seq_two")
                name = f"{split}{index:03d}.mp4"
                write_video(root / dataset / "videos" / name, render(script, FRAMES))
                if dataset == "anet_qa":
                    question = candidate_questions(script)[index % 3]
                    answer = question.answer(script)
                    answers.add(answer)
                    texts += [question.text, answer]
                    entry = {"question": question.text, "answer": answer, "question_id": index}
                    entries.append({"video": name, **entry})
                    continue
                text = label(script) if dataset == "ssv2_label" else caption(script, CaptionStyle())
                texts.append(text)
                entries.append({"video": name, "caption": text})
            if dataset == "ssv2_label" and split == "test":
                # SSv2-Label's test layout: one label, several positive videos.
                entries = [
                    {"caption": first["caption"], "video": [first["video"], second["video"]]}
                    for first, second in zip(entries[::2], entries[1::2], strict=True)
                ]
            path = root / dataset / "annotations" / f"{split}.json"
            path.write_text(json.dumps(entries, indent=1))
        if answers:
            answer_list = root / dataset / "annotations" / "answer_list.json"
            answer_list.write_text(json.dumps(sorted(answers)))
    return texts


def write_tokenizer(out: Path, texts: list[str]) -> None:
    """A WordPiece tokenizer in bert-base-uncased's layout: 30522 ids, [PAD] = 0, [UNK] = 100,
    [CLS] = 101, [SEP] = 102, [MASK] = 103, the corpus's words and characters from 104 on."""
    from tokenizers import BertWordPieceTokenizer, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = sorted(
        {w for t in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))}
    )
    chars = sorted({c for w in words for c in w})
    pieces = iter(dict.fromkeys([*words, *chars, *(f"##{c}" for c in chars)]))
    vocab = [
        BERT_SPECIALS.get(i) or (next(pieces, None) if i > 103 else None) or f"[unused{i}]"
        for i in range(BERT_VOCAB_SIZE)
    ]
    out.mkdir(parents=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    backend = BertWordPieceTokenizer(str(out / "vocab.txt"), lowercase=True)
    specials = {f"{role}_token": f"[{role.upper()}]" for role in ("unk", "pad", "cls", "sep")}
    PreTrainedTokenizerFast(
        tokenizer_object=backend, mask_token="[MASK]", **specials
    ).save_pretrained(out)


def write_weights(out: Path) -> None:
    """Random-init BEiT-B/16 (the ft22k config's eps and mean pooling) and BERT-base, as HF
    directories (`save_pretrained`), seeded."""
    import torch
    from transformers import BeitConfig, BeitModel, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    beit = BeitConfig(
        image_size=224,
        patch_size=16,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        layer_norm_eps=1e-12,
        use_mean_pooling=True,
        use_relative_position_bias=True,
        use_absolute_position_embeddings=False,
        layer_scale_init_value=0.1,
    )
    BeitModel(beit).save_pretrained(out / "beit-base-patch16-224")
    BertForMaskedLM(BertConfig()).save_pretrained(out / "bert-base-uncased")


def write_inputs(workdir: Path) -> None:
    inputs = workdir / INPUTS
    texts = write_videos(inputs / "data")
    write_tokenizer(inputs / "bert-base-uncased", texts)
    write_weights(inputs)


def dag_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def targets() -> list[str]:
    tables = [f"results/{PROFILE}/tables/{t}.csv" for t in (*TABLES, "A4")]
    # The end of the chain: A3 and A8 read T = 8, the paper's DAG grows the chain to 16.
    return [*tables, f"{RUNS}/pretrain/svitt-hybrid/T16/metrics.json"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    workdir = copy_workflow(tmp_path_factory.mktemp("paper-smoke"))
    write_inputs(workdir)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *DAG, "--", *targets()],
        cwd=workdir,
        env=dag_env(),
        capture_output=True,
        text=True,
        timeout=DAG_TIMEOUT,
    )
    logs = "".join(
        f"\n--- {log}\n{log.read_text()[-3000:]}" for log in (workdir / RUNS).rglob("*.log")
    )
    assert result.returncode == 0, result.stderr[-5000:] + logs
    yield workdir
    shutil.rmtree(workdir)  # about 13 GB: the inputs and five training checkpoints


TRAINING_RUNS = [f"pretrain/svitt-hybrid/T{t}" for t in (4, 8, 16)] + [
    "finetune-retrieval/svitt-hybrid/T8/ssv2_label",
    "finetune-qa/svitt-hybrid/T8/anet_qa",
]
EVALUATION_RUNS = [
    "zero-shot/svitt-hybrid/T8/msrvtt/normal",
    "finetune-retrieval/svitt-hybrid/T8/ssv2_label/shuffle",
    "finetune-qa/svitt-hybrid/T8/anet_qa/shuffle",
]
TEST_QUERIES = {"msrvtt": 8, "ssv2_label": 4, "anet_qa": 8}  # SPLITS' test sets


def test_every_stage_finishes_at_the_paper_shapes(smoke_run: Path) -> None:
    for run in TRAINING_RUNS + EVALUATION_RUNS:
        metrics = json.loads((smoke_run / RUNS / run / "metrics.json").read_text())
        config = metrics["run"]["config"]
        vision, text = config["model"]["vision"], config["model"]["text"]
        assert (vision["image_size"], vision["patch_size"], vision["dim"]) == (224, 16, 768), run
        assert (vision["depth"], text["depth"], text["dim"]) == (12, 12, 768), run
        assert (vision["pool"], vision["layer_norm_eps"]) == ("mean", 1e-12), run
        assert metrics["sparsity"]["block_size"] == 56, run
        assert metrics["num_frames"] == int(run.split("/T")[1].split("/")[0]), run
        assert metrics["skipped_videos"] == [], run
        if run in TRAINING_RUNS:
            assert (smoke_run / RUNS / run / "checkpoint.pt").stat().st_size > 0, run
            assert metrics["train_steps"] == 2, run  # 4 training videos, batch 2
        if run.startswith("pretrain"):
            continue
        # The release's evaluation (the paper profile's): 3 consecutive clips of T frames,
        # logsumexp over clips, the top k_test re-ranked by the ITM logit.
        evaluation = config["eval"]
        assert (evaluation["num_clips"], evaluation["clip_ensemble"]) == (3, "lse"), run
        if metrics["dataset"] != "anet_qa":
            assert evaluation["rerank"] == "itm_logit", run
        assert metrics["num_queries"] == TEST_QUERIES[metrics["dataset"]], run
        assert metrics["num_videos"] == 8, run
        if metrics["dataset"] == "anet_qa":
            assert 0 <= metrics["accuracy"] <= 100, run
        else:
            assert 0 <= metrics["r1"] <= metrics["r5"] <= metrics["r10"] == 100.0, run
        expected_order = "shuffle" if run.endswith("shuffle") else "normal"
        assert metrics["overrides"]["frame_order"] == expected_order, run


def test_tables_have_the_smoke_rows(smoke_run: Path) -> None:
    tables = smoke_run / f"results/{PROFILE}/tables"
    a3 = pd.read_csv(tables / "A3.csv")
    ours = a3[a3.source == PROFILE]
    models = ours[~ours.method.str.endswith("(baseline)")]
    assert list(models.sparsity) == ["Hybrid"] and models["MSR-VTT Mean"].notna().all()
    assert list(ours.method[ours.method.str.endswith("(baseline)")]) == ["chance (baseline)"]
    a8 = pd.read_csv(tables / "A8.csv")
    ours = a8[a8.source == PROFILE]
    models = ours[~ours.method.str.endswith("(baseline)")]
    assert list(models.sparsity) == ["Hybrid"]
    # every cell and interval bound computed (the settings column is empty where the
    # smoke keeps the paper's recipe)
    assert models.drop(columns=["source", "non-paper settings"]).notna().all(axis=None)
    assert len(ours) - len(models) == 3  # chance, majority answer, question-only prior


def test_a1_equals_the_supplement_and_a4_differs_only_where_the_smoke_says(
    smoke_run: Path,
) -> None:
    tables = smoke_run / f"results/{PROFILE}/tables"
    a1 = pd.read_csv(tables / "A1.csv", dtype=str).drop(columns="edges")
    ours = a1[a1.source == PROFILE].drop(columns="source").reset_index(drop=True)
    reported = a1[a1.source == "reported"].drop(columns="source").reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, reported)
    a4 = pd.read_csv(tables / "A4.csv", dtype=str).set_index("hyperparameter")
    ours = a4[a4.source == PROFILE].drop(columns="source")
    reported = a4[a4.source == "reported"].drop(columns="source")
    # Overridden for 2 cores (epochs, batch size); no DiDeMo, so no "(64 for DiDeMo)".
    smoke_rows = ["Epochs", "Batch size", "Text length"]
    pd.testing.assert_frame_equal(ours.drop(index=smoke_rows), reported.drop(index=smoke_rows))
    assert set(ours.loc["Batch size"]) == {"2"}
