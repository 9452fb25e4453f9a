"""Benchmark requests built from a MIND-format catalog (real title lengths), deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genrec.client.types import RecommendRequest
from genrec.data.mind import iter_news


def load_catalog(news_tsv: str | Path) -> list[tuple[str, str, str]]:
    """(title, category, subcategory) of every item with a title."""
    return [(n.title, n.category, n.subcategory) for n in iter_news(news_tsv) if n.title.strip()]


def make_requests(catalog: list[tuple[str, str, str]], history: int, candidates: int, n: int = 64,
                  seed: int = 0) -> list[RecommendRequest]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rows = rng.choice(len(catalog), size=history + candidates, replace=history + candidates > len(catalog))
        h = [catalog[i] for i in rows[:history]]
        c = [catalog[i] for i in rows[history:]]
        out.append(RecommendRequest([t for t, _, _ in h], [t for t, _, _ in c], [x for _, x, _ in h],
                                    [x for _, x, _ in c], [s for _, _, s in h], [s for _, _, s in c]))
    return out


def perf_analyzer_json(requests: list[RecommendRequest], path: Path) -> Path:
    """The same requests in perf_analyzer's --input-data format (explicit shapes for BYTES tensors)."""
    data = []
    for r in requests:
        fields = {"history_text": r.history, "history_category": r.history_categories,
                  "history_subcategory": r.history_subcategories, "candidate_text": r.candidates,
                  "candidate_category": r.candidate_categories, "candidate_subcategory": r.candidate_subcategories}
        data.append({k: {"content": list(v), "shape": [len(v)]} for k, v in fields.items()})
    path.write_text(json.dumps({"data": data}))
    return path
