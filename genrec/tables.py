"""Item tables and impressions as index arrays: what training and evaluation run the model over
(the loops that do: ``genrec.scoring``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from genrec.core.mind import Impression, NewsItem
from genrec.core.profiles import generated_id, profile_vector
from genrec.core.stats import N_STATS, ItemStats, stats_as_of
from genrec.core.text import item_text
from genrec.core.vocab import Vocab

PAD = 0   # row 0 of every item table is a padding item (empty text, OOV categories)


@dataclasses.dataclass
class ItemTable:
    ids: list[str]                # (N,) news ids; ids[0] == "" is the padding item
    texts: list[str]              # (N,)
    category: np.ndarray          # (N,) int64 category ids
    subcategory: np.ndarray       # (N,) int64 subcategory ids
    index: dict[str, int]

    @classmethod
    def from_news(cls, news: dict[str, NewsItem], cat_vocab: Vocab, sub_vocab: Vocab,
                  use_abstract: bool, generated: Sequence[Impression] = ()) -> ItemTable:
        """``generated``: impressions whose LLM-written history titles (``Impression.generated``) get rows too,
        as items of unknown category (what a client that sends them as history texts sends)."""
        items = list(news.values())
        titles = dict.fromkeys(t for imp in generated for t in imp.generated)
        items += [NewsItem(generated_id(t), "", "", t, "") for t in titles if generated_id(t) not in news]
        ids = [""] + [n.news_id for n in items]
        texts = [""] + [item_text(n.title, n.abstract, use_abstract) for n in items]
        cat = np.concatenate([[0], cat_vocab.lookup(n.category for n in items)]).astype(np.int64)
        sub = np.concatenate([[0], sub_vocab.lookup(n.subcategory for n in items)]).astype(np.int64)
        return cls(ids, texts, cat, sub, {nid: i for i, nid in enumerate(ids) if nid})

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass
class ImpressionArrays:
    """Impressions as index arrays into an ItemTable; unknown news ids are dropped and counted."""

    history: np.ndarray                 # (I, Hmax) int64 item rows, left-aligned, 0-padded
    candidates: list[np.ndarray]        # I x (C_i,) int64 item rows
    labels: list[np.ndarray] | None     # I x (C_i,) int8
    user_ids: list[str]
    missing_history: int = 0
    missing_candidates: int = 0
    profile: np.ndarray | None = None                  # (I, K) LLM profile topic weights (genrec.core.profiles)
    history_stats: np.ndarray | None = None            # (I, Hmax, S) item statistics seen by each impression
    candidate_stats: list[np.ndarray] | None = None    # I x (C_i, S)

    def attach_stats_as_of(self, log: Sequence[Impression], impressions: Sequence[Impression],
                           table: ItemTable, staleness: np.ndarray | None = None) -> None:
        """Training: impression i (built from ``impressions[i]``) sees the counts of the events of ``log``
        strictly before its own time minus ``staleness[i]`` seconds (default 0)."""
        self.history_stats, self.candidate_stats = stats_as_of(log, impressions, self.history, self.candidates,
                                                               table.index, len(table), staleness)

    def attach_stats(self, stats: ItemStats, table: ItemTable) -> None:
        """Evaluation and serving: one fixed set of counts (e.g. the whole training log)."""
        per_row = np.zeros((len(table), N_STATS), dtype=np.float32)
        per_row[1:] = stats.lookup(table.ids[1:])
        self.history_stats = per_row[self.history]
        self.candidate_stats = [per_row[c] for c in self.candidates]

    @classmethod
    def build(cls, impressions: Sequence[Impression], table: ItemTable, max_history: int, *,
              categories: Sequence[str] | None = None, generated: bool = False) -> ImpressionArrays:
        """``categories``: the model's category names ("" first) for the profile matrix (None: no profiles, the
        heads see "no profile"; a width other than the model's would not index its categories); ``generated``: prepend
        each impression's LLM-written titles to its history (as the oldest items; the real ones are kept first
        when the history is full). Their rows must be in ``table`` (ItemTable.from_news(generated=...))."""
        hist = np.zeros((len(impressions), max_history), dtype=np.int64)
        profile = None if categories is None else np.asarray(
            [profile_vector(imp.profile, categories) for imp in impressions],
            dtype=np.float32).reshape(len(impressions), len(categories))
        cands, labels = [], []
        miss_h = miss_c = 0
        has_labels = bool(impressions) and impressions[0].labels is not None
        for i, imp in enumerate(impressions):
            ids = [*(generated_id(t) for t in imp.generated), *imp.history] if generated else imp.history
            rows = [table.index.get(h, -1) for h in ids[-max_history:]]
            miss_h += rows.count(-1)
            rows = [r for r in rows if r >= 0]
            hist[i, : len(rows)] = rows
            keep = [(table.index.get(c, -1), j) for j, c in enumerate(imp.candidates)]
            miss_c += sum(1 for r, _ in keep if r < 0)
            keep = [(r, j) for r, j in keep if r >= 0]
            cands.append(np.array([r for r, _ in keep], dtype=np.int64))
            if has_labels:
                labels.append(np.array([imp.labels[j] for _, j in keep], dtype=np.int8))
        return cls(hist, cands, labels if has_labels else None, [imp.user_id for imp in impressions],
                   miss_h, miss_c, profile)
