"""Checkpoints of the authors' release (and of Singularity) read safely, as svitt state dicts.

    read_release_checkpoint(path) -> (release state dict, its config as plain data or None)
    release_to_svitt(state, model) -> (our state dict, our keys left at their initialisation)

What such a file is: `torch.save({"model": state_dict, "optimizer", "scheduler", "scaler",
"config": <OmegaConf DictConfig>, "epoch", "global_step"})`, or a bare state dict. Torch's
own `weights_only=True` loader stops on the DictConfig, and `weights_only=False` would run any
code the pickle names. So the zip archive is read here with an unpickler that builds only
tensors and plain containers: every other global is refused, except OmegaConf's classes
(and the `typing` names their metadata refers to), which are never imported or called: they
come back as inert records and the config is turned into plain dicts and lists.

Key names (docs/model.md, "Importing a release checkpoint"): `vision_encoder.*` is a HF BEiT
with a 3D relative bias table (hub names, query/key/value with no key bias, `lambda_1/2` the
layer scale), `vision_encoder.pooler.layernorm` the mean-pooling norm and `vision_layernorm`
the token norm before f_m; `text_encoder.bert.*` + `text_encoder.cls.predictions.*` in
pre-training checkpoints, `text_encoder.*` (no MLM head) in fine-tuned retrieval ones;
`vision_proj`, `text_proj`, `itm_head` ([2, d]) and `temp`. Index buffers
(`relative_position_index`, `position_ids`, `token_type_ids`) and BEiT's unused `mask_token`
are dropped; any other key without a place in the model is an error naming it.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from svitt.config import ConfigError
from svitt.errors import MissingFileError, UserError
from svitt.models.inflate import CLS_ROWS
from svitt.models.svitt import SViTT
from svitt.models.weights import hf_beit_to_timm

RELEASE_LAYER_NORM_EPS = 1e-12  # every BEiT and BERT LayerNorm of the release
_DROPPED = re.compile(r"(relative_position_index|position_ids|token_type_ids|mask_token)$")
# BERT ties the MLM output projection to the word embeddings and its bias to `bias`.
_TIED = {
    "text.mlm_head.predictions.decoder.weight": "text.embeddings.word_embeddings.weight",
    "text.mlm_head.predictions.decoder.bias": "text.mlm_head.predictions.bias",
}

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("_codecs", "encode"): codecs.encode,  # how pickle protocol 2 stores bytes
    **{
        ("builtins", name): getattr(builtins, name)
        for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bool")
    },
}


class CheckpointFormatError(UserError, ValueError):
    """The file is not a release checkpoint this model can take; the message says why."""


class _Inert:
    """Stand-in for an OmegaConf object (or a `typing` name): records what the pickle gives
    it and does nothing else."""

    qualname = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds tensors and plain containers only (see the module docstring)."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, torch.storage.TypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins"}.get(module, module)  # Python 2 names, protocol 2
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module.split(".")[0] in ("omegaconf", "typing"):
            return type(name, (_Inert,), {"qualname": f"{module}.{name}"})
        raise CheckpointFormatError(
            f"{self.path}: refusing to load the pickled global {module}.{name} (only tensors, "
            "plain containers and OmegaConf configs are read; nothing in the file is executed)"
        )

    def persistent_load(self, pid: Any) -> torch.storage.TypedStorage:
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{self.path}: unknown persistent record {kind!r}")
        if key not in self.storages:
            data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            untyped = (
                torch.UntypedStorage.from_buffer(data, dtype=torch.uint8)
                if data
                else torch.UntypedStorage(0)
            )
            self.storages[key] = torch.storage.TypedStorage(
                wrap_storage=untyped, dtype=storage_type.dtype, _internal=True
            )
        return self.storages[key]


def _plain(value: Any) -> Any:
    """An unpickled OmegaConf config (inert records) as plain dicts, lists and scalars."""
    if isinstance(value, _Inert):
        state = value.state if isinstance(value.state, dict) else {}
        for field in ("_content", "_val"):  # DictConfig / ListConfig, then value nodes
            if field in state:
                return _plain(state[field])
        return value.qualname
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _unpickle(path: Path) -> Any:
    if not zipfile.is_zipfile(path):
        raise CheckpointFormatError(
            f"{path}: not a torch zip checkpoint (the format of torch.save since torch 1.6)"
        )
    with zipfile.ZipFile(path) as archive:
        records = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
        if len(records) != 1:
            raise CheckpointFormatError(f"{path}: expected one data.pkl in the archive")
        prefix = records[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist():
            order = archive.read(f"{prefix}byteorder").decode()
            if order != "little":
                raise CheckpointFormatError(f"{path}: {order}-endian tensors are not read")
        return _RestrictedUnpickler(archive.read(records[0]), archive, prefix, path).load()


def read_release_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], Any]:
    """The state dict of a release/Singularity checkpoint and its config as plain data
    (None for a bare state dict), read without executing anything from the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    content = _unpickle(path)
    config = None
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        content, config = content["model"], _plain(content.get("config"))
    if not isinstance(content, dict) or not all(isinstance(v, Tensor) for v in content.values()):
        raise CheckpointFormatError(
            f"{path}: neither a state dict nor a dict with one under 'model'"
        )
    return dict(content), config


