"""Ranking metrics with MIND's definitions, per impression then averaged over impressions.

* AUC: probability a clicked candidate outscores a non-clicked one (ties count 1/2).
* MRR: mean over clicked items of 1/rank among all candidates (MIND's ``mrr_score``).
* nDCG@k: MIND's ``ndcg_score`` with gains 2^rel - 1 and log2(rank + 1) discounts.
Impressions whose candidates are all clicked or all unclicked (or that have no known candidate left) have no
AUC and are skipped for every metric (MIND dev has none); ``RankingMetrics.skipped`` counts them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _ranked(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    return np.asarray(labels, dtype=np.float64)[order]


def mrr(labels: np.ndarray, scores: np.ndarray) -> float:
    ranked = _ranked(labels, scores)
    return float((ranked / np.arange(1, len(ranked) + 1)).sum() / ranked.sum())


def dcg(labels_in_rank_order: np.ndarray, k: int) -> float:
    rel = labels_in_rank_order[:k]
    return float(((2.0 ** rel - 1.0) / np.log2(np.arange(2, len(rel) + 2))).sum())


def ndcg(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    ideal = dcg(np.sort(np.asarray(labels, dtype=np.float64))[::-1], k)
    return dcg(_ranked(labels, scores), k) / ideal if ideal > 0 else 0.0


@dataclasses.dataclass
class RankingMetrics:
    group_auc: float
    mrr: float
    ndcg5: float
    ndcg10: float
    impressions: int
    skipped: int

    def as_dict(self) -> dict[str, float | int]:
        return {"group_auc": self.group_auc, "mrr": self.mrr, "ndcg@5": self.ndcg5, "ndcg@10": self.ndcg10,
                "impressions": self.impressions, "skipped_impressions": self.skipped}


def ranking_metrics(groups: Iterable[tuple[np.ndarray, np.ndarray]]) -> RankingMetrics:
    """``groups`` yields (labels, scores) per impression."""
    aucs, mrrs, n5, n10 = [], [], [], []
    skipped = 0
    for labels, scores in groups:
        labels = np.asarray(labels)
        if labels.size == 0 or labels.min() == labels.max():   # e.g. every candidate id was unknown
            skipped += 1
            continue
        aucs.append(auc(labels, scores))
        mrrs.append(mrr(labels, scores))
        n5.append(ndcg(labels, scores, 5))
        n10.append(ndcg(labels, scores, 10))
    if not aucs:
        raise ValueError("no impression has both clicked and non-clicked candidates: nothing to evaluate")
    return RankingMetrics(float(np.mean(aucs)), float(np.mean(mrrs)), float(np.mean(n5)), float(np.mean(n10)),
                          len(aucs), skipped)


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b between two score vectors (O(n^2), for the small parity sets it is used on)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2:
        return 1.0
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    concordant_minus_discordant = float((da * db).sum())
    n_a, n_b = float((da != 0).sum()), float((db != 0).sum())
    if n_a == 0 or n_b == 0:
        return 1.0 if n_a == n_b else 0.0
    return concordant_minus_discordant / np.sqrt(n_a * n_b)


def topk_metrics(ranked: Iterable[Iterable], targets: Iterable[Iterable], ks: Iterable[int]) -> dict[str, float]:
    """Full-ranking (retrieval) metrics, averaged over users: per user, ``ranked`` is the list the system
    returned (best first, at least max(ks) long where the catalog allows) and ``targets`` the items the user
    clicked (history items already excluded from both).

    Recall@k = |top k ∩ targets| / |targets|; NDCG@k with binary gains: sum over hits of 1 / log2(rank + 1),
    divided by the ideal sum over min(k, |targets|) hits. Users without targets are not counted.
    """
    ks = sorted(set(int(k) for k in ks))
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    n = 0
    for got, want in zip(ranked, targets):
        want = set(want)
        if not want:
            continue
        n += 1
        hit = np.array([x in want for x in list(got)[: ks[-1]]], dtype=np.float64)
        disc = 1.0 / np.log2(np.arange(2, ks[-1] + 2))
        for k in ks:
            sums[f"recall@{k}"] += hit[:k].sum() / len(want)
            sums[f"ndcg@{k}"] += (hit[:k] * disc[: len(hit[:k])]).sum() / disc[: min(k, len(want))].sum()
    return {**{key: (v / n if n else float("nan")) for key, v in sums.items()}, "users": n}


PAIR_KINDS = ("known", "new", "mixed")   # both candidates of a pair known / both new / one of each


def pair_group_auc(groups: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Group-AUC split by what the (clicked, non-clicked) pairs hold: ``groups`` yields (labels, scores, new) per
    impression, ``new`` True for a candidate without item statistics (new to the model's training log).

    Per impression, AUC over its pairs of one kind (PAIR_KINDS: both known, both new, one new and one known; ties
    count 1/2), averaged over the impressions that have such a pair; plus ``with_new`` (pairs with at least one new
    candidate: new + mixed). Each entry: {"group_auc", "impressions", "pairs"}; an entry without pairs is absent.
    The plain group-AUC is the pair-weighted mix of these within each impression, so the split says where a model
    gains or loses: ranking new items among themselves, placing them against known ones, or the known ones."""
    kinds = (*PAIR_KINDS, "with_new")
    sums = {k: [0.0, 0, 0] for k in kinds}                  # sum of AUCs, impressions, pairs
    for labels, scores, new in groups:
        labels, new = np.asarray(labels, bool), np.asarray(new, bool)
        scores = np.asarray(scores, np.float64)
        pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
        if not len(pos) or not len(neg):
            continue
        diff = scores[pos][:, None] - scores[neg][None, :]              # (P, N)
        win = (diff > 0) + 0.5 * (diff == 0)
        n_new = new[pos][:, None].astype(int) + new[neg][None, :]      # 0, 1 or 2 new in the pair
        for kind, sel in (("known", n_new == 0), ("new", n_new == 2), ("mixed", n_new == 1),
                          ("with_new", n_new > 0)):
            count = int(sel.sum())
            if count:
                acc = sums[kind]
                acc[0] += float(win[sel].mean())
                acc[1] += 1
                acc[2] += count
    return {k: {"group_auc": s / n, "impressions": n, "pairs": p} for k, (s, n, p) in sums.items() if n}
