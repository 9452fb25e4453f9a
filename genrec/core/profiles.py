"""User profiles and cold-user items from the LLM (``genrec enrich users`` / ``cold-users``): files and features.

Torch- and numpy-free: training, evaluation, the Triton backends and the client all import it, so the one
function that turns topic names into the model's profile input (:func:`profile_vector`) is the same everywhere.

Files, beside each ``behaviors.tsv`` (written by :mod:`genrec.enrich_users`, overlaid by
:func:`genrec.core.mind.load_split`), one line per user, tab-separated:

* ``user_profiles.tsv``: user_id, history hash, topic, topic, ... (1..MAX_TOPICS names from the topic list)
* ``cold_users.tsv``:    user_id, history hash, title, title, ... (1..MAX_GENERATED LLM-written item titles)

The history hash is :func:`history_hash` of the user's history items (their ids and content hashes): an
impression whose history differs from the one the LLM saw (new clicks, edited items) gets no overlay -- the
"no profile" value and no synthetic items -- exactly as a user nobody enriched. No LLM is needed to read them.

The profile input of the heads (contract ``user_profile``, FP32 (K,)): one weight in [0, 1] per category of
the model's vocabulary (the served ``categories`` list, "" first), 1.0 for each profile topic; all zeros =
"no profile" (absent from a request means the same).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

PROFILES_FILE = "user_profiles.tsv"
COLD_USERS_FILE = "cold_users.tsv"
MAX_TOPICS = 3          # topics kept per profile: a short profile is one a 135M model can still get right
TOPIC_LIST_SIZE = 30    # the topic list: the dataset's most frequent categories (a prompt must stay short)
MAX_GENERATED = 3       # synthetic items per cold user
GENERATED_PREFIX = "~gen:"   # item ids of synthetic history items in training (never a real id: '~' + text)


class ProfileFormatError(ValueError):
    """A line of user_profiles.tsv / cold_users.tsv is malformed; the message names file and line."""


def topic_list(categories: Iterable[str], size: int = TOPIC_LIST_SIZE) -> list[str]:
    """The fixed topic list of a dataset: its item categories (as written in news.tsv), most frequent first,
    ties by name, at most ``size``. Derived from the data, so movie genres, product categories and news
    categories all work; nothing here knows the domain."""
    counts = Counter(c.strip() for c in categories if c and c.strip())
    return [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0].lower()))][:size]


def history_hash(items: Sequence[tuple[str, str]]) -> str:
    """Hash of a history as (item id, content hash) pairs, oldest first: 16 hex digits."""
    text = "\n".join(f"{i}\t{h}" for i, h in items)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def profile_vector(topics: Iterable[str], categories: Sequence[str]) -> list[float]:
    """The heads' ``user_profile`` input: (K,) weights over ``categories`` (the model's category names, ""
    first, as the checkpoint's vocabulary and the served ``categories`` list have them), 1.0 per topic.
    Case-insensitive like the vocabulary; a topic the model has no category for is ignored (the list
    comes from the same categories, so only a profile made for another dataset has one). No topics: zeros
    = "no profile". The one implementation: training, evaluation and the client call it."""
    index = {c.strip().lower(): i for i, c in enumerate(categories) if c.strip()}
    vec = [0.0] * len(categories)
    for t in topics:
        i = index.get(t.strip().lower())
        if i is not None:
            vec[i] = 1.0
    return vec


def read_overlay(path: str | Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """user_id -> (history hash, values) from a user_profiles.tsv / cold_users.tsv; {} when there is none."""
    path = Path(path)
    if not path.is_file():
        return {}
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    with open(path, encoding="utf-8", newline="\n") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            values = tuple(v.strip() for v in fields[2:] if v.strip())
            if len(fields) < 3 or not fields[0].strip() or not values:
                raise ProfileFormatError(f"{path}:{lineno}: expected user_id, history hash and at least one "
                                         f"value (tab-separated), got {len(fields)} fields")
            out[fields[0].strip()] = (fields[1].strip(), values)
    return out


def write_overlay(path: str | Path, rows: Iterable[tuple[str, str, Sequence[str]]]) -> int:
    """Write (user_id, history hash, values) lines to a temporary file and rename it, so a reader never sees
    half a file; no rows: no file (an old one is removed). Returns the number of lines."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for user, h, values in rows:
            clean = [" ".join(v.replace("\t", " ").split()) for v in values]
            fh.write("\t".join([user, h, *clean]) + "\n")
            n += 1
    if n:
        tmp.replace(path)
    else:
        tmp.unlink()
        path.unlink(missing_ok=True)
    return n


def generated_id(title: str) -> str:
    """Training's item id of a synthetic history item: one row per distinct title."""
    return GENERATED_PREFIX + title
