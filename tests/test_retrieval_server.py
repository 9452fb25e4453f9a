"""Whole-catalog retrieval through a real tritonserver: no candidates in the request, the `recommend` model
retrieves from the index (IVF over retrieval vectors) and re-ranks with the heads.

Compared with the exact full ranking done in process with the same graphs (heads.onnx over *every* indexed item),
on the tiny project-generated data; bad input gets INVALID_ARGUMENT naming what is wrong, the server stays up.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from triton_helpers import bytes_input
from tritonclient.utils import InferenceServerException
from workers import THREADS

from genrec.client import InvalidRequest, RecommenderClient
from genrec.core.contract import MAX_EXCLUDE

M = 200


@pytest.fixture(scope="module")
def retrieval_index(fp32_index, artifacts, tmp_path_factory):
    """A copy of the tiny fp32 index with retrieval files; IVF forced (exact_below=0) so the ANN path runs."""
    from genrec.core.retrieval import RetrievalConfig, build_index_retrieval

    folder = tmp_path_factory.mktemp("retrieval-index") / "index"
    shutil.copytree(fp32_index, folder)
    built = build_index_retrieval(folder, artifacts.root, RetrievalConfig(nprobe=32, exact_below=0, threads=THREADS),
                                  log=lambda _m: None)
    assert len(built) == 1
    return folder


@pytest.fixture(scope="module")
def served_stats(item_stats_dir, tmp_path_factory):
    """This module's own copy of the item statistics (the swap test rewrites it; the server re-checks it often)."""
    folder = tmp_path_factory.mktemp("retrieval-stats") / "stats"
    shutil.copytree(item_stats_dir, folder)
    return folder


SWAP_REFRESH_MS = 20


@pytest.fixture(scope="module")
def retrieval_server(artifacts, retrieval_index, served_stats, tmp_path_factory):
    from genrec.model_repository.builder import RepositoryConfig, build_repository
    from genrec.server.launcher import running_server

    repo = build_repository(artifacts.root, tmp_path_factory.mktemp("retrieval-repo") / "repo",
                            RepositoryConfig(precision="fp32", index=str(retrieval_index), recommend_instances=1,
                                             stats=str(served_stats), retrieval_m=M,
                                             stats_refresh_ms=SWAP_REFRESH_MS))
    with running_server(repo) as srv:
        yield srv


def _users(tiny_data, index, n=150):
    """Dev impressions as (indexed history ids, clicked indexed ids outside the history), with a target."""
    from genrec.core.mind import load_split

    split = load_split(tiny_data / "dev")
    out = []
    for imp in split.impressions:
        hist = [h for h in imp.history[-50:] if index.rows([h.encode()])[0] >= 0]
        targets = {c for c, y in zip(imp.candidates, imp.labels) if y == 1 and c not in hist
                   and index.rows([c.encode()])[0] >= 0}
        if targets:
            out.append((hist, targets))
        if len(out) == n:
            break
    return out


def test_served_retrieval_recall_matches_the_exact_full_ranking(retrieval_server, retrieval_index, artifacts,
                                                                 item_stats_dir, tiny_data):
    from genrec.core.index import ItemIndex
    from genrec.core.runtime import OrtHeads
    from genrec.core.statstore import StatsTable
    from genrec.metrics import topk_metrics

    index = ItemIndex(retrieval_index)
    users = _users(tiny_data, index)
    assert len(users) >= 50
    heads = OrtHeads(artifacts.graph("fp32", "heads"), threads=THREADS)
    stats = StatsTable.read(item_stats_dir)
    all_ids = [bytes(i).decode() for i in index.ids]
    all_stats = stats.lookup(all_ids)
    client = RecommenderClient(retrieval_server.grpc_url, timeout=30)
    exact, served, overlap = [], [], []
    for hist, _ in users:
        rows = index.rows([h.encode() for h in hist])
        hv, _, hc, hs = index.take(rows)
        cand = np.setdiff1d(np.arange(len(index)), rows)                         # every indexed item but the history
        out = heads(np.concatenate([hv, index.vectors[cand]]), hc, hs, index.category[cand],
                    index.subcategory[cand], all_stats[rows], all_stats[cand])
        top = cand[np.argsort(-out["scores"], kind="stable")[:10]]
        exact.append([all_ids[r] for r in top])
        recs = client.recommend(history_ids=hist, k=10)
        got = [it.item_id for it in recs.items]
        assert len(got) == 10 and not set(got) & set(hist)
        assert all(it.source == "index" for it in recs.items)
        served.append(got)
        overlap.append(len(set(got) & set(exact[-1])) / 10)
    targets = [t for _, t in users]
    r_exact = topk_metrics(exact, targets, (10,))["recall@10"]
    r_served = topk_metrics(served, targets, (10,))["recall@10"]
    print(f"\nrecall@10 exact {r_exact:.4f} served {r_served:.4f}, top-10 overlap {np.mean(overlap):.3f} "
          f"({len(users)} users, {len(index)} items)")
    assert r_exact > 0.02
    assert abs(r_served - r_exact) <= 0.02 * r_exact + 1e-9
    assert np.mean(overlap) >= 0.9


