"""Request validation shared by the server (Triton tokenizer model) and the client (its local checks).

One user per request: history texts (0..max_history) and candidate texts (1..max_candidates), each
with a category and a subcategory (empty string = unknown), and optionally the item statistics of each
(``history_stats`` / ``candidate_stats``: one row of ``ITEM_STATS`` per item -- three raw counts, then the
collaborative vector of ``genrec stats build``; absent = zeros = no statistics, the model's prior). The
server and the client raise the same messages because both call this module. Torch-free; numpy only for the statistics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from genrec.core.contract import (
    ITEM_COUNTS,
    ITEM_STATS,
    MAX_CANDIDATES,
    MAX_EXCLUDE,
    MAX_HISTORY,
    MAX_ID_BYTES,
    MAX_TEXT_BYTES,
    N_COUNTS,
    N_STATS,
    ServedParams,
)
from genrec.core.errors import UserError


class RequestError(UserError, ValueError):
    """The request is malformed; the message says what is wrong (sent as INVALID_ARGUMENT)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    max_history: int = MAX_HISTORY
    max_candidates: int = MAX_CANDIDATES
    max_text_bytes: int = MAX_TEXT_BYTES

    @classmethod
    def from_parameters(cls, params) -> Limits:
        """The limits a served model advertises in its config ``parameters`` (see ``ServedParams``)."""
        served = ServedParams.from_parameters(params)
        return cls(served.max_history, served.max_candidates, served.max_text_bytes)


@dataclasses.dataclass
class UserRequest:
    history_text: list[str]
    history_category: list[str]
    history_subcategory: list[str]
    candidate_text: list[str]
    candidate_category: list[str]
    candidate_subcategory: list[str]
    history_stats: Any = None            # (H, S) float32 numpy array, or None (not sent: zeros = the prior)
    candidate_stats: Any = None          # (C, S) float32 numpy array, or None
    user_profile: Any = None             # (K,) float32 numpy array, or None (not sent: no profile)


def _check_counts(n_history: int, n_candidates: int, kind: str, limits: Limits, retrieval: bool = False) -> None:
    if n_candidates == 0 and not retrieval:
        raise RequestError(f"candidate_{kind} is empty; send 1 to {limits.max_candidates} candidates")
    if n_candidates > limits.max_candidates:
        raise RequestError(f"candidate_{kind} has {n_candidates} items; the limit is {limits.max_candidates}")
    if n_history > limits.max_history:
        raise RequestError(f"history_{kind} has {n_history} items; the limit is {limits.max_history} "
                           f"(send the most recent {limits.max_history})")


def _decode(values: Sequence[bytes | str], name: str, *, text: bool, limits: Limits) -> list[str]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            if len(v) > limits.max_text_bytes:
                raise RequestError(f"{name}[{i}] is {len(v)} bytes; the limit is {limits.max_text_bytes} bytes")
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RequestError(f"{name}[{i}] is not valid UTF-8 (byte {exc.start})") from None
        elif isinstance(v, str):
            n = len(v.encode("utf-8"))
            if n > limits.max_text_bytes:
                raise RequestError(f"{name}[{i}] is {n} bytes; the limit is {limits.max_text_bytes} bytes")
        else:
            raise RequestError(f"{name}[{i}] must be a string, got {type(v).__name__}")
        if text and not v.strip():
            raise RequestError(f"{name}[{i}] is empty or whitespace only; every item needs a text")
        out.append(v)
    return out


def validate(history_text: Sequence[bytes | str], candidate_text: Sequence[bytes | str],
             history_category: Sequence[bytes | str] | None = None,
             history_subcategory: Sequence[bytes | str] | None = None,
             candidate_category: Sequence[bytes | str] | None = None,
             candidate_subcategory: Sequence[bytes | str] | None = None,
             limits: Limits = Limits(), history_stats: Any = None, candidate_stats: Any = None,
             user_profile: Any = None, categories: Sequence[str] | None = None) -> UserRequest:
    """Check counts, lengths, encodings and list alignment; return decoded strings.

    Categories may be None (all unknown) or lists aligned with their texts. Unknown category values are
    not an error: they map to the out-of-vocabulary bucket. Statistics may be None (not sent) or one row
    of ``ITEM_STATS`` per text (see :func:`validate_stats`); ``user_profile`` None or one weight per entry of
    ``categories`` (see :func:`validate_profile`).
    """
    _check_counts(len(history_text), len(candidate_text), "text", limits)
    lists = {"history_category": (history_category, history_text, "history_text"),
             "history_subcategory": (history_subcategory, history_text, "history_text"),
             "candidate_category": (candidate_category, candidate_text, "candidate_text"),
             "candidate_subcategory": (candidate_subcategory, candidate_text, "candidate_text")}
    decoded: dict[str, list[str]] = {}
    for name, (values, texts, text_name) in lists.items():
        if values is None:
            decoded[name] = [""] * len(texts)
            continue
        if len(values) != len(texts):
            raise RequestError(f"{name} has {len(values)} values but {text_name} has {len(texts)}; "
                               "send one per item (empty string = unknown)")
        decoded[name] = _decode(values, name, text=False, limits=limits)
    return UserRequest(_decode(history_text, "history_text", text=True, limits=limits),
                       decoded["history_category"], decoded["history_subcategory"],
                       _decode(candidate_text, "candidate_text", text=True, limits=limits),
                       decoded["candidate_category"], decoded["candidate_subcategory"],
                       validate_stats(history_stats, "history_stats", len(history_text), "history_text"),
                       validate_stats(candidate_stats, "candidate_stats", len(candidate_text), "candidate_text"),
                       validate_profile(user_profile, categories))


