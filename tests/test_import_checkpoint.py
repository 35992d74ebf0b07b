"""`svitt import-checkpoint --format release`: release-format checkpoints written from HF
modules (BEiT for `vision_encoder.*`, BERT with cross-attention for `text_encoder.*`) under the
release's key names and saved the way the release saves them; after import our model must
reproduce the reference's video embedding, text embedding and ITM class-1 logit."""

from __future__ import annotations

import json
import os
import sys
import types
import typing
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import nn
from transformers import BeitConfig, BeitModel, BertConfig, BertForMaskedLM

from svitt.cli import main
from svitt.config import load_config, merge
from svitt.data.synthetic import generate
from svitt.data.tokenizer import TextTokenizer
from svitt.models.inflate import inflate_rel_pos_table
from svitt.models.release import CheckpointFormatError, read_release_checkpoint
from svitt.models.svitt import SViTT

VISION_DIM, TEXT_DIM, EMBED = 24, 32, 16
TEXT_DEPTH, FUSION_LAYER = 3, 2  # layers 0-1 text-only, layer 2 multimodal (f_m)
RUN = {
    "seed": 0,
    "device": "cpu",
    "model": {
        "vision": {
            "image_size": 16, "patch_size": 4, "num_frames": 1, "dim": VISION_DIM, "depth": 2,
            "heads": 4, "mlp_ratio": 2.0, "pool": "mean", "layer_norm_eps": 1.0e-12,
        },
        "text": {
            "dim": TEXT_DIM, "depth": TEXT_DEPTH, "cross_depth": TEXT_DEPTH - FUSION_LAYER,
            "heads": 4, "mlp_dim": 64, "max_positions": 32, "layer_norm_eps": 1.0e-12,
        },
        "embed_dim": EMBED,
        "vtm_head": "two_way",
    },
    "data": {"num_workers": 0, "text_max_len": 16, "dataset": "msrvtt"},
    "eval": {"batch_size": 16, "k_test": 4},
}  # fmt: skip


# --- a stand-in for OmegaConf, pickled under OmegaConf's own module and class names ----------


class ContainerMetadata:
    def __init__(self) -> None:
        self.ref_type, self.object_type, self.key_type = typing.Any, dict, typing.Any
        self.flags = {}


class AnyNode:
    def __init__(self, value, parent) -> None:
        self._val, self._parent, self._metadata = value, parent, ContainerMetadata()


class DictConfig:
    """Pickles like OmegaConf's DictConfig: NEWOBJ + BUILD of __dict__ with `_content`."""

    def __init__(self, content: dict, parent=None) -> None:
        self._metadata, self._parent = ContainerMetadata(), parent
        self._content = {
            key: DictConfig(value, self) if isinstance(value, dict) else AnyNode(value, self)
            for key, value in content.items()
        }


@pytest.fixture
def fake_omegaconf(monkeypatch):
    for cls, module in (
        (DictConfig, "omegaconf.dictconfig"),
        (AnyNode, "omegaconf.nodes"),
        (ContainerMetadata, "omegaconf.base"),
    ):
        stub = sys.modules.get(module) or types.ModuleType(module)
        setattr(stub, cls.__name__, cls)
        monkeypatch.setitem(sys.modules, module, stub)
        monkeypatch.setattr(cls, "__module__", module)
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))


# --- the reference: HF modules and the release's heads ----------------------------------------


def randomise(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.2)
    return module.eval()