def test_retrieval_filters_and_the_cold_user(retrieval_server, retrieval_index, tiny_data):
    from genrec.core.index import ItemIndex

    index = ItemIndex(retrieval_index)
    hist, _ = _users(tiny_data, index, 1)[0]
    client = RecommenderClient(retrieval_server.grpc_url, timeout=30)
    first = [it.item_id for it in client.recommend(history_ids=hist, k=20).items]
    again = client.recommend(history_ids=hist, k=20, exclude_ids=first[:5])
    assert not set(first[:5]) & {it.item_id for it in again.items} and len(again.items) == 20
    cats = sorted({c for c in (it.category for it in again.items)} - {""})
    names = client.served(client.index_model).categories
    wanted = names[int(index.category[index.rows([first[0].encode()])[0]])]
    only = client.recommend(history_ids=hist, k=5, categories=[wanted.upper()])   # names are case-insensitive
    got_cats = index.category[index.rows([it.item_id.encode() for it in only.items])]
    assert len(only.items) == 5 and {names[int(c)] for c in got_cats} == {wanted}, cats
    with_hist = client.recommend(history_ids=hist, k=M, include_history=True)
    assert set(hist) & {it.item_id for it in with_hist.items}       # the history is retrievable when asked
    cold = client.recommend(history_ids=[], k=10)                    # documented: the model's cold-start answer
    assert len(cold.items) == 10 and len({it.item_id for it in cold.items}) == 10
    assert all(not it.because for it in cold.items)


