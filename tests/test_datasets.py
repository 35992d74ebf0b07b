import json

import numpy as np
import pytest
import torch

from svitt.config import ConfigError, load_config
from svitt.data.datasets import (
    BadVideosError,
    eval_loader,
    qa_eval,
    retrieval_eval,
    training_data,
)
from svitt.data.synthetic import Obj, Script, State, render, train_tokenizer, write_video
from svitt.data.tokenizer import TextTokenizer
from svitt.engine.distributed import epoch_batches
from svitt.engine.loop import epoch_loader

CAPTIONS = [
    "a red square moves right",
    "a blue circle appears",
    "a green triangle stays still",
    "a red square moves left",
    "a blue circle disappears",
    "a yellow square moves up",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """webvid with 6 good videos + a corrupt and a missing one; msrvtt test; agqa."""
    root = tmp_path_factory.mktemp("data")
    square = Obj("red", "square", "big")
    for name in ("webvid", "msrvtt", "agqa"):
        (root / name / "videos").mkdir(parents=True)
        (root / name / "annotations").mkdir()
        for i in range(6):
            script = Script((square,), ((State(14 + 4 * i, 32, True),), (State(46, 32, True),)))
            write_video(root / name / "videos" / f"v{i}.mp4", render(script, 8))
        (root / name / "videos" / "corrupt.mp4").write_bytes(b"\x00" * 300)
    pairs = [{"video": f"v{i}.mp4", "caption": c} for i, c in enumerate(CAPTIONS)]
    bad = [{"video": "corrupt.mp4", "caption": "x"}, {"video": "missing.mp4", "caption": "y"}]
    (root / "webvid/annotations/train.json").write_text(json.dumps(pairs[:3] + bad + pairs[3:]))
    test = [{"video": ["v0.mp4", "v1.mp4"], "caption": "moving the red square"}, *pairs[2:]]
    (root / "msrvtt/annotations/test.json").write_text(json.dumps(test))
    qa = [
        {
            "video": f"v{i}.mp4",
            "question": "what color is the square?",
            "answer": "red" if i else "crimson",
            "question_id": 100 + i,
        }
        for i in range(6)
    ]
    (root / "agqa/annotations/test.json").write_text(json.dumps(qa))
    (root / "agqa/annotations/answer_list.json").write_text(json.dumps(["blue", "red"]))
    train_tokenizer([*CAPTIONS, "what color is the square", "red blue crimson"], root / "tokenizer")
    return root


def config(root, **data):
    return load_config(
        {
            "seed": 1,
            "data": {
                "root": str(root),
                "tokenizer": str(root / "tokenizer"),
                "num_workers": 0,
                "text_max_len": 12,
                **data,
            },
            "model": {"vision": {"image_size": 32, "patch_size": 8, "num_frames": 4}},
            "optim": {"batch_size": 4},
            "eval": {"batch_size": 3},
        }
    )


def train_batches(cfg, tokenizer, task="pretrain", epoch=0):
    """One epoch of a training stage's batches, built the way `loop.train` builds them."""
    dataset, collate = training_data(cfg, tokenizer, task)
    batches = epoch_batches(len(dataset), cfg.optim.batch_size, cfg.seed, epoch, 0, 1)
    return list(epoch_loader(dataset, collate, batches, cfg, epoch))


def test_tokenizer_special_tokens_and_padding(root):
    tok = TextTokenizer.from_dir(root / "tokenizer")
    ids = [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id]
    assert [*ids, tok.mask_token_id] == [0, 1, 2, 3, 4]
    ids, mask = tok.encode(["a red square", "red " * 20], max_len=6)
    assert ids[0].tolist() == [2, *ids[0, 1:4].tolist(), 3, 0] and mask[0].tolist() == [1] * 5 + [0]
    assert ids[1, 0] == 2 and ids[1, -1] == 3 and bool(mask[1].all())  # truncated, [SEP] kept
    assert tok.decode(ids[0]) == "a red square"
    assert tok.encode([], max_len=6)[0].shape == (0, 6)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TextTokenizer.from_dir(root / "nowhere")


def test_tokenizer_matches_transformers(root):
    from transformers import AutoTokenizer

    texts = ["A red square moves right", "what color is the CIRCLE?", "red blue " * 10, "zzqx"]
    ours = TextTokenizer.from_dir(root / "tokenizer")
    theirs = AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    expected = theirs(texts, padding="max_length", truncation=True, max_length=9)
    ids, mask = ours.encode(texts, max_len=9)
    assert ids.tolist() == expected["input_ids"] and mask.tolist() == expected["attention_mask"]
    assert len(ours) == len(theirs)


def test_tokenizer_reads_renamed_special_tokens(root, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((root / "tokenizer" / "tokenizer.json").read_bytes())
    config = {"mask_token": {"content": "[UNK]", "lstrip": False}, "pad_token": "[SEP]"}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(config))
    tok = TextTokenizer.from_dir(tmp_path)
    assert (tok.mask_token_id, tok.pad_token_id, tok.cls_token_id) == (1, 3, 2)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*save_pretrained"):
        TextTokenizer.from_dir(tmp_path)


def test_training_skips_and_reports_bad_videos(root):
    cfg = config(root)
    batches = train_batches(cfg, TextTokenizer.from_dir(cfg.data.tokenizer))
    assert len(batches) == 2  # 8 entries, batch 4
    skipped = sorted(p for b in batches for p in b["skipped"])
    assert [p.rsplit("/", 1)[1] for p in skipped] == ["corrupt.mp4", "missing.mp4"]
    kept = sum(len(b["video_id"]) for b in batches)
    assert kept == 6
    b = batches[0]
    n = len(b["video_id"])
    assert b["video"].shape == (n, 4, 3, 32, 32) and b["video"].dtype == torch.float32
    assert b["text_ids"].shape == (n, 12) and b["text_ids"].dtype == torch.long
    assert b["text_mask"].shape == (n, 12) and bool((b["text_ids"][b["text_mask"] == 0] == 0).all())


def test_training_batches_do_not_depend_on_workers(root):
    tok = TextTokenizer.from_dir(root / "tokenizer")
    results = []
    for workers in (0, 2):
        results.append(train_batches(config(root, num_workers=workers), tok, epoch=3))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["video_id"], b["video_id"])
        assert a["skipped"] == b["skipped"]


