"""Benchmark requests built from a MIND-format catalog (real title lengths), deterministic."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from genrec.client.types import RecommendRequest
from genrec.core.mind import iter_news


def load_catalog(news_tsv: str | Path) -> list[tuple[str, str, str, str]]:
    """(title, category, subcategory, id) of every item with a title."""
    return [(n.title, n.category, n.subcategory, n.news_id) for n in iter_news(news_tsv) if n.title.strip()]


def make_requests(catalog: list[tuple[str, str, str, str]], history: int, candidates: int, n: int = 64,
                  seed: int = 0, stats=None) -> list[RecommendRequest]:
    """Text-path requests carrying every item's statistics: looked up by id in ``stats`` (a
    ``genrec.core.statstore.StatsTable``, the counts the id path serves), else seeded plausible counts."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rows = rng.choice(len(catalog), size=history + candidates, replace=history + candidates > len(catalog))
        h = [catalog[i] for i in rows[:history]]
        c = [catalog[i] for i in rows[history:]]
        out.append(RecommendRequest([x[0] for x in h], [x[0] for x in c], [x[1] for x in h], [x[1] for x in c],
                                    [x[2] for x in h], [x[2] for x in c], history_stats=_stats(h, stats, rng),
                                    candidate_stats=_stats(c, stats, rng)))
    return out


def _stats(items: list[tuple[str, str, str, str]], table, rng: np.random.Generator) -> np.ndarray:
    if table is not None:
        return table.lookup([x[3] for x in items])                      # (n, S)
    return plausible_stats(len(items), rng)


def plausible_stats(n: int, rng: np.random.Generator, unknown: float = 0.2) -> np.ndarray:
    """(n, S) item statistics as served: counts (exposures >= clicks) and a unit collaborative vector; a
    fraction ``unknown`` of the rows is all zeros (items without statistics: the prior)."""
    from genrec.core.contract import CF_DIM

    exposures = rng.integers(0, 500, n)
    counts = np.stack([exposures, (exposures * rng.uniform(0, 0.3, n)).astype(int), rng.integers(0, 80, n)], axis=1)
    cf = rng.standard_normal((n, CF_DIM))
    cf /= np.linalg.norm(cf, axis=1, keepdims=True)
    out = np.concatenate([counts, cf], axis=1).astype(np.float32)
    out[rng.random(n) < unknown] = 0.0
    return out


class IdWorkload:
    """Id-path requests: indexed items, plus a fraction of candidates that are new items (never seen
    before by the server: a fresh id with its text per request, so the server's LRU cannot help)."""

    def __init__(self, catalog: list[tuple[str, str, str, str]], history: int, candidates: int, unknown: float,
                 seed: int = 0):
        self.catalog, self.history, self.candidates = catalog, history, candidates
        self.n_new = int(round(unknown * candidates))
        self.rng = np.random.default_rng(seed)
        self.counter = itertools.count()
        self.items_per_request = float(history + candidates)

    PREPARED = 256          # warm requests (no new items): this many drawn once, then cycled

    def __call__(self, i: int) -> RecommendRequest:
        # warm requests carry nothing fresh: drawn once (drawing 150 of 1M ids costs the client ~0.3 ms per call,
        # CPU the server then lacks at high concurrency; perf_analyzer sends prepared requests too)
        if not self.n_new:
            if not hasattr(self, "_prepared"):
                self._prepared = [self._draw() for _ in range(self.PREPARED)]
            return self._prepared[i % self.PREPARED]
        return self._draw()

    def _draw(self) -> RecommendRequest:
        k = next(self.counter)
        rows = self.rng.choice(len(self.catalog), size=self.history + self.candidates, replace=False)
        hist = [self.catalog[i][3] for i in rows[: self.history]]
        cands = [self.catalog[i][3] for i in rows[self.history:]]
        new = {}
        for j in range(self.n_new):
            title, cat, sub, _ = self.catalog[rows[self.history + j]]
            cands[j] = f"new-{k}-{j}"
            new[cands[j]] = (title, cat, sub)
        return RecommendRequest(history_ids=hist, candidate_ids=cands, new_items=new)


def perf_analyzer_json(requests: list[RecommendRequest], path: Path) -> Path:
    """The same requests in perf_analyzer's --input-data format (explicit shapes for BYTES tensors)."""
    data = []
    for r in requests:
        fields = {"history_text": r.history, "history_category": r.history_categories,
                  "history_subcategory": r.history_subcategories, "candidate_text": r.candidates,
                  "candidate_category": r.candidate_categories, "candidate_subcategory": r.candidate_subcategories}
        entry = {k: {"content": list(v), "shape": [len(v)]} for k, v in fields.items()}
        for k, v in (("history_stats", r.history_stats), ("candidate_stats", r.candidate_stats)):
            if v is not None:
                arr = np.asarray(v, dtype=np.float32)
                entry[k] = {"content": arr.ravel().tolist(), "shape": list(arr.shape)}
        data.append(entry)
    path.write_text(json.dumps({"data": data}))
    return path


def perf_analyzer_id_json(requests: list[RecommendRequest], path: Path) -> Path:
    """Id-path requests (every item indexed: no new items) in perf_analyzer's --input-data format, for the
    `recommend` model; retrieval requests (no candidate_ids) leave candidate_id out and send ``k`` when set."""
    data = []
    for r in requests:
        if r.new_items:
            raise ValueError("perf_analyzer requests carry no new items (fresh ids per request)")
        entry = {"history_id": {"content": list(r.history_ids or ()), "shape": [len(r.history_ids or ())]}}
        if r.candidate_ids:
            entry["candidate_id"] = {"content": list(r.candidate_ids), "shape": [len(r.candidate_ids)]}
        elif r.k is not None:
            entry["k"] = {"content": [int(r.k)], "shape": [1]}
        for name in ("new_item_id", "new_item_text", "new_item_category", "new_item_subcategory"):
            entry[name] = {"content": [], "shape": [0]}
        data.append(entry)
    path.write_text(json.dumps({"data": data}))
    return path