def validate_profile(values: Any, categories: Sequence[str] | None):
    """None, or a (K,) float32 array: one weight in [0, 1] per served category (``categories``, the model's
    names with "" first; genrec.core.profiles.profile_vector builds it from topic names). Raises RequestError naming
    the tensor, the first offending index and its category."""
    if values is None:
        return None
    import numpy as np

    if categories is None:
        raise RequestError("user_profile: this server does not know its categories (an older build): leave it out")
    k = len(categories)
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError(f"user_profile must be {k} numbers in [0, 1], one per category") from None
    if arr.ndim != 1 or arr.shape[0] != k:
        raise RequestError(f"user_profile must have shape [{k}] (one weight per category of this model, in the "
                           f"order of its `categories` parameter), got {list(arr.shape)}")
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > 1)
    if bad.any():
        i = int(np.argmax(bad))
        name = f" ({categories[i]!r})" if categories[i] else ""       # the heads model knows no names
        raise RequestError(f"user_profile[{i}]{name} is {float(arr[i])!r}; profile weights must be finite and "
                           "in [0, 1]")
    return np.ascontiguousarray(arr)


def validate_stats(values: Any, name: str, n_items: int, items_name: str):
    """None, or a (n_items, S) float32 array in ``ITEM_STATS`` order: finite raw counts >= 0, then a finite
    collaborative vector. Rows of only the N_COUNTS counts are accepted too (the client's convenience: the
    vector is then zeros = unknown); the served tensor is always S wide.

    Raises RequestError naming the tensor and the first offending index (row, and the statistic by name).
    """
    if values is None:
        return None
    import numpy as np

    shapes = f"{N_STATS} numbers {list(ITEM_COUNTS)} + {N_STATS - N_COUNTS} collaborative (or the {N_COUNTS} counts)"
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be rows of {shapes}, one per item") from None
    if arr.size == 0 and n_items == 0:
        return np.zeros((0, N_STATS), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] not in (N_STATS, N_COUNTS):
        raise RequestError(f"{name} must have shape [{items_name} count, {N_STATS}] (one row of {shapes} "
                           f"per item), got {list(arr.shape)}")
    if arr.shape[0] != n_items:
        raise RequestError(f"{name} has {arr.shape[0]} rows but {items_name} has {n_items}; send one row per item "
                           "(zeros = no statistics)")
    bad = ~np.isfinite(arr)
    bad[:, :N_COUNTS] |= arr[:, :N_COUNTS] < 0
    if bad.any():
        row, col = (int(x) for x in np.argwhere(bad)[0])
        rule = "finite and >= 0" if col < N_COUNTS else "finite"
        raise RequestError(f"{name}[{row}] {ITEM_STATS[col]} is {float(arr[row, col])!r}; "
                           f"item statistics must be {rule}")
    if arr.shape[1] == N_COUNTS:
        arr = np.concatenate([arr, np.zeros((len(arr), N_STATS - N_COUNTS), dtype=np.float32)], axis=1)
    return np.ascontiguousarray(arr)


@dataclasses.dataclass
class IdRequest:
    history_id: list[str]
    candidate_id: list[str]
    new_items: dict[str, tuple[str, str, str]]     # id -> (text, category, subcategory)
    user_profile: Any = None                       # (K,) float32 numpy array, or None (not sent: no profile)


def _ids(values: Sequence[bytes | str], name: str) -> list[str]:
    out = []
    for i, v in enumerate(values):
        raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
        if not raw.strip():
            raise RequestError(f"{name}[{i}] is empty; every item needs an id")
        if len(raw) > MAX_ID_BYTES:
            raise RequestError(f"{name}[{i}] is {len(raw)} bytes; ids are at most {MAX_ID_BYTES} bytes")
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RequestError(f"{name}[{i}] is not valid UTF-8 (byte {exc.start})") from None
    return out


