"""Deterministic synthetic data in MIND format, with planted structure a model can learn.

Structure: 16 MIND-like categories with ~80 subcategories, each with its own vocabulary; items are
10-15 word titles (plus an abstract) drawn mostly from their topic's words, and an item's hidden
quality shows partly in its wording (hook words vs dull words); users prefer a few
categories and subcategories (Dirichlet), their history is drawn from those preferences, and each
impression's clicks are drawn from the same preferences plus item quality plus noise. Train
impressions cover the first days, ``dev/`` the last day (with items first seen that day), like MIND.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

TOPICS_FILE = Path(__file__).with_name("topics.json")


@dataclasses.dataclass
class SynthConfig:
    users: int = dataclasses.field(default=3000, metadata={"help": "number of users"})
    items: int = dataclasses.field(default=3000, metadata={"help": "number of news items in the catalog"})
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed; same seed, same files"})
    days: int = dataclasses.field(default=6, metadata={
        "help": "days of impressions; the last day becomes dev/ (held out, with fresh items)"})
    impressions_per_user: float = dataclasses.field(default=4.0, metadata={
        "help": "mean impressions per user over all days (Poisson)"})
    mean_candidates: float = dataclasses.field(default=20.0, metadata={
        "help": "mean candidates per impression (log-normal, clipped to 1..300; MIND's is ~37)"})
    click_rate: float = dataclasses.field(default=0.04, metadata={
        "help": "fraction of candidates clicked (at least one per impression, as in MIND)"})
    cold_user_rate: float = dataclasses.field(default=0.05, metadata={
        "help": "fraction of users with an empty history"})
    signal: float = dataclasses.field(default=2.5, metadata={
        "help": "strength of preference in click choice (0 = random clicks)"})
    noise_clicks: float = dataclasses.field(default=0.15, metadata={
        "help": "fraction of clicks drawn uniformly (unexplainable noise)"})


def _title(rng: np.random.Generator, cat_words: list[str], sub_words: list[str], generic: list[str],
           n_words: int, tone: list[str]) -> str:
    n_sub = rng.integers(2, 4)
    n_cat = rng.integers(3, 6)
    words = list(rng.choice(sub_words, size=n_sub)) + list(rng.choice(cat_words, size=n_cat))
    words += list(rng.choice(tone, size=min(len(tone), 2))) if tone else []
    words += list(rng.choice(generic, size=max(0, n_words - len(words))))
    rng.shuffle(words)
    text = " ".join(words)
    return text[0].upper() + text[1:]


def synthesize(out_dir: str | Path, cfg: SynthConfig = SynthConfig()) -> dict[str, int]:
    """Write ``out_dir/train/{news,behaviors}.tsv`` and ``out_dir/dev/...``; return counts."""
    rng = np.random.default_rng(cfg.seed)
    topics = json.loads(TOPICS_FILE.read_text())
    generic: list[str] = topics["generic"]
    cats = list(topics["categories"])
    subs = [(c, s) for c in cats for s in topics["categories"][c]["sub"]]
    sub_index = {cs: i for i, cs in enumerate(subs)}
    cat_pop = 1.0 / np.arange(1, len(cats) + 1) ** 0.8           # Zipf-ish category sizes
    cat_pop = cat_pop[rng.permutation(len(cats))]
    cat_pop /= cat_pop.sum()

    # ---- items ---------------------------------------------------------------------------------
    item_cat = rng.choice(len(cats), size=cfg.items, p=cat_pop)
    item_sub = np.empty(cfg.items, dtype=np.int64)
    item_day = rng.integers(0, cfg.days, size=cfg.items)
    item_quality = rng.normal(0.0, 0.6, size=cfg.items)
    news_lines = []
    for i in range(cfg.items):
        c = cats[item_cat[i]]
        s_names = list(topics["categories"][c]["sub"])
        s = s_names[rng.integers(len(s_names))]
        item_sub[i] = sub_index[(c, s)]
        cw, sw = topics["categories"][c]["words"], topics["categories"][c]["sub"][s]
        # item quality shows partly in the wording (hooks vs dull words), partly not at all
        q = item_quality[i]
        tone = topics["hook"] if q > 0.5 else topics["dull"] if q < -0.5 else []
        title = _title(rng, cw, sw, generic, int(rng.integers(10, 16)), tone)
        abstract = "" if rng.random() < 0.1 else _title(rng, cw, sw, generic, int(rng.integers(15, 30)), []) + "."
        news_lines.append("\t".join([f"N{i + 1}", c, s, title, abstract,
                                     f"https://example.invalid/N{i + 1}", "[]", "[]"]))

    # ---- users ---------------------------------------------------------------------------------
    cat_pref = rng.dirichlet(np.full(len(cats), 0.25), size=cfg.users) * 0.9 + 0.1 * cat_pop
    sub_pref = np.zeros((cfg.users, len(subs)))
    for ci, c in enumerate(cats):
        idx = [sub_index[(c, s)] for s in topics["categories"][c]["sub"]]
        sub_pref[:, idx] = rng.dirichlet(np.full(len(idx), 0.5), size=cfg.users) * cat_pref[:, [ci]]

    def affinity(u: int, items: np.ndarray) -> np.ndarray:
        return (np.log(cat_pref[u, item_cat[items]] + 1e-3) + 0.5 * np.log(sub_pref[u, item_sub[items]] + 1e-4)
                + item_quality[items])

    history_pool = np.flatnonzero(item_day < max(1, cfg.days - 2))
    histories: list[list[int]] = []
    for u in range(cfg.users):
        if rng.random() < cfg.cold_user_rate:
            histories.append([])
            continue
        n = int(np.clip(rng.lognormal(np.log(15), 0.8), 1, 80))
        logits = cfg.signal * affinity(u, history_pool)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        n = min(n, len(history_pool))
        histories.append(list(rng.choice(history_pool, size=n, replace=False, p=p)))

    # ---- impressions ---------------------------------------------------------------------------
    base = datetime(2019, 11, 9)
    rows: dict[str, list[str]] = {"train": [], "dev": []}
    for u in range(cfg.users):
        for _ in range(int(rng.poisson(cfg.impressions_per_user))):
            day = int(rng.integers(0, cfg.days))
            pool = np.flatnonzero((item_day <= day) & (item_day >= day - 2))
            pool = np.setdiff1d(pool, histories[u], assume_unique=True)   # seen items are not re-shown
            if len(pool) == 0:
                continue
            n_c = int(np.clip(round(rng.lognormal(np.log(cfg.mean_candidates), 0.7)), 1, min(300, len(pool))))
            cands = rng.choice(pool, size=n_c, replace=False)
            n_click = int(np.clip(rng.binomial(n_c, cfg.click_rate), 1, n_c))
            logits = cfg.signal * affinity(u, cands)
            p = np.exp(logits - logits.max())
            p = (1 - cfg.noise_clicks) * p / p.sum() + cfg.noise_clicks / n_c
            clicked = set(rng.choice(n_c, size=n_click, replace=False, p=p / p.sum()).tolist())
            when = base + timedelta(days=day, seconds=int(rng.integers(0, 86400)))
            split = "dev" if day == cfg.days - 1 else "train"
            imp = " ".join(f"N{c + 1}-{int(j in clicked)}" for j, c in enumerate(cands))
            hist = " ".join(f"N{h + 1}" for h in histories[u])
            rows[split].append((when, f"U{u + 1}", hist, imp))

    counts = {"items": cfg.items, "users": cfg.users}
    out_dir = Path(out_dir)
    for split, entries in rows.items():
        d = out_dir / split
        d.mkdir(parents=True, exist_ok=True)
        (d / "news.tsv").write_text("\n".join(news_lines) + "\n", encoding="utf-8")
        entries.sort(key=lambda e: e[0])
        lines = [f"{i + 1}\t{uid}\t{_fmt_time(when)}\t{hist}\t{imp}"
                 for i, (when, uid, hist, imp) in enumerate(entries)]
        (d / "behaviors.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[f"{split}_impressions"] = len(entries)
    return counts


def _fmt_time(when: datetime) -> str:
    """MIND writes times without leading zeros: ``11/9/2019 8:05:22 AM``."""
    hour12 = when.hour % 12 or 12
    ampm = "AM" if when.hour < 12 else "PM"
    return f"{when.month}/{when.day}/{when.year} {hour12}:{when.minute:02d}:{when.second:02d} {ampm}"
