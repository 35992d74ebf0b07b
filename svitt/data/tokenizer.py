"""The text tokenizer: a Hugging Face fast-tokenizer directory, read with `tokenizers` alone.

The directory is what `save_pretrained` writes (BERT-base's, or the synthetic benchmark's):
`tokenizer.json` holds the vocabulary, normaliser and the [CLS] ... [SEP] template;
`tokenizer_config.json` / `special_tokens_map.json` may rename the special tokens (BERT's
names otherwise). Not transformers' `AutoTokenizer`: importing transformers costs about a
second per process, and every stage of the DAG is a process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

from svitt.errors import MissingFileError

# Worker processes fork after the parent has used the fast tokenizer; its own thread pool
# would otherwise deadlock-warn in every worker.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


class TextTokenizer:
    """BERT-style tokenizer: special token ids, vocabulary size, fixed-length batch encoding."""

    def __init__(self, backend: Tokenizer, special_tokens: dict[str, str] = SPECIAL_TOKENS) -> None:
        self.backend = backend
        self.special_tokens = special_tokens
        ids = {role: backend.token_to_id(token) for role, token in special_tokens.items()}
        self.pad_token_id = ids["pad"]
        self.unk_token_id = ids["unk"]
        self.cls_token_id = ids["cls"]
        self.sep_token_id = ids["sep"]
        self.mask_token_id = ids["mask"]

    @classmethod
    def from_dir(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        if not path.is_dir():
            raise MissingFileError(f"tokenizer directory not found: {path} (data.tokenizer)")
        file = path / "tokenizer.json"
        if not file.is_file():
            raise MissingFileError(
                f"{file} not found (data.tokenizer): a fast-tokenizer file is needed; write it "
                f"once with `AutoTokenizer.from_pretrained('{path}').save_pretrained('{path}')`"
            )
        return cls(Tokenizer.from_file(str(file)), _special_tokens(path))

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask), both [N, max_len] long: [CLS] text [SEP], truncated, then padded."""
        if not texts:
            empty = torch.zeros((0, max_len), dtype=torch.long)
            return empty, empty.clone()
        self.backend.enable_truncation(max_length=max_len)
        self.backend.enable_padding(
            length=max_len, pad_id=self.pad_token_id, pad_token=self.special_tokens["pad"]
        )
        encodings = self.backend.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids` without special tokens and padding."""
        return self.backend.decode(list(ids), skip_special_tokens=True)


def _special_tokens(path: Path) -> dict[str, str]:
    """Special token names from the directory's configs (either file, either format)."""
    names = dict(SPECIAL_TOKENS)
    for config in ("special_tokens_map.json", "tokenizer_config.json"):
        file = path / config
        if not file.is_file():
            continue
        entries = json.loads(file.read_text(encoding="utf-8"))
        for role in names:
            value = entries.get(f"{role}_token")
            if isinstance(value, dict):  # {"content": "[PAD]", "lstrip": false, ...}
                value = value.get("content")
            if isinstance(value, str):
                names[role] = value
    return names