def validate_ids(history_id: Sequence[bytes | str], candidate_id: Sequence[bytes | str],
                 new_item_id: Sequence[bytes | str] = (), new_item_text: Sequence[bytes | str] = (),
                 new_item_category: Sequence[bytes | str] | None = None,
                 new_item_subcategory: Sequence[bytes | str] | None = None,
                 limits: Limits = Limits(), *, retrieval: bool = False) -> IdRequest:
    """The id path's checks: counts as for texts, ids non-empty UTF-8 of at most MAX_ID_BYTES, and
    new_item_* lists aligned (one text, category, subcategory per new id, no id twice). ``retrieval``: the
    server retrieves candidates itself, so candidate_id may be empty."""
    _check_counts(len(history_id), len(candidate_id), "id", limits, retrieval)
    if len(new_item_id) > len(history_id) + len(candidate_id):
        raise RequestError(f"new_item_id has {len(new_item_id)} items, more than the request's "
                           f"{len(history_id) + len(candidate_id)} history and candidate ids")
    n = len(new_item_id)
    for name, values in (("new_item_text", new_item_text), ("new_item_category", new_item_category),
                         ("new_item_subcategory", new_item_subcategory)):
        if values is not None and len(values) != n:
            raise RequestError(f"{name} has {len(values)} values but new_item_id has {n}; send one per new item")
    new_ids = _ids(new_item_id, "new_item_id")
    texts = _decode(new_item_text, "new_item_text", text=True, limits=limits)
    cats = [""] * n if new_item_category is None else _decode(new_item_category, "new_item_category", text=False,
                                                               limits=limits)
    subs = [""] * n if new_item_subcategory is None else _decode(new_item_subcategory, "new_item_subcategory",
                                                                 text=False, limits=limits)
    new_items: dict[str, tuple[str, str, str]] = {}
    for i, item_id in enumerate(new_ids):
        if item_id in new_items:
            raise RequestError(f"new_item_id[{i}] {item_id!r} appears twice")
        new_items[item_id] = (texts[i], cats[i], subs[i])
    return IdRequest(_ids(history_id, "history_id"), _ids(candidate_id, "candidate_id"), new_items)


@dataclasses.dataclass
class RetrievalRequest:
    k: int
    exclude_id: list[str]
    restrict_category: list[int] | None      # category ids; None = every category
    include_history: bool


RETRIEVAL_OPTIONS = ("k", "exclude_id", "restrict_category", "include_history")   # the tensors of retrieval


def refuse_retrieval_options(given: Sequence[str]) -> None:
    """Retrieval's options (``given``: which of RETRIEVAL_OPTIONS a request sent) with candidates: refused, not
    ignored -- the server ranks exactly the candidates sent, so a filter or a k there would be silently dropped."""
    if given:
        raise RequestError(f"{', '.join(given)} only apply to retrieval (history_id without candidate_id); this "
                           "request sends candidates, which are ranked as sent: leave them out (or the candidates)")


def validate_retrieval(k: Sequence[int] | None, exclude_id: Sequence[bytes | str] | None,
                       restrict_category: Sequence[bytes | str] | None, include_history: Sequence[bool] | None,
                       retrieval_m: int, category_ids: dict[str, int]) -> RetrievalRequest:
    """A no-candidate request's options: 1 <= k <= retrieval_m (default RETRIEVAL_K, capped at retrieval_m),
    at most MAX_EXCLUDE exclude_id ids (checked as candidate ids are), restrict_category names the model knows
    (``category_ids``: name -> id), at most one per category."""
    from genrec.core.contract import RETRIEVAL_K

    if retrieval_m <= 0:
        raise RequestError("candidate_id is empty and this server has no retrieval index: send candidates, or "
                           "serve an index with retrieval files (genrec index retrieval)")
    if k is not None and len(k) != 1:
        raise RequestError(f"k must hold one value, got {len(k)}")
    value = min(RETRIEVAL_K, retrieval_m) if k is None else int(k[0])
    if not 1 <= value <= retrieval_m:
        raise RequestError(f"k is {value}; send 1 to {retrieval_m} (the items this server retrieves before "
                           "re-ranking)")
    if exclude_id is not None and len(exclude_id) > MAX_EXCLUDE:
        raise RequestError(f"exclude_id has {len(exclude_id)} ids; the limit is {MAX_EXCLUDE}")
    cats = None
    if restrict_category is not None:
        if len(restrict_category) > len(category_ids):
            raise RequestError(f"restrict_category has {len(restrict_category)} names; this model has "
                               f"{len(category_ids)} categories (name each at most once)")
        names = _decode(restrict_category, "restrict_category", text=False, limits=Limits())
        if not names:
            raise RequestError("restrict_category is empty; leave it out to allow every category")
        cats = []
        for i, name in enumerate(names):
            key = name.strip().lower()                  # as the vocabulary stores them
            if key not in category_ids:
                raise RequestError(f"restrict_category[{i}] {name!r} is not a category of this model")
            cats.append(category_ids[key])
    if include_history is not None and len(include_history) != 1:
        raise RequestError(f"include_history must hold one value, got {len(include_history)}")
    return RetrievalRequest(value, _ids(exclude_id or (), "exclude_id"), cats,
                            bool(include_history[0]) if include_history is not None else False)
