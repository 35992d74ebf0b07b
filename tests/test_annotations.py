import json
import re

import pytest

from svitt.data.annotations import (
    REGISTRY,
    AnnotationError,
    DatasetError,
    annotation_counts,
    dataset_paths,
    load_answer_list,
    load_qa,
    load_retrieval_queries,
    load_text_video,
)


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_registry_resolves_paper_datasets_under_root(tmp_path):
    tasks = {name: spec.task for name, spec in REGISTRY.items()}
    assert tasks == {
        "webvid": "pretrain",
        "msrvtt": "retrieval",
        "didemo": "retrieval",
        "charades": "retrieval",
        "ssv2_label": "retrieval",
        "msrvtt_qa": "qa",
        "anet_qa": "qa",
        "agqa": "qa",
    }
    paths = dataset_paths(tmp_path, "agqa")
    assert paths.annotation("test") == tmp_path / "agqa" / "annotations" / "test.json"
    assert paths.answer_list == tmp_path / "agqa" / "annotations" / "answer_list.json"
    assert paths.video("v1.mp4") == tmp_path / "agqa" / "videos" / "v1.mp4"
    with pytest.raises(DatasetError, match=r"no split 'test'.*allowed: train"):
        dataset_paths(tmp_path, "webvid").annotation("test")
    with pytest.raises(DatasetError, match="has no answer list"):
        _ = dataset_paths(tmp_path, "msrvtt").answer_list
    with pytest.raises(DatasetError, match=r"unknown dataset 'kinetics'.*webvid"):
        dataset_paths(tmp_path, "kinetics")


def test_a_new_dataset_declares_itself_in_its_folder(tmp_path):
    declaration = tmp_path / "vatex" / "dataset.json"
    declaration.parent.mkdir()
    declaration.write_text(json.dumps({"task": "retrieval", "splits": ["test"]}))
    paths = dataset_paths(tmp_path, "vatex")
    assert (paths.spec.task, paths.spec.splits) == ("retrieval", ("test",))
    assert paths.annotation("test") == tmp_path / "vatex" / "annotations" / "test.json"
    with pytest.raises(DatasetError, match=r"no split 'train'.*allowed: test"):
        paths.annotation("train")
    declaration.write_text(json.dumps({"task": "captions", "splits": ["test"]}))
    with pytest.raises(AnnotationError, match=r"dataset.json: task: got 'captions'; allowed: pre"):
        dataset_paths(tmp_path, "vatex")
    declaration.write_text(json.dumps({"task": "qa", "splits": ["val"]}))
    with pytest.raises(AnnotationError, match=r"splits: got \['val'\]; allowed: a non-empty"):
        dataset_paths(tmp_path, "vatex")
    with pytest.raises(DatasetError, match=r"or a new one declared by .*kinetics/dataset\.json"):
        dataset_paths(tmp_path, "kinetics")


def test_text_video_joins_paragraphs_and_expands_multi_video(tmp_path):
    path = write(
        tmp_path / "a.json",
        [
            {"video": "a.mp4", "caption": ["one thing.", "then another."], "extra": 1},
            {"video": ["b.mp4", "c.mp4"], "caption": "label"},
        ],
    )
    pairs = load_text_video(path)
    assert [(p.video, p.caption) for p in pairs] == [
        ("a.mp4", "one thing. then another."),
        ("b.mp4", "label"),
        ("c.mp4", "label"),
    ]


def test_retrieval_queries_multi_positive_and_repeated_captions(tmp_path):
    path = write(
        tmp_path / "t.json",
        [
            {"video": ["a.mp4", "b.mp4"], "caption": "moving x up"},
            {"video": "c.mp4", "caption": "same words"},
            {"video": "d.mp4", "caption": "same words"},
        ],
    )
    queries = load_retrieval_queries(path)
    assert [q.videos for q in queries] == [
        ("a.mp4", "b.mp4"),
        ("c.mp4", "d.mp4"),
        ("c.mp4", "d.mp4"),
    ]


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"caption": "x"}, "video"),
        ({"video": "a.mp4"}, "caption"),
        ({"video": "a.mp4", "caption": ""}, "caption"),
        ({"video": 3, "caption": "x"}, "video"),
        ({"video": [], "caption": "x"}, "video"),
    ],
)
def test_malformed_text_entry_names_file_index_and_field(tmp_path, entry, field):
    path = write(tmp_path / "bad.json", [{"video": "ok.mp4", "caption": "fine"}, entry])
    with pytest.raises(AnnotationError) as err:
        load_text_video(path)
    message = str(err.value)
    assert str(path) in message and "entry 1" in message and repr(field) in message


def test_malformed_qa_entry_and_answer_list(tmp_path):
    good = {"video": "a.mp4", "question": "q?", "answer": "a", "question_id": 1}
    path = write(tmp_path / "qa.json", [good, {**good, "question_id": "seven"}])
    with pytest.raises(AnnotationError, match=r"qa\.json: entry 1: field 'question_id'"):
        load_qa(path)
    path = write(tmp_path / "qa2.json", [good, {k: v for k, v in good.items() if k != "answer"}])
    with pytest.raises(AnnotationError, match=r"entry 1: missing field 'answer'"):
        load_qa(path)
    items = load_qa(write(tmp_path / "qa3.json", [good, {**good, "question_id": "2"}]))
    assert [i.question_id for i in items] == [1, 2]


def test_qa_question_type_is_optional_and_checked(tmp_path):
    good = {"video": "a.mp4", "question": "q?", "answer": "a", "question_id": 1}
    typed = {**good, "question_id": 2, "question_type": "direction"}
    items = load_qa(write(tmp_path / "qa.json", [good, typed]))
    assert [i.question_type for i in items] == [None, "direction"]
    path = write(tmp_path / "bad.json", [good, {**typed, "question_type": ""}])
    with pytest.raises(AnnotationError, match=r"bad\.json: entry 1: field 'question_type'"):
        load_qa(path)


def test_answer_list_errors(tmp_path):
    with pytest.raises(AnnotationError, match="duplicate answers"):
        load_answer_list(write(tmp_path / "al.json", ["a", "b", "a"]))
    with pytest.raises(AnnotationError, match=r"al2\.json: entry 1"):
        load_answer_list(write(tmp_path / "al2.json", ["a", 3]))


def test_missing_and_non_list_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.json"))):
        load_text_video(tmp_path / "nope.json")
    with pytest.raises(AnnotationError, match="expected a JSON list"):
        load_text_video(write(tmp_path / "d.json", {"video": "a"}))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_text_video(tmp_path / "broken.json")


def test_annotation_counts_sentences_and_questions(tmp_path):
    path = write(
        tmp_path / "p.json",
        [
            {"video": "a.mp4", "caption": ["s1", "s2", "s3"]},
            {"video": ["a.mp4", "b.mp4"], "caption": "x"},
        ],
    )
    assert annotation_counts(path) == (["a.mp4", "b.mp4"], 4)
    qa = write(
        tmp_path / "q.json",
        [{"video": "a.mp4", "question": "q", "answer": "a", "question_id": i} for i in range(3)],
    )
    assert annotation_counts(qa) == (["a.mp4"], 3)
