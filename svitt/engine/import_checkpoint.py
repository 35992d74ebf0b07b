"""`svitt import-checkpoint SRC --format release --config RUN_CONFIG --out DST`.

Turns a checkpoint of the authors' release (or of Singularity) into a normal svitt checkpoint:
the release's file is read without executing anything in it (`svitt.models.release`), every
key is mapped, the model is built from RUN_CONFIG's model section (sizes and options: the
release's files do not record them) at the clip length of the release's relative bias table,
the weights are loaded strictly, and DST gets `{"model", "config", "stage", "imported"}` like
a finished stage's checkpoint.pt, so `--init-from DST` (with inflation to another clip length)
works in every stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from svitt.config import WeightsConfig, asdict, load_config, with_tokenizer
from svitt.engine.checkpoint import save_checkpoint, seed_everything

log = logging.getLogger(__name__)

FORMATS_HELP = """\
formats:
  release   a checkpoint of the SViTT release or of Singularity: torch.save of
            {"model": state_dict, "config": <OmegaConf DictConfig>, "optimizer", ...}
            or a bare state dict. Pre-training layout (text_encoder.bert.*,
            text_encoder.cls.predictions.*) or fine-tuned retrieval layout
            (text_encoder.embeddings.*, text_encoder.encoder.*, no MLM head: the MLM head
            of DST then keeps a fresh initialisation, listed in DST's "imported" entry).
            Read by a restricted unpickler: tensors and plain containers only, the OmegaConf
            config as plain data, any other pickled class refused; nothing is executed.

The run config must match the release's model: model.vision.pool: mean,
model.vision.layer_norm_eps and model.text.layer_norm_eps: 1.0e-12, model.vtm_head: two_way
(the paper profile sets them), and the release's sizes (BEiT-B/16, BERT-base with 3
multimodal layers); the vocabulary size comes from data.tokenizer, as in every stage. The
clip length is read off the checkpoint's relative bias table and recorded in DST, so
`--init-from DST` inflates it to the run's clip length.
"""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = FORMATS_HELP
    parser.add_argument("src", metavar="SRC", type=Path, help="the checkpoint to import")
    parser.add_argument(
        "--format", required=True, choices=["release"], help="the layout of SRC (see below)"
    )
    parser.add_argument(
        "--config",
        required=True,
        type=Path,
        metavar="RUN_CONFIG",
        help="run config whose model section fits SRC",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DST", help="the svitt checkpoint to write"
    )


def run(args: argparse.Namespace) -> int:
    import_release(args)
    return 0


def import_release(args: argparse.Namespace) -> None:
    from svitt.data.tokenizer import TextTokenizer
    from svitt.models.checkpoints import load_strict
    from svitt.models.factory import ARCHS
    from svitt.models.release import (
        CheckpointFormatError,
        read_release_checkpoint,
        release_to_svitt,
        source_frames,
    )

    cfg = load_config(args.config)
    cfg = with_tokenizer(cfg, TextTokenizer.from_dir(cfg.data.tokenizer))
    # The weights come from SRC: no local BEiT/BERT files are read.
    model_cfg = dataclasses.replace(cfg.model, weights=WeightsConfig())
    state, release_config = read_release_checkpoint(args.src)
    seed_everything(cfg.seed)  # what a fine-tuned checkpoint's absent MLM head starts from
    try:
        model = ARCHS[model_cfg.arch](model_cfg)
        frames = source_frames(state, model)
        # A frame-level encoder encodes single frames whatever the clip length.
        if not model_cfg.frame_level and frames != model_cfg.vision.num_frames:
            vision = dataclasses.replace(model_cfg.vision, num_frames=frames)
            model_cfg = dataclasses.replace(model_cfg, vision=vision)
            log.info("%s holds a %d-frame model; --init-from inflates it", args.src, frames)
            model = ARCHS[model_cfg.arch](model_cfg)
        weights, initialised = release_to_svitt(state, model)
    except CheckpointFormatError as err:
        raise CheckpointFormatError(f"{args.src}: {err}") from None
    load_strict(model, weights, args.src)
    if initialised:
        log.warning("%s has no MLM head (fine-tuned layout): %d weights keep their "
                    "initialisation", args.src, len(initialised))  # fmt: skip
    run_cfg = dataclasses.replace(cfg, model=model_cfg)
    save_checkpoint(
        args.out,
        {
            "model": model.state_dict(),
            "config": asdict(run_cfg),
            "stage": "import-checkpoint",
            "imported": {
                "source": str(args.src),
                "format": args.format,
                "initialised": initialised,
                "release_config": release_config,
            },
        },
    )
    frames = model_cfg.vision.num_frames
    print(f"svitt import-checkpoint: wrote {args.out} ({model_cfg.arch}, {frames} frames)")
