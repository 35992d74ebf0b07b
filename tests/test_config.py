"""The run config: strict keys, value checks naming the key, exact round trip."""

import pytest

from svitt.config import (
    ConfigError,
    RunConfig,
    asdict,
    flatten,
    load_config,
    parse_override,
)


def test_defaults_round_trip_through_plain_data():
    cfg = load_config({"model": {"sparsity": {"attention": "sparse", "visual_keep_rate": 0.7}}})
    assert load_config(asdict(cfg)) == cfg
    assert isinstance(RunConfig().model.sparsity.visual_drop_layers, tuple)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": {"sparsty": {}}}, "unknown config key 'model.sparsty'; allowed keys: arch,"),
        ({"model": {"sparsity": {"local_blocks": 2}}}, "model.sparsity.local_blocks: got 2"),
        ({"model": {"sparsity": {"visual_keep_rate": 0.0}}}, "visual_keep_rate: got 0.0"),
        ({"model": {"sparsity": {"cross_keep_rate": 1.5}}}, "allowed: a keep rate in (0, 1]"),
        ({"model": {"sparsity": {"block_size": 0}}}, "model.sparsity.block_size: got 0"),
        ({"eval": {"frame_order": "sideways"}}, "['normal', 'reverse', 'shuffle']"),
        ({"model": {"arch": "clip"}}, "model.arch: got 'clip'"),
        ({"optim": {"lr": "fast"}}, "optim.lr: got 'fast'; allowed: a number"),
        ({"data": {"crop_scale": [0.9, 0.5]}}, "data.crop_scale: got [0.9, 0.5]; allowed: [low"),
        ({"eval": {"rerank": "vtm"}}, "eval.rerank: got 'vtm'; allowed: one of"),
        ({"eval": {"clip_ensemble": "max"}}, "eval.clip_ensemble: got 'max'; allowed: one of"),
        ({"eval": {"num_clips": 0}}, "eval.num_clips: got 0; allowed: an integer >= 1"),
        ({"optim": {"min_lr_ratio": 1.5}}, "optim.min_lr_ratio: got 1.5; allowed: a value in"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError) as err:
        load_config(data)
    assert message in str(err.value)


def test_more_random_blocks_than_exist_is_rejected():
    tiny = {"image_size": 32, "patch_size": 8, "num_frames": 1}  # 16 tokens
    data = {"model": {"vision": tiny, "sparsity": {"attention": "sparse", "block_size": 4}}}
    with pytest.raises(ConfigError, match=r"random_blocks: got 4; allowed: at most 3") as err:
        load_config(data, {"model": {"sparsity": {"random_blocks": 4}}})
    assert "model.sparsity" in str(err.value)
    assert load_config(data).model.sparsity.random_blocks == 3


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_and_flatten():
    cfg = load_config({}, parse_override("eval.frame_order=shuffle"), parse_override("seed=3"))
    assert cfg.eval.frame_order == "shuffle" and cfg.seed == 3
    flat = flatten(asdict(cfg))
    assert flat["model.sparsity.block_size"] == 56
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("seed")


def test_float_literals_without_a_dot_are_numbers():
    """PyYAML reads `1e-3` as a string (YAML 1.1); `--set optim.lr=1e-3` must still work."""
    cfg = load_config({}, parse_override("optim.lr=1e-3"))
    assert cfg.optim.lr == 1e-3
    with pytest.raises(ConfigError, match=r"optim\.lr: got 'fast'"):
        load_config({}, parse_override("optim.lr=fast"))
