"""Metrics against hand-computed values (MIND definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genrec.metrics import auc, kendall_tau, mrr, ndcg, ranking_metrics


def test_auc_hand_examples():
    assert auc([1, 0, 0], [0.9, 0.1, 0.2]) == 1.0
    assert auc([1, 0, 0], [0.1, 0.9, 0.2]) == 0.0
    # positives {0.8, 0.3}, negatives {0.5, 0.1}: pairs won 1+1+0+1 = 3 of 4
    assert auc([1, 0, 1, 0], [0.8, 0.5, 0.3, 0.1]) == 0.75
    # a tie counts one half
    assert auc([1, 0], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError):
        auc([1, 1], [0.1, 0.2])


def test_mrr_hand_example():
    # ranking by score: c(0), a(1), d(0), b(1) -> clicked at ranks 2 and 4 -> (1/2 + 1/4) / 2
    assert mrr([1, 1, 0, 0], [0.7, 0.1, 0.9, 0.5]) == pytest.approx(0.375)


def test_ndcg_hand_example():
    labels, scores = [1, 0, 1, 0], [0.7, 0.9, 0.1, 0.5]     # ranked labels: 0, 1, 0, 1
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg(labels, scores, 10) == pytest.approx(dcg / ideal)
    assert ndcg(labels, scores, 1) == 0.0                   # top-1 is unclicked
    assert ndcg(labels, scores, 2) == pytest.approx((1 / math.log2(3)) / ideal)


def test_group_metrics_average_per_impression_and_skip_degenerate():
    groups = [(np.array([1, 0]), np.array([0.9, 0.1])),      # auc 1, mrr 1
              (np.array([1, 0]), np.array([0.1, 0.9])),      # auc 0, mrr 0.5
              (np.array([1, 1]), np.array([0.1, 0.9]))]      # all clicked: skipped
    m = ranking_metrics(groups)
    assert (m.group_auc, m.mrr, m.impressions, m.skipped) == (0.5, 0.75, 2, 1)
    assert set(m.as_dict()) >= {"group_auc", "mrr", "ndcg@5", "ndcg@10"}


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_impression_without_known_candidates_is_skipped_and_counted():
    import numpy as np

    from genrec.metrics import ranking_metrics

    m = ranking_metrics([(np.array([1, 0]), np.array([0.9, 0.1])), (np.array([], dtype=np.int8), np.array([]))])
    assert m.group_auc == 1.0 and m.impressions == 1 and m.skipped == 1


def test_pair_group_auc_splits_pairs_by_what_they_hold():
    from genrec.metrics import pair_group_auc

    labels = np.array([1, 0, 1, 0])
    new = np.array([False, False, True, True])
    #                 known+  known-  new+  new-
    scores = np.array([0.9, 0.1, 0.05, 0.5])
    out = pair_group_auc([(labels, scores, new)])
    assert out["known"]["group_auc"] == 1.0 and out["known"]["pairs"] == 1        # 0.9 > 0.1
    assert out["new"]["group_auc"] == 0.0 and out["new"]["pairs"] == 1            # 0.05 < 0.5
    assert out["mixed"]["group_auc"] == 0.5 and out["mixed"]["pairs"] == 2        # 0.9 > 0.5, 0.05 < 0.1
    assert out["with_new"]["pairs"] == 3
    # ties count 1/2; an impression without a pair of a kind does not count for that kind
    tied = pair_group_auc([(np.array([1, 0]), np.array([0.3, 0.3]), np.array([False, False]))])
    assert tied == {"known": {"group_auc": 0.5, "impressions": 1, "pairs": 1}}
