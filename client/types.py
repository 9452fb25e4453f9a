"""Typed request and response objects of the client."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence


@dataclasses.dataclass(frozen=True)
class Because:
    """One history item that drove a candidate's score."""

    history_index: int
    text: str                # "" on the id path for indexed items
    weight: float            # its additive share of the candidate's match logit
    item_id: str = ""        # id path only


@dataclasses.dataclass(frozen=True)
class RecommendedItem:
    index: int               # position in the request's candidate list
    text: str
    category: str
    score: float             # click logit: what the list is sorted by
    tasks: dict[str, float]  # auxiliary outputs: topic_affinity, category_confidence
    because: tuple[Because, ...]
    truncated: bool          # the text was cut to the model's max tokens (when indexed, or now)
    item_id: str = ""        # id path only
    source: str = ""         # id path: "index", "cache" (new item encoded before) or "encoded" (now)


class RankedItems(tuple):
    """An answer's items, best first: a tuple whose :class:`RecommendedItem` objects are built on first access and
    kept (index, slice, iterate, ``len``, ``in``, ``==`` / ``+`` with tuples, pickle, ``dataclasses.asdict``).

    Why: a service reads the top few of C candidates; building all C items and their C x 3 reasons on every call
    was most of the genrec client's CPU on the id path at C100 (issue 28). What each item holds is fixed when the
    answer arrives (``make`` reads the answer's arrays only), so an item built later equals one built at once.
    The tuple's own storage is empty: every tuple operation is overridden to go through :meth:`__getitem__`
    (C code that reads a tuple subclass iterates it), and ``RankedItems(iterable)`` -- how ``dataclasses.asdict``
    and ``copy`` rebuild a tuple -- gives a plain tuple."""

    def __new__(cls, order: Sequence[int] | Iterator = (), make: Callable[[int], RecommendedItem] | None = None):
        if make is None:                      # RankedItems(iterable): an ordinary tuple of its values
            return tuple(order)
        self = super().__new__(cls)
        self._order = order                   # candidate index of each rank
        self._make = make                     # candidate index -> its item
        self._built = [None] * len(order)     # the items read so far
        return self

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple([self[j] for j in range(*i.indices(len(self._order)))])
        n = len(self._order)
        if not -n <= i < n:
            raise IndexError(f"item {i} of {n}")
        i %= n
        item = self._built[i]
        if item is None:
            item = self._built[i] = self._make(self._order[i])
        return item

    def __iter__(self) -> Iterator[RecommendedItem]:
        return (self[i] for i in range(len(self._order)))

    def __reversed__(self) -> Iterator[RecommendedItem]:
        return (self[i] for i in reversed(range(len(self._order))))

    def __contains__(self, value) -> bool:
        return any(item == value for item in self)

    def count(self, value) -> int:
        return sum(item == value for item in self)

    def index(self, value, start: int = 0, stop: int | None = None) -> int:
        return tuple(self).index(value, start, len(self) if stop is None else stop)

    def __add__(self, other):
        return tuple(self) + other

    def __radd__(self, other):
        return other + tuple(self)

    def __mul__(self, n):
        return tuple(self) * n

    __rmul__ = __mul__

    def __eq__(self, other):
        return tuple(self) == other if isinstance(other, tuple) else NotImplemented

    def __ne__(self, other):
        return tuple(self) != other if isinstance(other, tuple) else NotImplemented

    def __lt__(self, other):
        return tuple(self) < other

    def __le__(self, other):
        return tuple(self) <= other

    def __gt__(self, other):
        return tuple(self) > other

    def __ge__(self, other):
        return tuple(self) >= other

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __reduce__(self):
        return tuple, (tuple(self),)

    def __repr__(self) -> str:
        return repr(tuple(self))


@dataclasses.dataclass(frozen=True)
class Recommendations:
    items: tuple[RecommendedItem, ...]   # sorted by score, best first (top_k of them if asked; built when read)
    model_name: str
    model_version: str
    user_topics: dict[str, float]         # the user's topic profile, highest first
    truncated_history: tuple[int, ...]    # indices of history texts that were cut
    latency_ms: float

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


NewItem = str | tuple[str, str] | tuple[str, str, str]     # text, or (text, category[, subcategory])


@dataclasses.dataclass
class RecommendRequest:
    """One user's request, for ``recommend_many``: texts (the ``genrec`` ensemble) or ids (``recommend``)."""

    history: Sequence[str] = ()
    candidates: Sequence[str] = ()
    history_categories: Sequence[str] | None = None
    candidate_categories: Sequence[str] | None = None
    history_subcategories: Sequence[str] | None = None
    candidate_subcategories: Sequence[str] | None = None
    top_k: int | None = None
    history_ids: Sequence[str] | None = None        # id path: items of the item-embedding index...
    candidate_ids: Sequence[str] | None = None
    new_items: dict[str, NewItem] | None = None     # ...and the texts of ids the index may not know
    # text path only, optional: per item one row of genrec.core.contract.ITEM_STATS -- [exposures, clicks,
    # history_users] raw counts, then the item's collaborative vector (from `genrec stats build`); a row of the
    # three counts alone is padded with zeros (no vector). One row per history text / candidate text; None =
    # no statistics = the model's prior. (The id path reads statistics from the server's stats folder.)
    history_stats: Sequence[Sequence[float]] | None = None
    candidate_stats: Sequence[Sequence[float]] | None = None
    # id path without candidate_ids: the server retrieves from its whole index and returns the best k
    k: int | None = None                            # None: the server's default (genrec.core.contract.RETRIEVAL_K)
    exclude_ids: Sequence[str] | None = None        # never return these
    categories: Sequence[str] | None = None         # return only items of these categories
    include_history: bool = False                   # may return the user's own history items
    # optional, both paths: the user's LLM profile topics (user_profiles.tsv of `genrec enrich users`), names from
    # the served `categories`; sent as the user_profile tensor. None = no profile (what the model falls back to).
    profile: Sequence[str] | None = None
    # optional, both paths, opt-in: LLM-written item titles for a short history (cold_users.tsv of `genrec enrich
    # cold-users`), sent as the oldest history items of unknown category (the server has no LLM). Counted in
    # the history limit (the real history is kept first); `because` indices count them too (they come first).
    generated: Sequence[str] | None = None
    # False: no explanations -- the call asks the server for every output but the (C, H) explanation matrix and
    # every item's ``because`` is empty (scores and tasks are the same). True (default): as always.
    explain: bool = True

    @property
    def by_id(self) -> bool:
        return self.candidate_ids is not None or self.history_ids is not None

    @property
    def retrieves(self) -> bool:
        return self.by_id and not self.candidate_ids