def test_evaluation_raises_listing_every_bad_video(root):
    cfg = config(root)
    tok = TextTokenizer.from_dir(cfg.data.tokenizer)
    dataset, collate = training_data(cfg, tok, "pretrain")
    strict = eval_loader(dataset, collate, 3, 0, allow_bad=False)
    with pytest.raises(BadVideosError, match=r"(?s)corrupt\.mp4.*missing\.mp4") as err:
        for _ in strict:
            pass
    assert len(err.value.paths) == 2
    lenient = eval_loader(dataset, collate, 3, 0, allow_bad=True)
    seen = [i for b in lenient for i in b["video_id"].tolist()]
    assert len(seen) == 6 and len(lenient.skipped) == 2


def test_retrieval_eval_ground_truth_and_video_set(root):
    cfg = config(root, dataset="msrvtt")
    ev = retrieval_eval(cfg, TextTokenizer.from_dir(cfg.data.tokenizer))
    assert ev.data.texts[0] == "moving the red square"
    assert ev.data.ground_truth[0] == frozenset({0, 1})
    assert [v.name for v in ev.data.videos] == [f"v{i}.mp4" for i in range(6)]
    assert ev.text_ids.shape == (5, 12)
    ids = [i for b in ev.videos for i in b["video_id"].tolist()]
    assert ids == list(range(6)) and ev.videos.skipped == []
    with pytest.raises(ConfigError, match=r"data\.dataset.*allowed for retrieval"):
        retrieval_eval(config(root, dataset="agqa"), None)


def test_qa_eval_batch_and_answer_index(root):
    cfg = config(root, dataset="agqa", answer_max_len=4)
    ev = qa_eval(cfg, TextTokenizer.from_dir(cfg.data.tokenizer))
    assert ev.answers == ["blue", "red"] and ev.answer_ids.shape == (2, 4)
    batch = next(iter(ev.questions))
    assert batch["question_ids"].shape == (3, 12) and batch["answer_ids"].shape == (3, 4)
    assert batch["answer_index"].tolist() == [-1, 1, 1]  # "crimson" is not in the list
    assert batch["question_id"].tolist() == [100, 101, 102]


def test_clip_content_matches_video(root):
    cfg = config(root, dataset="msrvtt")
    ev = retrieval_eval(cfg, TextTokenizer.from_dir(cfg.data.tokenizer))
    clip = next(iter(ev.videos))["video"][0]  # v0: the square moves right
    mean = torch.tensor(cfg.data.mean).view(3, 1, 1)
    std = torch.tensor(cfg.data.std).view(3, 1, 1)
    red = ((clip * std + mean)[:, 0] > 0.6).float()  # [T, H, W]
    columns = [float((m.sum(0) * torch.arange(32)).sum() / m.sum()) for m in red]
    assert np.all(np.diff(columns) > 0)  # moving right, frame after frame


