"""Run configuration: typed dataclasses, strict loading, value checks.

A run config is plain data (YAML/JSON/dict). `load_config` turns it into a `RunConfig`, rejecting
any unknown key with its dotted path and the allowed keys, and any bad value with the allowed
range, before any work starts. `asdict(cfg)` gives the plain data back (stored in checkpoints
and logged to MLflow), so a config round-trips exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml

from svitt.errors import MissingFileError, UserError
from svitt.models.archs import ARCH_NAMES, ARCHS

if TYPE_CHECKING:
    from svitt.data.tokenizer import TextTokenizer

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config key or value is invalid; the message names the key and what is allowed."""


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: got {value!r}; allowed: {allowed}")


def _check_rate(key: str, value: float) -> None:
    _check(0.0 < value <= 1.0, key, "a keep rate in (0, 1]", value)


@dataclass(frozen=True)
class VisionConfig:
    """Space-time ViT/BEiT encoder shape (BEiT-B/16 by default)."""

    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 4
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    rel_pos_bias: bool = True  # BEiT: relative bias in every layer
    abs_pos_emb: bool = False  # ViT / Frozen-in-Time: learned absolute embedding
    layer_scale_init: float | None = 0.1  # BEiT's gamma_1/gamma_2; None disables
    # Stochastic depth rate of the last layer, rising linearly from 0 at the first (timm's and
    # HF's BEiT); the release trains with 0.1.
    drop_path: float = 0.0
    # What VTC projects: "cls", the [CLS] token after the final norm (the supplement's text);
    # "mean", BEiT's mean pooling as in the release: a LayerNorm (`fc_norm`) over the mean of
    # the patch tokens, while `norm` becomes the separate token norm before f_m (the release's
    # `vision_layernorm`).
    pool: Literal["cls", "mean"] = "cls"
    # BEiT's and timm's 1e-6; HF BEiT configs (and so the release) use 1e-12.
    layer_norm_eps: float = 1e-6
    # Std of the (truncated) normal initialisation of the linear weights of layers trained from
    # scratch. BEiT's 0.02 suits 768-wide layers; a narrow model (the synthetic profile's 96)
    # starts with nearly silent residual branches at 0.02 and learns far more slowly.
    init_std: float = 0.02
    # Std of the absolute position embedding at initialisation (with abs_pos_emb). ViT's 0.02
    # is ~1% of a patch embedding of this model: from scratch, the model stays blind to frame
    # order for its whole budget (docs/workflow.md, "Temporal learning").
    pos_init_std: float = 0.02

    def __post_init__(self) -> None:
        _check(0.0 <= self.drop_path < 1.0, "drop_path", "a rate in [0, 1)", self.drop_path)
        _check(self.layer_norm_eps > 0, "layer_norm_eps", "a positive number", self.layer_norm_eps)
        _check(self.init_std > 0, "init_std", "a positive number", self.init_std)
        _check(self.pos_init_std > 0, "pos_init_std", "a positive number", self.pos_init_std)
        _check(
            self.image_size % self.patch_size == 0,
            "image_size",
            f"a multiple of patch_size={self.patch_size}",
            self.image_size,
        )
        _check(self.num_frames >= 1, "num_frames", "an integer >= 1", self.num_frames)
        _check(self.dim % self.heads == 0, "dim", f"a multiple of heads={self.heads}", self.dim)

    @property
    def grid(self) -> tuple[int, int, int]:
        side = self.image_size // self.patch_size
        return (self.num_frames, side, side)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w


@dataclass(frozen=True)
class TextConfig:
    """BERT text encoder; the last `cross_depth` of `depth` layers are multimodal (f_m)."""

    vocab_size: int = 30522
    dim: int = 768
    depth: int = 12
    cross_depth: int = 3
    heads: int = 12
    mlp_dim: int = 3072
    max_positions: int = 512
    # Special token ids; the engine sets them (and vocab_size) from the run's tokenizer.
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    init_std: float = 0.02  # BERT's initializer_range, for layers trained from scratch
    layer_norm_eps: float = 1e-12  # BERT's

    def __post_init__(self) -> None:
        _check(self.init_std > 0, "init_std", "a positive number", self.init_std)
        _check(self.layer_norm_eps > 0, "layer_norm_eps", "a positive number", self.layer_norm_eps)
        _check(
            0 <= self.cross_depth <= self.depth,
            "cross_depth",
            f"an integer in [0, depth={self.depth}]",
            self.cross_depth,
        )
        _check(self.dim % self.heads == 0, "dim", f"a multiple of heads={self.heads}", self.dim)
        for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
            value = getattr(self, name)
            _check(
                0 <= value < self.vocab_size,
                name,
                f"a token id in [0, vocab_size={self.vocab_size})",
                value,
            )


