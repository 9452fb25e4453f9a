"""Typed request and response objects of the client."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Because:
    """One history item that drove a candidate's score."""

    history_index: int
    text: str
    weight: float            # its additive share of the candidate's match logit


@dataclasses.dataclass(frozen=True)
class RecommendedItem:
    index: int               # position in the request's candidate list
    text: str
    category: str
    score: float             # click logit: what the list is sorted by
    tasks: dict[str, float]  # auxiliary outputs: topic_affinity, category_confidence
    because: tuple[Because, ...]
    truncated: bool          # the text was cut to the model's max tokens


@dataclasses.dataclass(frozen=True)
class Recommendations:
    items: tuple[RecommendedItem, ...]   # sorted by score, best first (top_k of them if asked)
    model_name: str
    model_version: str
    user_topics: dict[str, float]         # the user's topic profile, highest first
    truncated_history: tuple[int, ...]    # indices of history texts that were cut
    latency_ms: float

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclasses.dataclass
class RecommendRequest:
    """One user's request, for ``recommend_many``."""

    history: Sequence[str]
    candidates: Sequence[str]
    history_categories: Sequence[str] | None = None
    candidate_categories: Sequence[str] | None = None
    history_subcategories: Sequence[str] | None = None
    candidate_subcategories: Sequence[str] | None = None
    top_k: int | None = None
