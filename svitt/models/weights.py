"""Load image BEiT (timm, HF) and ViT (timm) checkpoints from local files into the encoder.

Like timm's `checkpoint_filter_fn`: rename the format's keys to ours (timm BEiT names), drop
buffers and classifier heads, resize the spatial grid of the bias tables / absolute embedding
to this model's, inflate 2D -> 3D (`inflate.py`), then load strictly. Any key or shape that
still disagrees is an error naming the file and the first such key. A HF directory's
`config.json` is checked against the model config first (LayerNorm eps and sizes), since a
wrong eps loads silently and shifts every output. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from svitt.config import ConfigError, VisionConfig
from svitt.errors import MissingFileError, UserError
from svitt.files import torch_load
from svitt.models.inflate import CLS_ROWS, inflate_state_dict
from svitt.models.vision import VisionTransformer

WeightsFormat = Literal["beit_timm", "beit_hf", "vit_timm"]
FORMATS: tuple[str, ...] = ("beit_timm", "beit_hf", "vit_timm")

# Keys that carry nothing for the encoder: index buffers, masked-image-modelling and heads.
_DROP = re.compile(r"(relative_position_index|mask_token|^head\.|^lm_head|^classifier|^pooler\.)")

# HF BEiT, both the hub's legacy names (beit.encoder.layer.N.attention.attention.query...) and
# transformers 5 names (layers.N.attention.q_proj...), to timm's BEiT names. Applied in order.
_HF_RENAMES = [
    (r"^beit\.", ""),
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.", r"blocks.\1."),
    (
        r"^(?:encoder\.relative_position_bias|shared_position_bias)\.relative_position_bias_table$",
        "shared_relative_position_bias_table",
    ),
    (r"\.attention\.attention\.relative_position_bias\.", ".relative_position_bias."),
    (
        r"\.relative_position_bias\.relative_position_bias_table$",
        ".attn.relative_position_bias_table",
    ),
    (r"\.attention\.attention\.(query|key|value)\.", r".attn.\1."),
    (r"\.attention\.(q|k|v)_proj\.", r".attn.\1."),
    (r"\.attention\.(?:output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.lambda_(\d)$", r".gamma_\1"),
    (r"^layernorm\.", "norm."),
    (r"^pooler\.layernorm\.", "fc_norm."),
]
_QKV = {"query": "q", "key": "k", "value": "v", "q": "q", "k": "k", "v": "v"}


class WeightsError(UserError, ValueError):
    """A weights file does not fit the model or is not a checkpoint; the message names it."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file or HF directory (safetensors or torch pickle, weights only)."""
    path = Path(path)
    if path.is_dir():
        found = [
            path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()
        ]
        if not found:
            raise MissingFileError(
                f"vision weights: {path} holds neither model.safetensors nor pytorch_model.bin"
            )
        path = found[0]
    if not path.is_file():
        raise MissingFileError(f"vision weights: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch_load(path, "torch checkpoint")
    if not isinstance(state, dict):
        raise WeightsError(f"vision weights: {path} holds a {type(state).__name__}, not weights")
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state


def check_hf_beit_config(path: Path, cfg: VisionConfig) -> None:
    """A HF BEiT directory's config.json against `cfg`: one line naming both values and the key."""
    config = json.loads((path / "config.json").read_text())
    mlp = config.get("intermediate_size")
    theirs_by_field = {
        "layer_norm_eps": config.get("layer_norm_eps"),
        "dim": config.get("hidden_size"),
        "depth": config.get("num_hidden_layers"),
        "heads": config.get("num_attention_heads"),
        "mlp_ratio": None if mlp is None else mlp / config.get("hidden_size", cfg.dim),
        "patch_size": config.get("patch_size"),
    }
    for field, theirs in theirs_by_field.items():
        ours = getattr(cfg, field)
        if theirs is not None and theirs != ours:
            raise ConfigError(
                f"model.vision.{field}: got {ours}; the BEiT checkpoint at {path} has {theirs} "
                f"(config.json); set model.vision.{field}: {theirs}"
            )


def hf_beit_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        for pattern, repl in _HF_RENAMES:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in renamed.items():
        match = re.fullmatch(r"(blocks\.\d+\.attn)\.(query|key|value|q|k|v)\.(weight|bias)", key)
        if match is None:
            out[key] = value
            continue
        prefix, part, kind = match.groups()
        if kind == "bias":  # BEiT has no key bias; a zero one may be stored
            if _QKV[part] != "k":
                out[f"{prefix}.{_QKV[part]}_bias"] = value
        else:
            qkv.setdefault(prefix, {})[_QKV[part]] = value
    for prefix, parts in qkv.items():
        out[f"{prefix}.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    shared = out.pop("shared_relative_position_bias_table", None)
    if shared is not None:  # one table for all layers: every layer starts from a copy
        for prefix in {k.rsplit(".attn.", 1)[0] for k in out if ".attn." in k}:
            out[f"{prefix}.attn.relative_position_bias_table"] = shared.clone()
    return out


def _from_timm_vit(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(".attn.qkv.bias"):
            # A key bias adds q.b_k to every logit of a query row: softmax ignores it, so
            # dropping it is exact.
            q_bias, _, v_bias = value.chunk(3)
            out[key.replace("qkv.bias", "q_bias")] = q_bias
            out[key.replace("qkv.bias", "v_bias")] = v_bias
            continue
        key = re.sub(r"\.ls(\d)\.gamma$", r".gamma_\1", key)
        out[key] = value
    return out


def _side(count: int, what: str, path: Path) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise WeightsError(f"{path}: {what} of {count} entries is not a square grid")
    return side


def _resize_rel_table(table: Tensor, src: int, dst: tuple[int, int]) -> Tensor:
    """Bicubic resize of the (2h-1, 2w-1) offset grid of a 2D table; [CLS] rows kept."""
    if (src, src) == dst:
        return table
    heads = table.shape[1]
    grid = table[:-CLS_ROWS].T.reshape(1, heads, 2 * src - 1, 2 * src - 1)
    size = (2 * dst[0] - 1, 2 * dst[1] - 1)
    grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)
    return torch.cat([grid.reshape(heads, -1).T, table[-CLS_ROWS:]])


def _fit_to_model(
    state: dict[str, Tensor], model: VisionTransformer, path: Path
) -> dict[str, Tensor]:
    """Drop unused keys, place the pooling norm, resize and inflate."""
    state = {k: v for k, v in state.items() if not _DROP.search(k)}
    if model.cfg.pool == "mean":
        # The token norm before f_m is the release's `vision_layernorm`, which no image
        # checkpoint holds: without one it keeps its initialisation, as in the release.
        for key, value in model.norm.state_dict().items():
            state.setdefault(f"norm.{key}", value)
    else:
        fc_norm = {k[3:]: state.pop(k) for k in list(state) if k.startswith("fc_norm.")}
        # Mean-pooling checkpoints (BEiT ft22k) normalise through fc_norm; norm is an identity.
        if "norm.weight" not in state:
            state.update(fc_norm)
    frames, h, w = model.cfg.grid
    for key, value in state.items():
        if key.endswith("relative_position_bias_table"):
            src = (_side(value.shape[0] - CLS_ROWS, key, path) + 1) // 2
            state[key] = _resize_rel_table(value, src, (h, w))
        elif key == "pos_embed":
            # timm only here: importing it at module level costs every job seconds
            from timm.layers import resample_abs_pos_embed

            src = _side(value.shape[1] - 1, key, path)
            state[key] = resample_abs_pos_embed(value, new_size=[h, w], old_size=[src, src])
    return inflate_state_dict(state, 1, frames, (h, w))


def load_vision_weights(model: VisionTransformer, path: str | Path, fmt: WeightsFormat) -> None:
    """Load an image checkpoint of format `fmt` (see FORMATS) from `path` into `model`."""
    if fmt not in FORMATS:
        raise WeightsError(f"vision weights format {fmt!r}; allowed: {', '.join(FORMATS)}")
    path = Path(path)
    if fmt == "beit_hf" and (path / "config.json").is_file():
        check_hf_beit_config(path, model.cfg)
    state = read_state_dict(path)
    if fmt == "beit_hf":
        state = hf_beit_to_timm(state)
    elif fmt == "vit_timm":
        state = _from_timm_vit(state)
    state = _fit_to_model(state, model, path)
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    if missing:
        raise WeightsError(
            f"{path} ({fmt}): no weights for {missing[0]!r} ({len(missing)} keys missing); "
            f"check vision.rel_pos_bias / abs_pos_emb / layer_scale_init / depth / pool"
        )
    unexpected = [k for k in state if k not in target]
    if unexpected:
        raise WeightsError(
            f"{path} ({fmt}): key {unexpected[0]!r} has no place in the encoder "
            f"({len(unexpected)} unexpected keys); check the format and the model config"
        )
    for key, value in state.items():
        if value.shape != target[key].shape:
            raise WeightsError(
                f"{path} ({fmt}): {key!r} has shape {list(value.shape)}, the encoder expects "
                f"{list(target[key].shape)}"
            )
    model.load_state_dict(state)
