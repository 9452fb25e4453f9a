"""Item statistics: counts, the CTR prior, files, and no leakage from the future into training features."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from genrec.core.mind import Impression
from genrec.core.stats import (
    CF,
    N_COUNTS,
    BetaPrior,
    ItemStats,
    StatsError,
    collaborative_vectors,
    stats_as_of,
    validate_counts,
)

T0 = datetime(2020, 1, 1)


def imp(k: int, user: str, minutes: int, history: tuple[str, ...], clicks: dict[str, int]) -> Impression:
    return Impression(f"i{k}", user, T0 + timedelta(minutes=minutes), history, tuple(clicks), tuple(clicks.values()))


LOG = [
    imp(0, "u1", 0, ("a",), {"b": 1, "c": 0}),
    imp(1, "u2", 5, ("a", "b"), {"b": 1, "c": 0, "d": 1}),
    imp(2, "u1", 5, ("a",), {"c": 1, "d": 0}),           # same time as impression 1
    imp(3, "u1", 9, ("a", "b"), {"b": 0, "c": 0}),
]


def test_final_counts_and_prior():
    st = ItemStats.from_impressions(LOG)
    got = dict(zip(st.ids, st.counts[:, :N_COUNTS].tolist()))
    # exposures, clicks, distinct users with the item in their history
    assert got["a"] == [0, 0, 2] and got["b"] == [3, 2, 2] and got["c"] == [4, 1, 0] and got["d"] == [2, 1, 0]
    assert st.lookup(["d", "zzz"])[:, :N_COUNTS].tolist() == [[2, 1, 0], [0, 0, 0]]   # unknown id -> zeros
    assert not st.lookup(["zzz"]).any()
    p = BetaPrior.fit(np.array([10, 10, 10, 10.0]), np.array([1, 2, 3, 8.0]))
    assert 0 < p.alpha < p.beta and p.mean == pytest.approx(0.35)


def test_as_of_counts_only_strictly_earlier_events():
    rows = {"a": 1, "b": 2, "c": 3, "d": 4}
    hist = np.array([[rows[h] for h in i.history] + [0] * (2 - len(i.history)) for i in LOG])
    cands = [np.array([rows[c] for c in i.candidates]) for i in LOG]
    h, c = stats_as_of(LOG, LOG, hist, cands, rows, 5)
    h, c = h[..., :N_COUNTS], [x[:, :N_COUNTS] for x in c]
    assert c[0].sum() == 0 and h[0].sum() == 0                 # the first impression sees nothing
    # impressions 1 and 2 (minute 5) see impression 0 only -- not each other, not themselves
    assert c[1].tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 0]]   # b: shown and clicked once
    assert c[2].tolist() == [[1, 0, 0], [0, 0, 0]]
    # impression 3 (minute 9) sees 0, 1 and 2; u2's history entry of "b" counts from minute 5
    assert c[3].tolist() == [[2, 2, 1], [3, 1, 0]]
    assert h[3, 0].tolist() == [0, 0, 2]                        # "a": two users' histories


def test_save_load_and_validation(tmp_path):
    st = ItemStats.from_impressions(LOG)
    back = ItemStats.load(st.save(tmp_path / "s"))
    assert back.ids == st.ids and np.array_equal(back.counts, st.counts) and back.prior == st.prior
    ok = np.zeros((2, st.counts.shape[1]))
    ok[:, N_COUNTS:] = -0.5                                    # a collaborative vector may be negative
    validate_counts(ok, "candidate_stats")

    def poke(r: int, c: int, v: float) -> np.ndarray:
        bad = ok.copy()
        bad[r, c] = v
        return bad

    with pytest.raises(StatsError, match=r"candidate_stats\[1, 2\] \(history_users\)"):
        validate_counts(poke(1, 2, np.nan), "candidate_stats")
    with pytest.raises(StatsError, match="finite and >= 0"):
        validate_counts(poke(0, 0, -1.0), "history_stats")
    with pytest.raises(StatsError, match=r"\[0, 5\] \(cf2\) = .*inf.*must be finite$"):
        validate_counts(poke(0, 5, np.inf), "history_stats")
    with pytest.raises(StatsError, match="expected shape"):
        validate_counts(np.zeros((2, 4)), "history_stats")
    with pytest.raises(StatsError, match="no item statistics"):
        ItemStats.load(tmp_path / "missing")


def test_collaborative_vectors_follow_who_clicked_not_what():
    # users 0-9 click a and b, users 10-19 click c and d; e is clicked by everyone; f by no one
    hist = [("a", "b", "e")] * 10 + [("c", "d", "e")] * 10
    rows = {k: i for i, k in enumerate("xabcdef")}            # row 0 = padding
    vec = collaborative_vectors(hist, rows, len(rows), dim=4)
    cos = lambda x, y: float(vec[rows[x]] @ vec[rows[y]])     # noqa: E731  (rows are unit or zero)
    assert cos("a", "b") == pytest.approx(1, abs=1e-5) and cos("c", "d") == pytest.approx(1, abs=1e-5)
    assert abs(cos("a", "c")) < 1e-5 and cos("a", "e") == pytest.approx(0.5 ** 0.5, abs=1e-4)
    assert not vec[rows["f"]].any() and not vec[0].any()      # in no history -> the zero vector (unknown)
    assert np.array_equal(vec, collaborative_vectors(hist, rows, len(rows), dim=4))   # deterministic



def test_stale_statistics_treat_items_first_seen_since_as_unknown():
    """Served statistics are as old as the last stats build: with staleness, an impression sees the counts
    as of that much earlier, and an item with no event by then is unknown (zero counts, no vector)."""
    rows = {"a": 1, "b": 2, "c": 3, "d": 4}
    hist = np.array([[rows[h] for h in i.history] + [0] * (2 - len(i.history)) for i in LOG])
    cands = [np.array([rows[c] for c in i.candidates]) for i in LOG]
    fresh_h, fresh_c = stats_as_of(LOG, LOG, hist, cands, rows, 5)
    # impression 3 at minute 9, 4 minutes stale: as of minute 5 it sees impression 0 only
    h, c = stats_as_of(LOG, LOG, hist, cands, rows, 5, staleness=[0, 0, 0, 240])
    assert c[3][:, :N_COUNTS].tolist() == [[1, 1, 0], [1, 0, 0]]
    assert np.array_equal(h[:3], fresh_h[:3]) and all(np.array_equal(x, y) for x, y in zip(c[:3], fresh_c[:3]))
    # 10 minutes stale: nothing had happened yet -- b and c unknown, vectors included
    _, c = stats_as_of(LOG, LOG, hist, cands, rows, 5, staleness=[0, 0, 0, 600])
    assert not c[3].any() and fresh_c[3][:, CF].any()
    with pytest.raises(ValueError, match="staleness"):
        stats_as_of(LOG, LOG, hist, cands, rows, 5, staleness=[0, 0, -1, 0])

def test_training_vectors_come_from_earliest_histories_serving_from_latest():
    # u1's history grows from (a,) to (a, b) inside the log: b was clicked in impression 0. Training must not
    # learn b's vector from that click (it is impression 0's label); serving may.
    rows = {"a": 1, "b": 2, "c": 3, "d": 4}
    h, _ = stats_as_of(LOG, LOG[3:], np.array([[1, 2]]), [np.array([3])], rows, 5)
    cos_train = float(h[0, 0, CF] @ h[0, 1, CF])
    served = ItemStats.from_impressions(LOG).lookup(["a", "b"])[:, CF]
    assert cos_train == pytest.approx(0.5 ** 0.5, abs=1e-4)   # u1 {a}, u2 {a, b}
    assert float(served[0] @ served[1]) == pytest.approx(1, abs=1e-4)   # both users {a, b}
