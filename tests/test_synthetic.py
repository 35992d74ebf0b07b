import json
import os
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest

from svitt.data.annotations import REGISTRY, dataset_paths, load_retrieval_queries
from svitt.data.synthetic import (
    MANIFEST,
    RECIPES,
    SPLIT_SIZES,
    TEMPORAL_QUESTION_TYPES,
    CaptionStyle,
    candidate_questions,
    caption,
    draw_dataset,
    generate,
    order_dependent_share,
    render,
    sample_script,
    write_video,
)
from svitt.data.video import ClipLoader, ClipSpec


def test_drawing_is_deterministic_and_seed_dependent():
    for name in ("msrvtt", "ssv2_label", "agqa"):
        a, b = draw_dataset(name, "ci", 0), draw_dataset(name, "ci", 0)
        for split in a:
            assert json.dumps(a[split].entries) == json.dumps(b[split].entries)
            for video, script in list(a[split].videos.items())[:5]:
                assert np.array_equal(render(script, 16), render(b[split].videos[video], 16))
    assert (
        draw_dataset("msrvtt", "ci", 1)["test"].entries
        != draw_dataset("msrvtt", "ci", 0)["test"].entries
    )


def test_same_seed_gives_same_annotation_bytes_and_frames(ci_root, tmp_path):
    """Redrawing with the seed reproduces the files: annotations byte for byte, videos frame
    for frame after decoding."""
    eval_clip = ClipLoader(ClipSpec(4, 32, (0.5,) * 3, (0.25,) * 3, train=False))
    for name in REGISTRY:
        paths = dataset_paths(ci_root, name)
        for split, draft in draw_dataset(name, "ci", 0).items():
            text = json.dumps(draft.entries, indent=1, sort_keys=True) + "\n"
            assert paths.annotation(split).read_bytes() == text.encode()
            video, script = next(iter(draft.videos.items()))
            again = tmp_path / f"{name}_{video}"
            write_video(again, render(script, RECIPES[name].frames))
            assert again.read_bytes() == paths.video(video).read_bytes()
            assert np.array_equal(eval_clip(again, 0), eval_clip(paths.video(video), 0))


_WRITE_CHARADES_VIDEOS = """
import sys
from pathlib import Path
from svitt.data.synthetic import RECIPES, draw_dataset, write_videos
out, workers = Path(sys.argv[1]), int(sys.argv[2])
out.mkdir()
frames = RECIPES["charades"].frames
drafts = draw_dataset("charades", "ci", 0).values()
write_videos([(out / v, s, frames) for d in drafts for v, s in d.videos.items()], workers)
"""


def test_video_bytes_depend_neither_on_workers_nor_on_earlier_allocations(tmp_path):
    """x264's AVX-512 code reads heap memory it never wrote, so on such a CPU a few videos
    came out differently after other encodes. One process on a fresh heap and two workers
    whose every allocation glibc fills with 0xaa write the same bytes (the test has teeth on
    an AVX-512 CPU with glibc only)."""
    for workers, perturb in ((1, "0"), (2, "85")):
        out = str(tmp_path / str(workers))
        env = {**os.environ, "MALLOC_PERTURB_": perturb}
        subprocess.run(
            [sys.executable, "-c", _WRITE_CHARADES_VIDEOS, out, str(workers)], env=env, check=True
        )
    videos = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert len(videos) == sum(SPLIT_SIZES["ci"]["charades"].values())
    for name in videos:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name


def test_reversed_script_renders_reversed_video_and_flips_caption():
    rng = np.random.default_rng(0)
    for kind in ("move1", "show1", "seq_same", "seq_two"):
        script = sample_script(rng, kind)
        frames = RECIPES["didemo"].frames
        assert np.array_equal(render(script.reversed(), frames), render(script, frames)[::-1])
        style = CaptionStyle()
        assert caption(script, style) != caption(script.reversed(), style)
    still = sample_script(rng, "still2")
    assert caption(still, CaptionStyle()) == caption(still.reversed(), CaptionStyle())


def test_order_dependent_test_captions_come_with_their_reversed_video(ci_root):
    eval_clip = ClipLoader(ClipSpec(16, 64, (0.0,) * 3, (1 / 255,) * 3, train=False))
    paths = dataset_paths(ci_root, "msrvtt")
    entries = json.loads(paths.annotation("test").read_text())
    by_caption = {e["caption"]: e["video"] for e in entries}
    dependent = [e for e in entries if e["caption"] != e["reversed_caption"]]
    assert dependent
    for e in dependent:
        partner = by_caption[e["reversed_caption"]]  # the distractor is another test video
        forward = eval_clip(paths.video(e["video"]), 0)
        backward = eval_clip(paths.video(partner), 0)
        assert (forward - backward.flip(0)).abs().mean() < 3  # lossy H.264, same content
        assert (forward - backward).abs().mean() > 3  # but not the same video


