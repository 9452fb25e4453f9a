"""Retrieval vectors and the ANN index: retrieval.onnx reproduces the heads' match term (and its gate fails when
it does not), a cold user gets the sentinel, the IVF index finds what exact search finds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genrec.core.contract import N_STATS


@pytest.fixture(scope="module")
def fp32_export(artifacts):
    """The session's export (every export writes and gates retrieval.onnx): read here, never written."""
    assert "fp32" in artifacts.precisions
    return artifacts


@pytest.fixture(scope="module")
def model(trained_run):
    from genrec.checkpoint import Checkpoint

    ckpt = Checkpoint.load(trained_run)
    return ckpt, ckpt.build_model().eval()


def test_retrieval_graph_is_exported_gated_and_reproduces_the_match_term(fp32_export, model):
    import json

    import torch

    from genrec.core.retrieval import OrtRetrieval

    ckpt, m = model
    report = json.loads((fp32_export.root / "export_report.json").read_text())
    par = report["precisions"]["fp32"]["retrieval_parity"]
    assert par["retrieval_match_max_abs_diff"] <= par["tolerance"]
    ort = OrtRetrieval(fp32_export.graph("fp32", "retrieval"), threads=1)
    d = ckpt.model_config.dim
    g = np.random.default_rng(0)
    hv, cv = g.standard_normal((7, d)).astype(np.float32), g.standard_normal((30, d)).astype(np.float32)
    hc, cc = g.integers(0, ckpt.model_config.n_categories, 7), g.integers(0, ckpt.model_config.n_categories, 30)
    hs, cs = g.integers(0, ckpt.model_config.n_subcategories, 7), g.integers(0, ckpt.model_config.n_subcategories, 30)
    score = ort.item_repr(cv, cc, cs) @ ort.user_vector(hv, hc, hs) / math.sqrt(d)
    # the heads' match term = click logit minus the feature term (MLP + wide), from the PyTorch model itself
    t = lambda a: torch.as_tensor(a)[None]                                          # noqa: E731
    st = lambda n: torch.zeros(1, n, N_STATS)                                            # noqa: E731
    with torch.no_grad():
        hp = m.heads
        out = hp(t(hv), torch.ones(1, 7, dtype=torch.bool), t(hc), t(hs), t(cv), t(cc), t(cs), st(7), st(30),
                 explain=False)
        feats, _ = hp.features(t(hv), torch.ones(1, 7, dtype=torch.bool), t(hc), t(hs), t(cv), t(cc), t(cs),
                               st(7), st(30))
        match = (out["click_logit"] - hp.feature_term(feats))[0].numpy()
    np.testing.assert_allclose(score, match, atol=1e-4)
    # a cold user (no history) searches with the learned sentinel, at the match term's scale
    cold = ort.user_vector(np.zeros((0, d), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    np.testing.assert_allclose(cold, (m.heads.sentinel * m.heads.match_scale).detach().numpy(), atol=1e-6)


def test_retrieval_gate_fails_on_a_graph_from_other_weights(fp32_export, model, trained_run, tmp_path):
    import copy

    import torch

    from genrec.core.contract import RETRIEVAL
    from genrec.export.convert import to_onnx
    from genrec.export.graphs import RetrievalGraph, retrieval_example_inputs
    from genrec.export.parity import ParityError, prepare, retrieval_parity

    ckpt, m = model
    other = copy.deepcopy(m)
    with torch.no_grad():
        # (a constant shift would vanish in the LayerNorm: perturb per dimension)
        noise = torch.randn(other.heads.cat_emb.weight.shape, generator=torch.Generator().manual_seed(0))
        other.heads.cat_emb.weight.add_(0.05 * noise)
    path = to_onnx(RetrievalGraph(other), retrieval_example_inputs(ckpt.model_config.dim), RETRIEVAL,
                   tmp_path / "r.onnx", 17)
    inputs = prepare(m, ckpt.parity_set[:20], ckpt.tokenizer(), ckpt.category_vocab, ckpt.subcategory_vocab)
    assert retrieval_parity(m, fp32_export.graph("fp32", "retrieval"), inputs,
                            "fp32")["retrieval_item_max_abs_diff"] < 1e-3
    with pytest.raises(ParityError, match="retrieval_max_abs_diff"):
        retrieval_parity(m, path, inputs, "fp32")


def test_ivf_index_finds_what_exact_search_finds(tmp_path):
    from genrec.benchmarks.ann import exact_topm, grow_catalog, recall
    from genrec.core.retrieval import SegmentSearcher, build_ann

    g = np.random.default_rng(1)
    centres = 3 * g.standard_normal((40, 32))                      # topics, like real item vectors have
    base = (centres[g.integers(0, 40, 300)] + g.standard_normal((300, 32))).astype(np.float32)
    items = grow_catalog(base, 30_000, 0.3, 0)
    users = items[g.integers(0, len(items), (40, 5))].mean(1)      # a user ~ a mix of the items it clicked
    _, kth = exact_topm(items, users, 200)
    build_ann(tmp_path, items, encoder_sha256="e" * 64, retrieval_sha256="r" * 64, nprobe=64, exact_below=1000)
    ivf = SegmentSearcher(tmp_path, expect_encoder_sha256="e" * 64, expect_retrieval_sha256="r" * 64)
    assert ivf.ivf is not None and ivf.manifest["nlist"] == 512            # ~4 sqrt(N), a power of two
    found = [ivf.search(u, 200)[0] for u in users]
    assert recall(items, users, found, kth, 200) >= 0.97
    # all lists probed: exactly the exact search
    ivf.ivf.nprobe = ivf.manifest["nlist"]
    assert recall(items, users, [ivf.search(u, 200)[0] for u in users], kth, 200) == 1.0
    # a small segment is searched exactly; a mismatched build is refused
    small = tmp_path / "small"
    small.mkdir()
    build_ann(small, items[:500], encoder_sha256="e" * 64, retrieval_sha256="r" * 64, nprobe=64, exact_below=1000)
    ex = SegmentSearcher(small)
    rows, scores = ex.search(users[0], 10)
    want = np.argsort(-(items[:500] @ users[0]))[:10]
    assert ex.ivf is None and rows.tolist() == want.tolist() and np.all(np.diff(scores) <= 0)
    with pytest.raises(ValueError, match="rebuild the index"):
        SegmentSearcher(small, expect_retrieval_sha256="x" * 64)



def test_popular_pool_orders_by_popularity_and_applies_the_filters(fp32_index):
    """StatsTable.most_popular: clicks + history users, ties by id; PopularPool keeps indexed items only and
    picks under exclusion and category filters, most popular first."""
    from genrec.core.contract import ITEM_STATS
    from genrec.core.index import ItemIndex
    from genrec.core.retrieval import PopularPool
    from genrec.core.statstore import StatsTable

    counts = np.zeros((6, len(ITEM_STATS)), np.float32)
    counts[:, 1] = [5, 1, 9, 0, 3, 3]          # clicks
    counts[:, 2] = [0, 1, 0, 7, 2, 2]          # history users -> popularity 5, 2, 9, 7, 5, 5
    index = ItemIndex(fp32_index)
    a, b, c, d, e = (bytes(i).decode() for i in index.ids[:5])    # five indexed ids, in id order
    table = StatsTable.from_ids([e, b, a, "not-indexed", d, c], counts)
    assert [i.decode() for i in table.most_popular(6)] == [a, "not-indexed", c, d, e, b]
    assert [i.decode() for i in table.most_popular(2)] == [a, "not-indexed"]
    assert len(table.most_popular(0)) == 0 and len(StatsTable.empty().most_popular(3)) == 0

    pool = PopularPool.build(index, table, 10)
    rows = index.rows([x.encode() for x in (a, c, d, e, b)]).tolist()
    assert pool.rows.tolist() == rows                               # "not-indexed" is left out
    assert pool.category.tolist() == index.category[rows].tolist()
    assert pool.pick(2, np.zeros(0, np.int64)).tolist() == rows[:2]
    assert pool.pick(2, np.array([rows[0]])).tolist() == rows[1:3]
    cat = int(pool.category[1])
    same = [r for r in rows if int(index.category[r]) == cat]
    assert pool.pick(9, np.zeros(0, np.int64), np.array([cat])).tolist() == same
    assert pool.pick(9, np.array([same[0]]), np.array([cat])).tolist() == same[1:]