def test_bad_retrieval_input_is_invalid_argument_and_the_server_stays_up(retrieval_server, retrieval_index,
                                                                          tiny_data):
    from genrec.core.index import ItemIndex

    hist = _users(tiny_data, ItemIndex(retrieval_index), 1)[0][0]
    raw = grpcclient.InferenceServerClient(retrieval_server.grpc_url)

    def infer(**extra):
        inputs = [bytes_input("history_id", hist),
                  *(bytes_input(n, []) for n in ("new_item_id", "new_item_text", "new_item_category",
                                                  "new_item_subcategory"))]
        for name, (dtype, value) in extra.items():
            if dtype == "BYTES":
                inputs.append(bytes_input(name, value))
            else:
                inp = grpcclient.InferInput(name, [len(value)], dtype)
                inp.set_data_from_numpy(np.asarray(value, dtype={"INT32": np.int32, "BOOL": bool}[dtype]))
                inputs.append(inp)
        with pytest.raises(InferenceServerException) as err:
            raw.infer("recommend", inputs)
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        return err.value.message()

    assert "k is 0; send 1 to 200" in infer(k=("INT32", [0]))
    assert "k is 201; send 1 to 200" in infer(k=("INT32", [201]))
    msg = infer(k=("INT32", [3, 4]))                  # Triton checks the declared shape [1] itself
    assert "input 'k'" in msg and "Expected [1], got [2]" in msg
    known = RecommenderClient(retrieval_server.grpc_url).served("recommend").categories[1]
    assert "restrict_category[1] 'no-such-topic' is not a category" in infer(
        restrict_category=("BYTES", [known, "no-such-topic"]))
    assert "restrict_category is empty" in infer(restrict_category=("BYTES", []))
    assert "exclude_id[0]" in infer(exclude_id=("BYTES", [""]))
    # issue 27.7: exclude_id is bounded like every other list (each id widened the ANN fetch by one row)
    too_many = [f"x{i}" for i in range(MAX_EXCLUDE + 1)]
    assert f"exclude_id has {MAX_EXCLUDE + 1} ids; the limit is {MAX_EXCLUDE}" in infer(exclude_id=("BYTES", too_many))
    assert "restrict_category has" in infer(restrict_category=("BYTES", [known] * 10_000))
    # issue 27.8: retrieval's options with candidates were ignored by the server: refused, naming them
    cands = hist[:2]
    assert "k, exclude_id only apply to retrieval" in infer(candidate_id=("BYTES", cands), k=("INT32", [3]),
                                                            exclude_id=("BYTES", hist[:1]))
    assert "include_history only apply to retrieval" in infer(candidate_id=("BYTES", cands),
                                                               include_history=("BOOL", [True]))
    client = RecommenderClient(retrieval_server.grpc_url, timeout=30)
    with pytest.raises(InvalidRequest, match="k is 0"):           # the client checks first, same message
        client.recommend(history_ids=hist, k=0)
    with pytest.raises(InvalidRequest, match=f"exclude_id has {MAX_EXCLUDE + 1} ids"):
        client.recommend(history_ids=hist, exclude_ids=too_many)
    assert len(client.recommend(history_ids=hist, exclude_ids=too_many[:MAX_EXCLUDE], k=3).items) == 3
    for extra, names in (({"k": 3}, "k"), ({"exclude_ids": hist[:1]}, "exclude_id"),
                         ({"categories": [known]}, "restrict_category"),
                         ({"include_history": True}, "include_history")):
        with pytest.raises(InvalidRequest, match=f"^{names} only apply to retrieval"):   # the client dropped these
            client.recommend(history_ids=hist, candidate_ids=cands, **extra)
        with pytest.raises(InvalidRequest, match=f"^{names} only apply to retrieval"):   # ...and on the text path
            client.recommend(["a title"], ["another title"], **extra)
    assert raw.is_server_ready()
    assert len(client.recommend(history_ids=hist, k=3).items) == 3


def test_served_retrieval_is_the_ann_items_plus_the_popular_ones_reranked(retrieval_server, retrieval_index,
                                                                          artifacts, item_stats_dir, tiny_data):
    """What the server answers = the heads' best k of (ANN top M + the most popular items not among them), the
    same files and graphs computed in process; and the popular source changes answers (else this proves nothing)."""
    from genrec.core.artifacts import Artifacts
    from genrec.core.index import ItemIndex
    from genrec.core.retrieval import PopularPool, Retriever, has_retrieval
    from genrec.core.runtime import OrtHeads
    from genrec.core.statstore import StatsTable

    art = Artifacts.load(artifacts.root)
    prec = has_retrieval(art)
    retriever = Retriever(art.graph(prec, "retrieval"), art.sha256(prec, "retrieval"), log=lambda _m: None)
    index = ItemIndex(retrieval_index)
    heads = OrtHeads(artifacts.graph("fp32", "heads"), threads=THREADS)
    stats = StatsTable.read(item_stats_dir)
    pool = PopularPool.build(index, stats, 1024)
    client = RecommenderClient(retrieval_server.grpc_url, timeout=30)
    popular_in_top, users = 0, [h for h, _ in _users(tiny_data, index, 40)] + [[]]
    for hist in users:
        rows = index.rows([h.encode() for h in hist]) if hist else np.zeros(0, np.int64)
        hv, _, hc, hs = index.take(rows)
        user = retriever.user_vector(hv, hc, hs)
        ann, _ = retriever.search(index, user, M, rows)
        extra = pool.pick(50, np.concatenate([rows, ann]))
        cand = np.concatenate([ann, extra])
        cv, _, cc, cs = index.take(cand)
        ids = [bytes(i) for i in index.ids[cand]]
        out = heads(np.concatenate([hv, cv]), hc, hs, cc, cs, stats.lookup([bytes(i) for i in index.ids[rows]]),
                    stats.lookup(ids))
        best = np.argsort(-out["scores"], kind="stable")[:10]
        expected = [ids[i].decode() for i in best]
        got = [it.item_id for it in client.recommend(history_ids=hist, k=10).items]
        assert got == expected, (hist[:3], got, expected)
        popular_in_top += int((best >= len(ann)).any())
    assert popular_in_top >= 3, "no answer used a popular item: the second source is not exercised"