def _rename(key: str) -> str | None:
    """Our name for a release key outside the vision encoder; None: no place for it."""
    renames = [
        (r"^vision_layernorm\.", "vision.norm."),
        (r"^(vision_proj|text_proj)\.(weight|bias)$", r"\1.\2"),
        (r"^itm_head\.(weight|bias)$", r"vtm_head.\1"),
        (r"^temp$", "temp"),
        (r"^text_encoder\.(?:bert\.)?embeddings\.", "text.embeddings."),
        (r"^text_encoder\.(?:bert\.)?encoder\.layer\.(\d+)\.", r"text.layers.\1."),
        (r"^text_encoder\.cls\.predictions\.", "text.mlm_head.predictions."),
    ]
    for pattern, repl in renames:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def source_frames(state: dict[str, Tensor], model: SViTT) -> int:
    """Clip length of the release's vision encoder, read off its 3D relative bias table."""
    _, h, w = model.vision.cfg.grid
    spatial = (2 * h - 1) * (2 * w - 1)
    for key, table in state.items():
        if key.endswith("relative_position_bias_table"):
            rows = table.shape[0] - CLS_ROWS
            if rows % spatial or (rows // spatial) % 2 == 0:
                raise CheckpointFormatError(
                    f"{key}: {table.shape[0]} rows fit no clip length of a {h}x{w} grid "
                    "(model.vision.image_size / patch_size)"
                )
            return (rows // spatial + 1) // 2
    return model.vision.cfg.num_frames  # no relative bias: nothing depends on it


def check_release_options(state: dict[str, Tensor], model: SViTT) -> None:
    """The model options without which a release checkpoint loads but computes another
    function: one line naming the key and the value to set."""
    cfg = model.cfg
    needed = [
        ("vision.pool", cfg.vision.pool, "mean", "vision_encoder.pooler.layernorm.weight"),
        ("vtm_head", cfg.vtm_head, "two_way", "itm_head.weight"),
        ("vision.layer_norm_eps", cfg.vision.layer_norm_eps, RELEASE_LAYER_NORM_EPS, None),
        ("text.layer_norm_eps", cfg.text.layer_norm_eps, RELEASE_LAYER_NORM_EPS, None),
    ]
    for key, ours, release, evidence in needed:
        if ours != release and (evidence is None or evidence in state):
            raise ConfigError(
                f"model.{key}: got {ours!r}; a release checkpoint needs {release!r} "
                f"(the release's value{f', see {evidence}' if evidence else ''}); "
                f"set model.{key}: {release}"
            )


def release_to_svitt(state: dict[str, Tensor], model: SViTT) -> tuple[dict[str, Tensor], list[str]]:
    """Map every release key to `model`'s names and check the result against `model`.

    Returns our state dict and the keys it leaves at `model`'s initialisation: only the MLM
    head of a fine-tuned checkpoint, which has none. Anything else missing or left over raises
    CheckpointFormatError naming the keys; shapes are checked when the result is loaded
    (`svitt.models.checkpoints.load_strict`).
    """
    check_release_options(state, model)
    state = {k: v for k, v in state.items() if not _DROPPED.search(k)}
    vision = hf_beit_to_timm(
        {k.removeprefix("vision_encoder."): v for k, v in state.items()
         if k.startswith("vision_encoder.")}
    )  # fmt: skip
    ours = {f"vision.{k}": v for k, v in vision.items()}
    unmapped = []
    for key, value in state.items():
        if key.startswith("vision_encoder."):
            continue
        name = _rename(key)
        if name is None:
            unmapped.append(key)
        elif name not in _TIED:
            ours[name] = value
    target = model.state_dict()
    positions = "text.embeddings.position_embeddings.weight"
    if positions in ours and positions in target:  # BERT's 512 rows: cut to max_positions
        ours[positions] = ours[positions][: target[positions].shape[0]]
    unmapped += [k for k in ours if k not in target]
    if unmapped:
        raise CheckpointFormatError(
            f"{len(unmapped)} checkpoint keys have no place in the model: "
            f"{', '.join(sorted(unmapped)[:6])}{' ...' if len(unmapped) > 6 else ''} "
            "(check model.arch, text.depth / cross_depth, vision.depth)"
        )
    for tied, source in _TIED.items():
        if tied in target and source in ours:
            ours[tied] = ours[source]
    fine_tuned = not any(k.startswith("text_encoder.cls.") for k in state)
    initialised = [
        k for k in target if k not in ours and fine_tuned and k.startswith("text.mlm_head.")
    ]
    missing = [k for k in target if k not in ours and k not in initialised]
    if missing:
        raise CheckpointFormatError(
            f"the checkpoint lacks {len(missing)} weights of the model: "
            f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
        )
    ours.update({k: target[k] for k in initialised})
    return {k: ours[k].to(target[k].dtype) for k in target}, initialised
