"""Category / subcategory vocabularies with an out-of-vocabulary bucket.

Shared by training (building ids from news.tsv) and serving (the Triton tokenizer model maps request
strings to ids with this same class), so the two can never disagree. No torch import.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

OOV = "<oov>"


class Vocab:
    """String -> id with id 0 reserved for unknown or empty values."""

    def __init__(self, tokens: Iterable[str]):
        self.tokens: list[str] = [OOV] + [t for t in tokens if t and t != OOV]
        self._index = {t: i for i, t in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")

    @classmethod
    def build(cls, values: Iterable[str], min_count: int = 1) -> Vocab:
        counts = Counter(v.strip().lower() for v in values if v and v.strip())
        return cls(sorted(t for t, n in counts.items() if n >= min_count))

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.tokens == self.tokens

    def id(self, value: str) -> int:
        return self._index.get(value.strip().lower(), 0)

    def lookup(self, values: Iterable[str]) -> np.ndarray:
        """(N,) int64 ids; unknown or empty values map to 0 (the OOV bucket)."""
        return np.fromiter((self.id(v) for v in values), dtype=np.int64)

    def to_list(self) -> list[str]:
        return list(self.tokens[1:])

    @classmethod
    def from_list(cls, tokens: list[str]) -> Vocab:
        return cls(tokens)