# Name lists spelled here alone: the token orders of svitt/models/order.py, the frame orders of
# svitt/data/video.py and the attention kinds; the models, the data pipeline and the planner
# (variants, probes, sparsity rows) read them.
TokenOrder = Literal["raster", "morton", "hilbert"]
TOKEN_ORDERS: tuple[TokenOrder, ...] = typing.get_args(TokenOrder)
FrameOrder = Literal["normal", "reverse", "shuffle"]
FRAME_ORDERS: tuple[FrameOrder, ...] = typing.get_args(FrameOrder)
Attention = Literal["dense", "sparse"]  # `sparse`: block-sparse, supplement A.1
ATTENTIONS: tuple[Attention, ...] = typing.get_args(Attention)


@dataclass(frozen=True)
class SparsityConfig:
    """Edge sparsity (block attention) and node sparsity (token pruning); supplement A.1."""

    attention: Attention = "dense"
    block_size: int = 56  # G
    local_blocks: int = 1  # K_l, odd: a centred window
    random_blocks: int = 3  # K_r
    visual_keep_rate: float = 1.0  # q_v
    visual_drop_layers: tuple[int, ...] = (3, 6, 9)  # prune after these layers (0-indexed)
    keep_strategy: Literal["cls", "random"] = "cls"
    token_order: TokenOrder = "raster"
    cross_keep_rate: float = 1.0  # q_m
    cross_drop_layers: tuple[int, ...] = (1,)  # multimodal layer indices (0-indexed)
    pattern_seed: int = 0  # random blocks / random keep at evaluation: fixed by this seed

    def __post_init__(self) -> None:
        _check(self.block_size >= 1, "block_size", "an integer >= 1", self.block_size)
        _check(
            self.local_blocks >= 1 and self.local_blocks % 2 == 1,
            "local_blocks",
            "an odd integer >= 1 (a centred window)",
            self.local_blocks,
        )
        _check(self.random_blocks >= 0, "random_blocks", "an integer >= 0", self.random_blocks)
        _check_rate("visual_keep_rate", self.visual_keep_rate)
        _check_rate("cross_keep_rate", self.cross_keep_rate)

    def num_blocks(self, num_tokens: int) -> int:
        """Blocks of the non-[CLS] sequence, the last one possibly padded."""
        return math.ceil(num_tokens / self.block_size)

    def check_fits(self, num_tokens: int) -> None:
        """Local + random blocks must exist in a sequence of `num_tokens` non-[CLS] tokens."""
        if self.attention != "sparse":
            return
        n = self.num_blocks(num_tokens)
        _check(
            self.local_blocks <= n,
            "sparsity.local_blocks",
            f"at most the {n} blocks of {num_tokens} tokens with block_size {self.block_size}",
            self.local_blocks,
        )
        _check(
            self.local_blocks + self.random_blocks <= n,
            "sparsity.random_blocks",
            f"at most {n - self.local_blocks} (the {n} blocks minus the "
            f"{self.local_blocks} local ones)",
            self.random_blocks,
        )


@dataclass(frozen=True)
class WeightsConfig:
    """Local pretrained weights; nothing is ever downloaded."""

    vision: str | None = None
    vision_format: Literal["beit_timm", "beit_hf", "vit_timm"] = "beit_timm"
    text: str | None = None  # a HF directory in bert-base-uncased layout


# The schema type of `model.arch`: the names of svitt.models.archs.ARCHS.
Arch = Literal[ARCH_NAMES]