def test_manifest_shares_recomputed_from_annotations(ci_root):
    manifest = json.loads((ci_root / MANIFEST).read_text())
    assert (manifest["size"], manifest["seed"]) == ("ci", 0)
    for name, info in manifest["datasets"].items():
        paths = dataset_paths(ci_root, name)
        for split, stats in info["splits"].items():
            entries = json.loads(paths.annotation(split).read_text())
            assert stats["texts"] == len(entries)
            assert stats["order_dependent_share"] == round(order_dependent_share(entries), 4)
    shares = {
        n: d["splits"]["test"]["order_dependent_share"]
        for n, d in manifest["datasets"].items()
        if n != "webvid"
    }
    assert shares["ssv2_label"] > shares["msrvtt"] and shares["agqa"] > shares["msrvtt_qa"]
    assert (
        manifest["datasets"]["msrvtt"]["splits"]["test"]["videos"]
        == (SPLIT_SIZES["ci"]["msrvtt"]["test"])
    )


def test_ssv2_like_labels_have_several_positive_videos(ci_root):
    queries = load_retrieval_queries(dataset_paths(ci_root, "ssv2_label").annotation("test"))
    labels, per_label = SPLIT_SIZES["ci"]["ssv2_label"]["test"]
    assert len(queries) == labels and all(len(q.videos) == per_label for q in queries)


def test_qa_answers_are_in_answer_list(ci_root):
    for name in ("msrvtt_qa", "anet_qa", "agqa"):
        paths = dataset_paths(ci_root, name)
        answers = set(json.loads(paths.answer_list.read_text()))
        for split in paths.spec.splits:
            entries = json.loads(paths.annotation(split).read_text())
            assert {e["answer"] for e in entries} <= answers
            assert len({e["question_id"] for e in entries}) == len(entries)


@pytest.mark.parametrize("name", ["msrvtt_qa", "anet_qa", "agqa"])
def test_qa_questions_carry_their_type_and_balanced_answers(name):
    drafts = draw_dataset(name, "default", seed=0)
    for split, draft in drafts.items():
        answers: dict[str, Counter[str]] = defaultdict(Counter)
        for entry in draft.entries:
            kind = entry["question_type"]
            # Exactly the temporal types change their answer when the video is reversed.
            temporal = entry["answer"] != entry["reversed_answer"]
            assert temporal == (kind in TEMPORAL_QUESTION_TYPES), entry
            answers[kind][entry["answer"]] += 1
        # The question alone tells little: no answer of a well-asked type dominates (test
        # videos are asked 4 of their few questions, so there is less to choose from).
        bound = 1.35 if split == "train" else 2.0
        for kind, counts in answers.items():
            if sum(counts.values()) >= 50 and kind not in ("first", "last"):
                assert max(counts.values()) <= bound * min(counts.values()), (split, kind, counts)
        assert len(answers["order"]) == 2 or sum(answers["order"].values()) < 2


def test_before_after_question_names_either_actor_first():
    script = sample_script(np.random.default_rng(3), "seq_two")
    order = [q for q in candidate_questions(script) if q.kind == "order"]
    assert sorted(q.answer(script) for q in order) == ["after", "before"]
    assert {q.answer(script.reversed()) for q in order} == {"after", "before"}


def test_tokenizer_in_hf_format(ci_root):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ci_root / "tokenizer"), local_files_only=True)
    assert tok.pad_token_id == 0 and tok.mask_token_id == 4
    ids = tok("A red square moves right")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in ids


def test_generation_is_idempotent_and_refuses_foreign_folders(ci_root, tmp_path):
    before = (ci_root / MANIFEST).read_bytes()
    generate(ci_root, "ci", 0)  # already there: nothing rewritten
    assert (ci_root / MANIFEST).read_bytes() == before
    with pytest.raises(FileExistsError, match="seed=5"):
        generate(ci_root, "ci", 5)
    assert not [p for p in ci_root.parent.iterdir() if ".tmp-" in p.name]


def test_tokenizer_is_the_same_in_every_process(tmp_path):
    """Token ids must not depend on the process (tokenizers' trainer broke ties differently in
    each one, so two clean runs of the DAG trained on different ids)."""
    script = (
        "import sys; from pathlib import Path; from svitt.data.synthetic import train_tokenizer; "
        "train_tokenizer(['a red square moves right', 'the blue circle appears, then stays', "
        "'what color is the triangle?'] * 3, Path(sys.argv[1]))"
    )
    for name in ("one", "two"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True)
    one, two = ((tmp_path / name / "tokenizer.json").read_bytes() for name in ("one", "two"))
    assert one == two
    vocab = json.loads(one)["model"]["vocab"]
    assert list(vocab)[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"square", "circle", "##q"} <= set(vocab)