def test_a_stats_swap_under_retrieval_load_never_mixes_two_versions(retrieval_server, retrieval_index, served_stats,
                                                                    tiny_data, tmp_path):
    """Issue 27.6: retrieval read the live stats table three times per request (history stats, candidates' stats,
    the popular pool), so a swap between the reads mixed two versions. The folder is flipped between two versions
    (train and dev statistics) every few ms while three callers retrieve: every answer must be one version's."""
    import json
    import os
    import threading

    from genrec.core.index import ItemIndex
    from genrec.core.statstore import build_stats

    other = build_stats([tiny_data / "dev" / "behaviors.tsv"], tmp_path / "dev", log=lambda _m: None)
    for f in other.iterdir():                                  # content-named data files: both versions side by side
        if f.name != "stats.json":
            shutil.copy(f, served_stats / f.name)
    manifests = [(served_stats / "stats.json").read_bytes(), (other / "stats.json").read_bytes()]
    assert json.loads(manifests[0])["files"] != json.loads(manifests[1])["files"]

    def publish(version: int) -> None:
        tmp = served_stats / "stats.json.swap"
        tmp.write_bytes(manifests[version])
        os.replace(tmp, served_stats / "stats.json")            # a new inode: the server's next check reloads

    client = RecommenderClient(retrieval_server.grpc_url, timeout=30)
    users = [h for h, _ in _users(tiny_data, ItemIndex(retrieval_index), 6)] + [[]]

    def answers() -> list[list[tuple[str, float]]]:
        return [[(it.item_id, it.score) for it in client.recommend(history_ids=u, k=10).items] for u in users]

    def same(a, b) -> bool:
        return [i for i, _ in a] == [i for i, _ in b] and np.allclose([s for _, s in a], [s for _, s in b],
                                                                         atol=1e-5)

    pure = []
    for version in (0, 1):
        publish(version)
        time.sleep(20 * SWAP_REFRESH_MS / 1000)
        pure.append(answers())
    assert sum(not same(a, b) for a, b in zip(*pure)) >= 4, "the two versions answer alike: this proves nothing"
    stop, bad, done = threading.Event(), [], []

    def caller(k: int) -> None:
        c = RecommenderClient(retrieval_server.grpc_url, timeout=30)
        i = k
        while not stop.is_set():
            u = i % len(users)
            got = [(it.item_id, it.score) for it in c.recommend(history_ids=users[u], k=10).items]
            if not (same(got, pure[0][u]) or same(got, pure[1][u])):
                bad.append((u, got[:3]))
            done.append(u)
            i += 3

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(0)
    try:
        for flip in range(150):                                 # ~150 swaps over ~4 s
            publish(flip % 2)
            time.sleep(float(rng.uniform(0.5, 1.5)) * SWAP_REFRESH_MS / 1000)
    finally:
        stop.set()
        for t in threads:
            t.join()
        publish(0)
    print(f"\nstats swap under retrieval load: {len(done)} answers, {len(bad)} mixed")
    assert len(done) >= 100 and not bad, bad[:3]


def test_retrieval_without_explanations_returns_the_same_items_and_scores(retrieval_server, retrieval_index,
                                                                          tiny_data):
    """explain=False asks for every output but the explanation; the recommend model then runs the heads without
    their leave-one-out part (issue 28): the same items, scores and tasks, and no reasons."""
    from genrec.core.index import ItemIndex

    index = ItemIndex(retrieval_index)
    client = RecommenderClient(retrieval_server.grpc_url, timeout=30)
    for hist, _ in _users(tiny_data, index, 3):
        full = client.recommend(history_ids=hist, k=20)
        lean = client.recommend(history_ids=hist, k=20, explain=False)
        assert [(it.item_id, it.score, it.tasks) for it in lean] == [(it.item_id, it.score, it.tasks) for it in full]
        assert any(it.because for it in full) and not any(it.because for it in lean)