@dataclass(frozen=True)
class ModelConfig:
    arch: Arch = "svitt"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    embed_dim: int = 256  # joint video-text space of VTC
    temperature: float = 0.07
    mlm_probability: float = 0.5
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"vtc": 1.0, "vtm": 1.0, "mlm": 1.0}
    )
    qa_decoder_depth: int = 3
    # The "twin" loss (data.reversal_negatives): a clip and its time reversal, and their two
    # captions, are pushed below this cosine similarity.
    twin_margin: float = 0.5
    # The VTM head: "binary", Linear(d, 1) + binary cross-entropy (the supplement's Eq. 14);
    # "two_way", Linear(d, 2) + cross-entropy over (no match, match), the release's ITM head.
    vtm_head: Literal["binary", "two_way"] = "binary"

    def __post_init__(self) -> None:
        allowed = {"vtc", "vtm", "mlm", "twin"}
        for key in self.loss_weights:
            _check(key in allowed, f"loss_weights.{key}", f"one of {sorted(allowed)}", key)
        _check(
            0.0 < self.mlm_probability < 1.0,
            "mlm_probability",
            "a value in (0, 1)",
            self.mlm_probability,
        )
        _check(
            -1.0 <= self.twin_margin < 1.0, "twin_margin", "a value in [-1, 1)", self.twin_margin
        )
        _check(
            0.001 <= self.temperature <= 0.5,
            "temperature",
            "a value in [0.001, 0.5]",
            self.temperature,
        )
        self.sparsity.check_fits(self.vision.num_patches)

    @property
    def frame_level(self) -> bool:
        return ARCHS[self.arch].frame_level


@dataclass(frozen=True)
class DataConfig:
    root: str = "data"  # datasets resolve under this directory (see svitt.data.annotations)
    tokenizer: str = "data/tokenizer"  # HF tokenizer directory
    train: tuple[str, ...] = ("webvid",)  # dataset names for pre-training
    dataset: str | None = None  # the downstream dataset of a fine-tuning / evaluation stage
    text_max_len: int = 32
    answer_max_len: int = 5
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    num_workers: int = 2
    allow_bad_videos_at_eval: bool = False  # if true, bad files are dropped and listed
    # Training crop area as a share of the frame (RandomResizedCrop); (1, 1): the whole frame.
    crop_scale: tuple[float, float] = (0.5, 1.0)
    # Put each order-dependent training pair's time-reversed twin (frames reversed, caption
    # from the annotation's "reversed_caption") in the same batch as a hard negative.
    reversal_negatives: bool = False

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        _check(
            0.0 < low <= high <= 1.0,
            "crop_scale",
            "[low, high] with 0 < low <= high <= 1",
            list(self.crop_scale),
        )


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-5
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 10
    warmup_epochs: float = 1.0
    batch_size: int = 64
    grad_clip: float | None = None
    grad_accum: int = 1
    checkpoint_every: int = 200  # optimizer steps between resumable checkpoints
    # The cosine schedule ends at lr * min_lr_ratio (the release: 0.01 in pre-training, 0.1
    # downstream); 0 decays to zero.
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", "a value > 0", self.lr)
        _check(
            0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "a value in [0, 1]", self.min_lr_ratio
        )
        _check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        _check(self.grad_accum >= 1, "grad_accum", "an integer >= 1", self.grad_accum)
        _check(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)


ClipEnsemble = Literal["lse", "mean"]
Rerank = Literal["sigmoid_plus_cosine", "itm_logit"]


# R@k of every retrieval evaluation, and the ks whose mean is its mean recall.
RECALL_KS = (1, 5, 10)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings and the ablation overrides (frame order, keep rate, ...)."""

    batch_size: int = 32
    k_test: int = 128  # candidates re-scored by VTM
    # Score of a re-scored candidate: sigmoid(VTM logit) + VTC cosine, or the match logit
    # alone (the release). docs/engine.md, "Retrieval evaluation".
    rerank: Rerank = "sigmoid_plus_cosine"
    # Test clips per video: num_clips * T middle-of-chunk frames cut into num_clips consecutive
    # clips of T frames (the release's num_frames_test = 3T); their scores are combined.
    num_clips: int = 1
    clip_ensemble: ClipEnsemble = "lse"  # how VTM / QA scores of the clips combine
    frame_order: FrameOrder = "normal"
    visual_keep_rate: float | None = None  # overrides sparsity.visual_keep_rate (Figure A1)
    token_order: TokenOrder | None = None
    num_frames: int | None = None
    answer_top_k: int = 128  # QA: candidates kept by first-token score before re-ranking

    def __post_init__(self) -> None:
        if self.visual_keep_rate is not None:
            _check_rate("visual_keep_rate", self.visual_keep_rate)
        _check(self.k_test >= 1, "k_test", "an integer >= 1", self.k_test)
        _check(self.num_clips >= 1, "num_clips", "an integer >= 1", self.num_clips)


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db
    experiment: str = "svitt"


@dataclass(frozen=True)
class RunConfig:
    """Everything one stage (pretrain, retrieval, QA) needs."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tags: dict[str, str] = field(default_factory=dict)  # free-form, logged to MLflow