def test_reversal_negatives_add_each_order_dependent_twin(root):
    (root / "ssv2_label" / "annotations").mkdir(parents=True)
    (root / "ssv2_label" / "videos").symlink_to(root / "webvid" / "videos")
    entries = [
        {"video": "v0.mp4", "caption": CAPTIONS[0], "reversed_caption": CAPTIONS[3]},
        {"video": "v1.mp4", "caption": CAPTIONS[2], "reversed_caption": CAPTIONS[2]},
        {"video": "v2.mp4", "caption": CAPTIONS[1], "reversed_caption": CAPTIONS[4]},
        {"video": "v3.mp4", "caption": CAPTIONS[5]},
    ]
    annotation = root / "ssv2_label" / "annotations" / "train.json"
    annotation.write_text(json.dumps(entries[:3] * 2))
    tok = TextTokenizer.from_dir(root / "tokenizer")
    cfg = config(root, dataset="ssv2_label", reversal_negatives=True)
    plain = train_batches(config(root, dataset="ssv2_label"), tok, "retrieval")
    for batch, reference in zip(train_batches(cfg, tok, "retrieval"), plain, strict=True):
        size = len(reference["video_id"])
        ids = batch["video_id"].tolist()
        assert torch.equal(batch["video"][:size], reference["video"])
        twins = [i for i, v in enumerate(reference["video_id"].tolist()) if v != 1]
        assert ids[size:] == [reference["video_id"][i].item() + 3 for i in twins]
        pairs = list(zip(twins, range(size, len(ids)), strict=True))
        assert batch.get("twin_rows", torch.empty(0, 2)).tolist() == [list(p) for p in pairs]
        for twin, i in enumerate(twins, start=size):
            assert torch.equal(batch["video"][twin], reference["video"][i].flip(0))
            caption = tok.decode(batch["text_ids"][twin])
            assert caption == {0: CAPTIONS[3], 2: CAPTIONS[4]}[ids[i]]
    annotation.write_text(json.dumps(entries))
    with pytest.raises(ConfigError, match=r"data\.reversal_negatives.*train\.json.*v3\.mp4"):
        training_data(cfg, tok, "retrieval")


def test_qa_reversal_negatives_add_each_order_dependent_twin(root):
    (root / "anet_qa" / "annotations").mkdir(parents=True)
    (root / "anet_qa" / "videos").symlink_to(root / "webvid" / "videos")
    entries = [
        {"video": "v0.mp4", "question": "where does it go?", "answer": "right"},
        {"video": "v1.mp4", "question": "what color is it?", "answer": "red"},
        {"video": "v2.mp4", "question": "does it appear?", "answer": "appear"},
    ]
    reversed_answers = ["left", "red", "disappear"]
    entries = [
        e | {"question_id": i, "reversed_answer": r}
        for i, (e, r) in enumerate(zip(entries * 2, reversed_answers * 2, strict=True))
    ]
    annotation = root / "anet_qa" / "annotations" / "train.json"
    annotation.write_text(json.dumps(entries))
    (root / "anet_qa" / "annotations" / "test.json").write_text(json.dumps(entries))
    answers = ["appear", "disappear", "left", "red", "right"]  # "disappear" stays out
    (root / "anet_qa" / "annotations" / "answer_list.json").write_text(
        json.dumps(answers[:1] + answers[2:])
    )
    tok = TextTokenizer.from_dir(root / "tokenizer")
    cfg = config(root, dataset="anet_qa", reversal_negatives=True)
    plain = train_batches(config(root, dataset="anet_qa"), tok, "qa")
    for batch, reference in zip(train_batches(cfg, tok, "qa"), plain, strict=True):
        size = len(reference["video_id"])
        assert torch.equal(batch["video"][:size], reference["video"])
        assert torch.equal(batch["answer_ids"][:size], reference["answer_ids"])
        twins = [i for i, q in enumerate(reference["question_id"].tolist()) if q % 3 != 1]
        assert batch["twin_rows"].tolist() == [[i, size + k] for k, i in enumerate(twins)]
        for twin, i in enumerate(twins, start=size):
            assert torch.equal(batch["video"][twin], reference["video"][i].flip(0))
            assert batch["video_id"][twin] == reference["video_id"][i] + 3
            assert torch.equal(batch["question_ids"][twin], reference["question_ids"][i])
            expected = {"right": "left", "appear": "disappear"}[
                tok.decode(reference["answer_ids"][i])
            ]
            assert tok.decode(batch["answer_ids"][twin]) == expected
            assert batch["answer_index"][twin] == {"left": 1, "disappear": -1}[expected]
    # The test split never brings twins, whatever the setting.
    assert sum(len(b["video"]) for b in qa_eval(cfg, tok).questions) == len(entries)
    del entries[4]["reversed_answer"]
    annotation.write_text(json.dumps(entries))
    with pytest.raises(ConfigError, match=r"data\.reversal_negatives.*'reversed_answer'.*v1\.mp4"):
        training_data(cfg, tok, "qa")
