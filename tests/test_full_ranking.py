"""Full-ranking evaluation: every catalog item scored for every impression with clicks, history excluded.

Checked against an independent path (the ordinary candidate-list scorer given the whole catalog as candidates)
and hand-computed Recall/NDCG, so a broken ranking, a history leak or a wrong metric fails here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from genrec.metrics import topk_metrics


def test_topk_metrics_hand_example():
    # user 1: targets {a, b}; a at rank 1, b at rank 4 -> recall@2 1/2, ndcg@2 1 / (1 + 1/log2 3)
    # user 2: target {z} never returned -> 0; user 3 has no target and does not count
    out = topk_metrics([["a", "x", "y", "b"], ["x", "y", "w", "v"], ["a"]], [{"a", "b"}, {"z"}, set()], (2, 4))
    assert out["users"] == 2
    assert out["recall@2"] == pytest.approx((0.5 + 0) / 2)
    assert out["ndcg@2"] == pytest.approx((1 / (1 + 1 / math.log2(3))) / 2)
    assert out["recall@4"] == pytest.approx((1.0 + 0) / 2)
    assert out["ndcg@4"] == pytest.approx(((1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))) / 2)


@pytest.fixture(scope="module")
def evaluated(trained_run, tiny_data):
    import torch

    from genrec.checkpoint import Checkpoint
    from genrec.core.mind import load_split
    from genrec.scoring import encode_items
    from genrec.tables import ImpressionArrays, ItemTable

    ckpt = Checkpoint.load(trained_run)
    model = ckpt.build_model().eval()
    split = load_split(tiny_data / "dev", max_history=ckpt.model_config.max_history)
    table = ItemTable.from_news(split.news, ckpt.category_vocab, ckpt.subcategory_vocab, False)
    imps = ImpressionArrays.build(split.impressions[:60], table, ckpt.model_config.max_history)
    imps.attach_stats(ckpt.item_stats, table)
    with torch.no_grad():
        vectors, _ = encode_items(model, ckpt.tokenizer(), table.texts)
    return ckpt, model, table, imps, vectors


def test_full_ranking_is_the_candidate_scorer_over_the_whole_catalog(evaluated):
    from genrec.evaluate import full_ranking
    from genrec.scoring import score_impressions
    from genrec.tables import ImpressionArrays

    ckpt, model, table, imps, vectors = evaluated
    res = full_ranking(model, vectors, table, imps, ckpt.item_stats, ks=(5, 20), retrieval_m=len(table))
    assert res["users"] > 10 and res["catalog_items"] == len(table) - 1
    # independent path: each user's candidates = every catalog item not in its history, scored as a candidate list
    users = [i for i, c in enumerate(imps.candidates)
             if set(c[imps.labels[i] == 1].tolist()) - set(imps.history[i][imps.history[i] > 0].tolist())]
    cands = [np.setdiff1d(np.arange(1, len(table)), imps.history[i]) for i in users]
    sub = ImpressionArrays(imps.history[users], cands, None, [imps.user_ids[i] for i in users])
    sub.attach_stats(ckpt.item_stats, table)
    scores = score_impressions(model, vectors, table, sub, batch_size=8)["click_logit"]
    ranked = [c[np.argsort(-s, kind="stable")][:20] for c, s in zip(cands, scores)]
    targets = [set(imps.candidates[i][imps.labels[i] == 1].tolist()) - set(imps.history[i].tolist()) for i in users]
    want = topk_metrics(ranked, targets, (5, 20))
    for key in ("recall@5", "ndcg@5", "recall@20", "ndcg@20"):
        assert res["model"][key] == pytest.approx(want[key], abs=1e-9), key
    # M = the whole catalog: the two-stage ranking is the full ranking, and covers its top 10
    assert res["retrieve_then_rank"] == res["model"]
    assert res["heads_top10_in_retrieval_top_m"] == 1.0
    assert res["model"]["recall@20"] > res["popularity"]["recall@20"] * 0.5   # a ranking, not noise


def test_full_ranking_excludes_history_and_small_m_loses_little(evaluated, monkeypatch):
    from genrec import evaluate as ev

    ckpt, model, table, imps, vectors = evaluated
    seen = []
    real = ev.topk_metrics

    def spy(ranked, targets, ks):
        ranked = list(ranked)
        seen.append(ranked)
        return real(ranked, targets, ks)

    monkeypatch.setattr(ev, "topk_metrics", spy)
    res = ev.full_ranking(model, vectors, table, imps, ckpt.item_stats, ks=(10,), retrieval_m=50)
    users = [i for i, c in enumerate(imps.candidates)
             if set(c[imps.labels[i] == 1].tolist()) - set(imps.history[i][imps.history[i] > 0].tolist())]
    for ranked in seen:                                   # every system ranks only items outside the history
        for i, r in zip(users, ranked):
            assert len(r) == 10 and not set(r.tolist()) & set(imps.history[i].tolist())
    assert 0.5 <= res["heads_top10_in_retrieval_top_m"] <= 1.0


def test_evaluate_cli_full_ranking(trained_run, tiny_data):
    out = subprocess.run([sys.executable, "-m", "genrec.cli", "evaluate", "--data", str(tiny_data / "dev"),
                          "--checkpoint", str(trained_run), "--json", "--max-impressions", "40", "--full-ranking",
                          "--full-ranking-k", "10,50", "--explain-impressions", "5"],
                         capture_output=True, text=True, check=True)
    fr = json.loads(out.stdout)["full_ranking"]
    assert {"model", "retrieve_then_rank", "retrieval_only", "popularity"} <= set(fr)
    assert set(fr["model"]) == {"recall@10", "ndcg@10", "recall@50", "ndcg@50"}
    table = subprocess.run([sys.executable, "-m", "genrec.cli", "evaluate", "--data", str(tiny_data / "dev"),
                            "--checkpoint", str(trained_run), "--max-impressions", "40", "--full-ranking",
                            "--explain-impressions", "5"], capture_output=True, text=True, check=True).stdout
    assert "full ranking" in table and "popularity" in table