def _build(tp: Any, value: Any, key: str) -> Any:
    """Convert plain data to the annotated type `tp`, checking it on the way."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        _check(isinstance(value, Mapping), key or "config", "a mapping", value)
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, key)
    if origin is Literal:
        _check(value in args, key, f"one of {list(args)}", value)
        return value
    if origin is tuple:
        _check(isinstance(value, list | tuple), key, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        _check(len(value) == len(args), key, f"a list of {len(args)} values", value)
        return tuple(
            _build(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        _check(isinstance(value, Mapping), key, "a mapping", value)
        return {str(k): _build(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot) as a string; accept any float literal.
            with contextlib.suppress(ValueError):
                value = float(value)
        _check(
            isinstance(value, int | float) and not isinstance(value, bool), key, "a number", value
        )
        return float(value)
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, "true or false", value)
        return value
    if tp is str:
        _check(isinstance(value, str), key, "a string", value)
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys fail naming the key and allowed keys."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown config key {where!r}; allowed keys: {', '.join(names)}")
    kwargs = {
        name: _build(hints[name], data[name], f"{prefix}.{name}" if prefix else name)
        for name in names
        if name in data
    }
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if not prefix:
            raise
        raise ConfigError(f"{prefix}.{err}") from None


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge, everything else in `override` replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(source: str | Path | Mapping[str, Any], *overrides: Mapping[str, Any]) -> RunConfig:
    """Load a RunConfig from a YAML/JSON file or a mapping, applying `overrides` in order."""
    if isinstance(source, Mapping):
        data: Mapping[str, Any] = source
    else:
        path = Path(source)
        if not path.is_file():
            raise MissingFileError(f"config file not found: {path}")
        data = _yaml(path.read_text(), str(path)) or {}
        _check(isinstance(data, Mapping), str(path), "a YAML mapping at top level", type(data))
    for override in overrides:
        data = merge(data, override)
    return from_dict(RunConfig, data)


def _yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{source}: not valid YAML ({problem}{where})") from None


def asdict(cfg: Any) -> dict[str, Any]:
    """Plain data (lists, dicts, scalars) for YAML, torch.save(weights_only) and MLflow."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """`"frame_order=shuffle"` -> `{"eval": {"frame_order": "shuffle"}}` (YAML value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key")
    key, raw = text.split("=", 1)
    value: Any = _yaml(raw, f"override {text!r}")
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def with_tokenizer(cfg: RunConfig, tokenizer: TextTokenizer) -> RunConfig:
    """Vocabulary size and special token ids come from the run's tokenizer, not the config."""
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "mask_token_id": tokenizer.mask_token_id,
    }
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ConfigError(
            f"data.tokenizer: {cfg.data.tokenizer} defines no {', '.join(missing)}; allowed: "
            "a BERT-style tokenizer with [PAD], [CLS], [SEP] and [MASK]"
        )
    text = dataclasses.replace(cfg.model.text, vocab_size=len(tokenizer), **ids)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, text=text))


def eval_model_config(cfg: RunConfig) -> tuple[ModelConfig, dict[str, Any]]:
    """The model to evaluate with the eval overrides applied, and the overrides used.

    Overrides change the model's config (keep rate, token order, clip length); the weights
    are then loaded (and inflated) into that model, so no forward-time flag exists.
    """
    ev, model = cfg.eval, cfg.model
    overrides: dict[str, Any] = {"frame_order": ev.frame_order}
    sparsity, vision = model.sparsity, model.vision
    if ev.visual_keep_rate is not None:
        sparsity = dataclasses.replace(sparsity, visual_keep_rate=ev.visual_keep_rate)
        overrides["visual_keep_rate"] = ev.visual_keep_rate
    if ev.token_order is not None:
        sparsity = dataclasses.replace(sparsity, token_order=ev.token_order)
        overrides["token_order"] = ev.token_order
    if ev.num_frames is not None:
        vision = dataclasses.replace(vision, num_frames=ev.num_frames)
        overrides["num_frames"] = ev.num_frames
    try:
        return dataclasses.replace(model, sparsity=sparsity, vision=vision), overrides
    except ConfigError as err:
        raise ConfigError(f"eval overrides {overrides}: model.{err}") from None
