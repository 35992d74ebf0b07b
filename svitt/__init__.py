"""SViTT: sparse video-text transformers, with the experiment pipeline of the CVPR 2023 paper."""

__version__ = "0.1.0"
