"""Build models from a `ModelConfig`, load local pretrained weights, named presets.

    create_model(cfg)       the model class of cfg.arch (ARCHS), weights from cfg.weights
    create_qa_model(cfg)    VideoQA on an SViTT or Singularity(-temporal) encoder
    tiny_model_config()     the embedded synthetic default (CPU-sized)
    paper_model_config(T)   BEiT-B/16 + BERT-base, the hybrid-sparse SViTT of Table A1/A4

Nothing is downloaded: `cfg.weights.vision` is a local BEiT/ViT file (see
`svitt.models.weights`), `cfg.weights.text` a local HF BERT directory.
"""

from __future__ import annotations

from svitt.config import ModelConfig, SparsityConfig, TextConfig, VisionConfig
from svitt.models.frozen import Frozen
from svitt.models.qa import VideoQA
from svitt.models.singularity import Singularity, SingularityTemporal
from svitt.models.svitt import SViTT
from svitt.models.text import bert_state_dict, load_text_weights
from svitt.models.weights import load_vision_weights

ARCHS: dict[str, type[SViTT]] = {
    "svitt": SViTT,
    "frozen": Frozen,
    "singularity": Singularity,
    "singularity_temporal": SingularityTemporal,
}

# Table A1: visual keep rate q_v of the hybrid-sparse model per clip length T.
PAPER_VISUAL_KEEP_RATE = {4: 0.7, 8: 0.6, 16: 0.5}


def load_pretrained_weights(model: SViTT, cfg: ModelConfig) -> None:
    """Vision and text weights from `cfg.weights` (each optional)."""
    if cfg.weights.vision is not None:
        load_vision_weights(model.vision, cfg.weights.vision, cfg.weights.vision_format)
    if cfg.weights.text is not None:
        load_text_weights(model.text, cfg.weights.text)


def create_model(cfg: ModelConfig) -> SViTT:
    """The video-text model of `cfg.arch`, with the local weights of `cfg.weights`."""
    model = ARCHS[cfg.arch](cfg)
    load_pretrained_weights(model, cfg)
    return model


def create_qa_model(cfg: ModelConfig) -> VideoQA:
    """VideoQA; with `cfg.weights.text` the decoder starts from the BERT checkpoint's last
    layers and MLM head (a pre-trained video-text checkpoint: `VideoQA.load_pretrained`)."""
    model = VideoQA(cfg)
    load_pretrained_weights(model.encoder, cfg)
    if cfg.weights.text is not None:
        model.init_decoder(bert_state_dict(cfg.weights.text, cfg.text))
    return model


def tiny_model_config(vocab_size: int = 1024) -> ModelConfig:
    """A CPU-sized SViTT for the embedded synthetic benchmark (same code, small shapes).

    32x32 frames in 8x8 patches (16 per frame), 4 frames; block size G = 8 so a 4-frame clip
    has 8 blocks and (K_l, K_r) = (1, 3) still skips half of them. Dense and unpruned: the
    sparse variants set `sparsity` per run. The engine replaces `text.vocab_size` and the
    special token ids with those of the run's tokenizer.
    """
    return ModelConfig(
        vision=VisionConfig(
            image_size=32, patch_size=8, num_frames=4, dim=96, depth=4, heads=4, mlp_ratio=4.0
        ),
        text=TextConfig(
            vocab_size=vocab_size,
            dim=96,
            depth=4,
            cross_depth=2,
            heads=4,
            mlp_dim=384,
            max_positions=64,
            pad_token_id=0,
            cls_token_id=1,
            sep_token_id=2,
            mask_token_id=3,
        ),
        sparsity=SparsityConfig(block_size=8, visual_drop_layers=(0, 1, 2), cross_drop_layers=(0,)),
        embed_dim=64,
        qa_decoder_depth=2,
    )


def paper_model_config(num_frames: int = 4) -> ModelConfig:
    """SViTT of the paper: BEiT-B/16 (12 layers) + BERT-base (9 text + 3 multimodal layers),
    hybrid sparsity of Table A1 for `num_frames` in {4, 8, 16}: (K_l, K_r, G) = (1, 3, 56),
    q_v by clip length after layers 3, 6, 9, q_m = 0.1 after multimodal layer 1."""
    if num_frames not in PAPER_VISUAL_KEEP_RATE:
        raise ValueError(
            f"paper_model_config: num_frames {num_frames}; allowed: "
            f"{sorted(PAPER_VISUAL_KEEP_RATE)} (Table A1)"
        )
    return ModelConfig(
        vision=VisionConfig(num_frames=num_frames),
        text=TextConfig(),
        sparsity=SparsityConfig(
            attention="sparse",
            block_size=56,
            local_blocks=1,
            random_blocks=3,
            visual_keep_rate=PAPER_VISUAL_KEEP_RATE[num_frames],
            visual_drop_layers=(3, 6, 9),
            cross_keep_rate=0.1,
            cross_drop_layers=(1,),
        ),
        embed_dim=256,
        temperature=0.07,
        mlm_probability=0.5,
        qa_decoder_depth=3,
    )