class Reference(nn.Module):
    """The release model's functions, computed with transformers' BEiT and BERT."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.beit = BeitModel(BeitConfig(
            hidden_size=VISION_DIM, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=2 * VISION_DIM, image_size=16, patch_size=4, layer_norm_eps=1e-12,
            use_relative_position_bias=True, use_mean_pooling=True, layer_scale_init_value=0.1,
        ))  # fmt: skip
        config = BertConfig(
            vocab_size=vocab, hidden_size=TEXT_DIM, num_hidden_layers=TEXT_DEPTH,
            num_attention_heads=4, intermediate_size=64, max_position_embeddings=48,
            is_decoder=True, add_cross_attention=True, layer_norm_eps=1e-12,
        )  # fmt: skip
        config._attn_implementation = "eager"
        self.bert = BertForMaskedLM(config)
        for index, layer in enumerate(self.bert.bert.encoder.layer):
            if index < FUSION_LAYER:
                del layer.crossattention  # the release's text-only layers have none
            else:  # ALBEF's encoder_width: keys/values read the video tokens at their width
                layer.crossattention.self.key = nn.Linear(VISION_DIM, TEXT_DIM)
                layer.crossattention.self.value = nn.Linear(VISION_DIM, TEXT_DIM)
        self.vision_layernorm = nn.LayerNorm(VISION_DIM, eps=1e-12)
        self.vision_proj = nn.Linear(VISION_DIM, EMBED)
        self.text_proj = nn.Linear(TEXT_DIM, EMBED)
        self.itm_head = nn.Linear(TEXT_DIM, 2)
        self.temp = nn.Parameter(torch.tensor(0.05))
        randomise(self, seed=0)
        with torch.no_grad():
            self.temp.fill_(0.05)

    def layers(self, hidden, mask, layers, video=None):
        extended = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in layers:
            kwargs = {} if video is None else {"encoder_hidden_states": video}
            out = layer(hidden, extended, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    @torch.no_grad()
    def outputs(self, image, ids, mask):
        beit = self.beit(pixel_values=image)
        video_embed = F.normalize(self.vision_proj(beit.pooler_output), dim=-1)
        video_tokens = self.vision_layernorm(beit.last_hidden_state)
        bert = self.bert.bert
        layers = bert.encoder.layer
        text = self.layers(bert.embeddings(input_ids=ids), mask, layers[:FUSION_LAYER])
        text_embed = F.normalize(self.text_proj(text[:, 0]), dim=-1)
        fused = self.layers(text, mask, layers[FUSION_LAYER:], video_tokens)
        return video_embed, text_embed, self.itm_head(fused[:, 0])[:, 1]

    def release_state_dict(self, tmp: Path, layout: str) -> dict[str, torch.Tensor]:
        """The release's keys: hub BEiT names (as save_pretrained writes them) under
        `vision_encoder.`, BertForMaskedLM (pre-training) or BertModel (fine-tuned) names under
        `text_encoder.`, the index buffers the release saves too."""
        self.beit.save_pretrained(tmp / "beit")
        state = {
            f"vision_encoder.{k}": v for k, v in load_file(tmp / "beit/model.safetensors").items()
        }
        for index in range(2):
            state[
                f"vision_encoder.encoder.layer.{index}.attention.attention.relative_position_bias."
                "relative_position_index"
            ] = torch.zeros(17, 17, dtype=torch.long)
        text = dict(self.bert.state_dict())
        text["bert.embeddings.position_ids"] = torch.arange(48)[None]
        if layout == "finetuned":
            text = {k.removeprefix("bert."): v for k, v in text.items() if k.startswith("bert.")}
        state.update({f"text_encoder.{k}": v for k, v in text.items()})
        for name in ("vision_layernorm", "vision_proj", "text_proj", "itm_head"):
            state.update({f"{name}.{k}": v for k, v in getattr(self, name).state_dict().items()})
        state["temp"] = self.temp.detach().clone()
        return {k: v.clone() for k, v in state.items()}


def save_like_the_release(path: Path, state: dict) -> None:
    config = DictConfig({"batch_size": {"msrvtt": 64}, "fusion_layer": FUSION_LAYER})
    torch.save(
        {"model": state, "config": config, "optimizer": {"state": {}}, "epoch": 0,
         "global_step": 1},
        path,
    )  # fmt: skip


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("import")
    generate(base / "data", size="ci", seed=0, workers=1)
    vocab = len(TextTokenizer.from_dir(base / "data" / "tokenizer"))
    run = {**RUN, "data": {**RUN["data"], "root": str(base / "data"),
                           "tokenizer": str(base / "data" / "tokenizer")}}  # fmt: skip
    run["tracking"] = {"uri": f"sqlite:///{base}/mlflow.db"}
    (base / "run.yaml").write_text(yaml.safe_dump(run))
    yield {"base": base, "config": base / "run.yaml", "vocab": vocab, "reference": Reference(vocab)}
    torch.set_num_threads(threads)


def import_release(bench, src: Path, dst: Path, config: Path | None = None) -> int:
    args = ["import-checkpoint", str(src), "--format", "release"]
    return main([*args, "--config", str(config or bench["config"]), "--out", str(dst)])


def model_of(dst: Path) -> tuple[SViTT, dict]:
    state = torch.load(dst, weights_only=True)  # a normal svitt checkpoint
    model = SViTT(load_config(state["config"]).model)
    model.load_state_dict(state["model"])
    return model.eval(), state


def inputs(vocab: int):
    generator = torch.Generator().manual_seed(3)
    image = torch.randn(3, 3, 16, 16, generator=generator)
    ids = torch.randint(4, vocab, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return image, ids, mask


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["pretrain", "finetuned"])
def test_import_reproduces_the_release_model(bench, tmp_path, fake_omegaconf, layout):
    reference = bench["reference"]
    src = tmp_path / "release.pth"
    save_like_the_release(src, reference.release_state_dict(tmp_path, layout))
    assert import_release(bench, src, tmp_path / "ours.pt") == 0
    model, state = model_of(tmp_path / "ours.pt")
    image, ids, mask = inputs(bench["vocab"])
    expected = reference.outputs(image, ids, mask)
    with torch.no_grad():
        video = model.encode_video(image[:, None])
        text = model.encode_text(ids, mask)
        itm = model.match_logits(video.tokens, text.hidden, mask)
    diffs = [
        (got - ref).abs().max().item()
        for got, ref in zip((video.embed, text.embed, itm), expected, strict=True)
    ]
    print(f"{layout}: max abs diff video {diffs[0]:.1e}, text {diffs[1]:.1e}, itm {diffs[2]:.1e}")
    assert max(diffs) < 1e-5
    assert model.temp.item() == pytest.approx(0.05)
    imported = state["imported"]
    assert imported["release_config"] == {"batch_size": {"msrvtt": 64}, "fusion_layer": 2}
    if layout == "finetuned":  # no MLM head in the file: ours keeps its initialisation
        assert imported["initialised"] and all(
            k.startswith("text.mlm_head.predictions.") for k in imported["initialised"]
        )
    else:
        assert imported["initialised"] == []
        torch.testing.assert_close(
            model.text.mlm_head.predictions.transform.dense.weight,
            reference.bert.cls.predictions.transform.dense.weight,
        )


def test_bare_state_dict_imports_and_evaluates_end_to_end(bench, tmp_path):
    src = tmp_path / "bare.pth"
    torch.save(bench["reference"].release_state_dict(tmp_path, "finetuned"), src)
    dst = tmp_path / "ours.pt"
    assert import_release(bench, src, dst) == 0
    # Evaluated at 2 frames: --init-from inflates the imported 1-frame encoder.
    out = tmp_path / "eval"
    args = ["--config", str(bench["config"]), "--init-from", str(dst), "--out", str(out)]
    assert main(["eval-retrieval", *args, "--set", "model.vision.num_frames=2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_frames"] == 2
    assert metrics["num_videos"] == 16
    assert 0 <= metrics["r1"] <= metrics["r10"] <= 100


def test_a_pickled_class_outside_the_allowlist_is_refused(bench, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    src = tmp_path / "evil.pth"
    torch.save({"model": {"temp": torch.tensor(0.05)}, "config": Payload()}, src)
    with pytest.raises(
        CheckpointFormatError, match=r"refusing to load the pickled global \w+\.system"
    ):
        read_release_checkpoint(src)
    assert import_release(bench, src, tmp_path / "ours.pt") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "refusing" in error
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "ours.pt").exists()


def test_unmapped_and_missing_keys_are_named(bench, tmp_path, capsys):
    state = bench["reference"].release_state_dict(tmp_path, "pretrain")
    state["text_encoder.bert.pooler.dense.weight"] = torch.zeros(TEXT_DIM, TEXT_DIM)
    torch.save(state, tmp_path / "extra.pth")
    assert import_release(bench, tmp_path / "extra.pth", tmp_path / "a.pt") == 2
    assert "text_encoder.bert.pooler.dense.weight" in capsys.readouterr().err
    del state["text_encoder.bert.pooler.dense.weight"], state["vision_proj.bias"]
    torch.save(state, tmp_path / "short.pth")
    assert import_release(bench, tmp_path / "short.pth", tmp_path / "b.pt") == 2
    assert "lacks 1 weights of the model: vision_proj.bias" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"vision": {"pool": "cls"}}, "model.vision.pool: got 'cls'; a release checkpoint needs"),
        ({"vtm_head": "binary"}, "model.vtm_head: got 'binary'"),
        ({"text": {"layer_norm_eps": 1e-6}}, "model.text.layer_norm_eps: got 1e-06"),
    ],
)
def test_options_that_change_the_function_are_required(bench, tmp_path, capsys, override, message):
    src = tmp_path / "release.pth"
    torch.save(bench["reference"].release_state_dict(tmp_path, "pretrain"), src)
    config = merge(yaml.safe_load(bench["config"].read_text()), {"model": override})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert import_release(bench, src, tmp_path / "ours.pt", tmp_path / "run.yaml") == 2
    assert message in capsys.readouterr().err


def test_a_video_checkpoint_keeps_its_clip_length(bench, tmp_path):
    """A 3D table of T = 2 frames: DST records 2 frames, whatever the run config says."""
    reference = bench["reference"]
    state = reference.release_state_dict(tmp_path, "pretrain")
    for key in [k for k in state if k.endswith("relative_position_bias_table")]:
        state[key] = inflate_rel_pos_table(state[key], 1, 2, (4, 4))
    torch.save(state, tmp_path / "video.pth")
    assert import_release(bench, tmp_path / "video.pth", tmp_path / "ours.pt") == 0
    model, saved = model_of(tmp_path / "ours.pt")
    assert saved["config"]["model"]["vision"]["num_frames"] == 2
    assert model.cfg.vision.num_frames == 2


def test_help_explains_the_formats(capsys):
    with pytest.raises(SystemExit):
        main(["import-checkpoint", "--help"])
    text = capsys.readouterr().out
    assert "text_encoder.bert.*" in text and "restricted unpickler" in text
