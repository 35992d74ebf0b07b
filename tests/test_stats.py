import json
from pathlib import Path

import numpy as np
import pytest

from svitt.cli import main
from svitt.data.stats import dataset_statistics
from svitt.data.synthetic import write_video


@pytest.fixture
def root(tmp_path):
    """didemo: 2 videos of 16 frames at 8 fps (2 s) + 1 of 32 (4 s) + a corrupt one."""
    base = tmp_path / "didemo"
    (base / "videos").mkdir(parents=True)
    (base / "annotations").mkdir()
    for name, frames in (("a.mp4", 16), ("b.mp4", 16), ("c.mp4", 32)):
        write_video(base / "videos" / name, np.zeros((frames, 64, 64, 3), np.uint8), fps=8)
    (base / "videos" / "bad.mp4").write_bytes(b"\x01" * 100)
    train = [
        {"video": "a.mp4", "caption": ["s1", "s2", "s3"]},
        {"video": "b.mp4", "caption": "one"},
    ]
    test = [
        {"video": "c.mp4", "caption": ["x", "y"]},
        {"video": "a.mp4", "caption": "z"},
        {"video": "bad.mp4", "caption": "w"},
    ]
    (base / "annotations" / "train.json").write_text(json.dumps(train))
    (base / "annotations" / "test.json").write_text(json.dumps(test))
    return tmp_path


def test_table_a2_statistics_from_disk(root):
    table = dataset_statistics(root, ["didemo"])
    row = table.iloc[0].to_dict()
    assert row["dataset"] == "didemo"
    assert row["num_videos"] == 4  # a, b, c, bad (a counted once)
    assert row["num_texts"] == 3 + 1 + 2 + 1 + 1  # paragraph sentences count one by one
    assert row["avg_duration_s"] == pytest.approx((2 + 2 + 4) / 3)
    assert row["num_bad_videos"] == 1


def test_missing_annotation_names_the_path(root):
    with pytest.raises(FileNotFoundError, match=r"msrvtt/annotations/train\.json"):
        dataset_statistics(root, ["msrvtt"])


def test_validate_data_report(root, tmp_path):
    out = tmp_path / "reports" / "didemo.json"
    args = [
        "validate-data",
        "--root",
        str(root),
        "--dataset",
        "didemo",
        "--out",
        str(out),
        "--workers",
        "1",
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["num_videos"] == 4 and report["num_bad"] == 1
    assert report["bad"][0]["path"].endswith("bad.mp4")
    assert sorted(v["frames"] for v in report["videos"]) == [16, 16, 32]
    assert report["splits"] == {
        "train": {"videos": 2, "texts": 4},
        "test": {"videos": 3, "texts": 4},
    }
    assert report["bad"][0]["splits"] == ["test"]
    assert main([*args, "--strict"]) == 2  # a user error: one line naming the report
    assert main([*args, "--strict", "test"]) == 2
    assert main([*args, "--strict", "train"]) == 0  # training skips bad videos


def test_validate_data_names_every_bad_file_with_several_workers(root, tmp_path, capsys):
    """Worker processes send each VideoError back (it survives pickling): a corrupt and a
    missing file are both reported, each by name, not a BrokenProcessPool."""
    test = root / "didemo" / "annotations" / "test.json"
    entries = [*json.loads(test.read_text()), {"video": "gone.mp4", "caption": "v"}]
    test.write_text(json.dumps(entries))
    out = tmp_path / "didemo.json"
    args = ["validate-data", "--root", str(root), "--dataset", "didemo", "--out", str(out)]
    assert main([*args, "--workers", "2", "--strict"]) == 2
    report = json.loads(out.read_text())
    bad = {Path(b["path"]).name: b["error"] for b in report["bad"]}
    assert bad.keys() == {"bad.mp4", "gone.mp4"}
    assert bad["gone.mp4"] == "file not found" and bad["bad.mp4"].startswith("cannot decode")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("svitt validate-data: error: didemo: 2 of 5 ")
    assert "gone.mp4: file not found" in err[0] and f"all listed in {out}" in err[0]


def test_validate_data_checks_the_splits_that_exist(root, tmp_path):
    """A test-only copy of a dataset validates; a split asked for must exist."""
    (root / "didemo" / "annotations" / "train.json").unlink()
    out = tmp_path / "didemo.json"
    args = ["validate-data", "--root", str(root), "--dataset", "didemo", "--out", str(out)]
    assert main([*args, "--workers", "1"]) == 0
    assert list(json.loads(out.read_text())["splits"]) == ["test"]
    assert main([*args, "--workers", "1", "--splits", "train"]) == 2
