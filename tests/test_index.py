"""The real-time id path: item index (build, resume, encoder stamp) and the `recommend` model."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from triton_helpers import bytes_input
from tritonclient.utils import InferenceServerException
from workers import THREADS

from genrec.client import InvalidRequest, RecommenderClient
from genrec.core.contract import ITEM_STATS
from genrec.core.errors import UserError
from genrec.core.index import IndexConfig, IndexEncoders, IndexMismatch, ItemIndex, build_index, ort_encoder
from genrec.core.mind import load_split
from genrec.core.statstore import LiveStats, StatsLoadError, StatsTable, build_stats
from genrec.model_repository.builder import RepositoryConfig, build_repository
from genrec.server.launcher import ServerError, running_server


class Interrupt(Exception):
    pass


def test_build_is_resumable_and_matches_a_fresh_build(artifacts, tiny_data, fp32_index, tmp_path):
    catalog = tiny_data / "train" / "news.tsv"
    cfg = IndexConfig(precision="fp32", chunk_size=100, threads=THREADS)

    def stop_after_three(rows: int) -> None:
        if rows >= 300:
            raise Interrupt

    with pytest.raises(Interrupt):
        build_index(catalog, artifacts.root, tmp_path / "ix", cfg, progress=False, log=lambda _m: None,
                    on_chunk=stop_after_three)
    with pytest.raises(IndexMismatch, match="incomplete \\(300 of"):
        ItemIndex(tmp_path / "ix")
    messages: list[str] = []
    encoded: list[int] = []
    build_index(catalog, artifacts.root, tmp_path / "ix", cfg, progress=False, log=messages.append,
                on_chunk=encoded.append)
    assert any("resuming at row 300" in m for m in messages)
    assert encoded[0] == 400                                  # the first 300 rows were not encoded again
    resumed, fresh = ItemIndex(tmp_path / "ix"), ItemIndex(fp32_index)
    assert len(resumed) == len(fresh) == len(load_split(tiny_data / "train").news)
    np.testing.assert_allclose(np.asarray(resumed.vectors), np.asarray(fresh.vectors), atol=1e-5)
    assert resumed.rows([b"N1", b"N5", b"missing"]).tolist()[:2] == fresh.rows([b"N1", b"N5"]).tolist()
    assert resumed.rows([b"missing"]).tolist() == [-1]


def test_the_core_encodes_with_what_its_caller_passes(artifacts, tiny_data, fp32_index, tmp_path):
    """The core imports no torch and no Ray (tests/test_imports.py): an encoder its caller did not pass is a clear
    error before anything is written, and the one passed is the one that encodes."""
    catalog = tiny_data / "train" / "news.tsv"
    for cfg, what in ((IndexConfig(precision="fp32", ray="auto"), "--ray"),
                      (IndexConfig(precision="fp32", encoder="torchscript"), "--encoder torchscript")):
        with pytest.raises(UserError, match=f"{what}: this caller .* genrec.index_encoders.ALL"):
            build_index(catalog, artifacts.root, tmp_path / "none", cfg, progress=False, log=lambda _m: None)
        assert not (tmp_path / "none").exists()
    calls: list[int] = []

    def counted(graph, cfg):
        encode = ort_encoder(graph, cfg)
        return lambda ids, mask: calls.append(len(ids)) or encode(ids, mask)

    build_index(catalog, artifacts.root, tmp_path / "ix", IndexConfig(precision="fp32", threads=THREADS),
                progress=False, log=lambda _m: None, encoders=IndexEncoders(local={"onnx": counted}))
    got, want = ItemIndex(tmp_path / "ix"), ItemIndex(fp32_index)
    assert sum(calls) == got.manifest["encoded_texts"] > 0
    np.testing.assert_allclose(np.asarray(got.vectors), np.asarray(want.vectors), atol=1e-5)


def test_index_from_another_encoder_is_refused(artifacts, fp32_index, fp32_repository, tiny_data, tmp_path):
    int8_index = build_index(tiny_data / "train" / "news.tsv", artifacts.root, tmp_path / "int8",
                             IndexConfig(precision="int8"), progress=False, log=lambda _m: None)
    # at repository build time
    with pytest.raises(IndexMismatch, match="was built by encoder"):
        build_repository(artifacts.root, tmp_path / "repo", RepositoryConfig(precision="fp32", index=str(int8_index)))
    # and by the server itself, when the index under a built repository changes
    repo = tmp_path / "repo2"
    shutil.copytree(fp32_repository, repo)
    swapped = tmp_path / "swapped"
    shutil.copytree(int8_index, swapped)
    cfg = (repo / "recommend" / "config.pbtxt").read_text()
    (repo / "recommend" / "config.pbtxt").write_text(cfg.replace(str(fp32_index.resolve()), str(swapped.resolve())))
    with pytest.raises(ServerError) as err:
        with running_server(repo, ready_timeout_s=90):
            pass
    assert "was built by encoder" in str(err.value) and "Rebuild the index" in str(err.value)


def _news(tiny_data):
    return load_split(tiny_data / "train").news


def test_id_path_scores_equal_the_text_path(server, tiny_data, item_stats_dir):
    """The id path reads vectors from the index and statistics from the stats folder; the text path gets
    the same statistics from the client: the scores agree."""
    news = _news(tiny_data)
    split = load_split(tiny_data / "dev")
    client = RecommenderClient(server.grpc_url)
    table = StatsTable.read(item_stats_dir)
    checked = 0
    for imp in split.impressions[:8]:
        hist = [h for h in imp.history if h in news]
        cands = [c for c in imp.candidates if c in news]
        by_id = client.recommend(history_ids=hist, candidate_ids=cands)
        by_text = client.recommend([news[h].title for h in hist], [news[c].title for c in cands],
                                   history_categories=[news[h].category for h in hist],
                                   history_subcategories=[news[h].subcategory for h in hist],
                                   candidate_categories=[news[c].category for c in cands],
                                   candidate_subcategories=[news[c].subcategory for c in cands],
                                   history_stats=table.lookup(hist), candidate_stats=table.lookup(cands))
        assert [it.index for it in by_id] == [it.index for it in by_text]
        np.testing.assert_allclose([it.score for it in by_id], [it.score for it in by_text], atol=1e-5)
        for a, b in zip(by_id.items[:3], by_text.items[:3]):
            np.testing.assert_allclose([x.weight for x in a.because], [x.weight for x in b.because], atol=1e-5)
        assert all(it.source == "index" for it in by_id)
        checked += 1
    assert checked == 8


def test_new_items_are_encoded_then_cached_with_the_same_scores(server, tiny_data, item_stats_dir):
    news = _news(tiny_data)
    table = StatsTable.read(item_stats_dir)
    ids = list(news)[:12]
    client = RecommenderClient(server.grpc_url)
    fresh = {"brand-new-1": ("Coach praises linebacker after playoff victory", "sports", "football_nfl"),
             "brand-new-2": ("Stocks rally as investors cheer strong earnings", "finance", "markets")}
    first = client.recommend(history_ids=ids[:6], candidate_ids=[*ids[6:], *fresh], new_items=fresh)
    second = client.recommend(history_ids=ids[:6], candidate_ids=[*ids[6:], *fresh], new_items=fresh)
    src1 = {it.item_id: it.source for it in first}
    src2 = {it.item_id: it.source for it in second}
    assert src1["brand-new-1"] == "encoded" and src2["brand-new-1"] == "cache"
    assert src1[ids[6]] == "index"
    by_text = client.recommend([news[h].title for h in ids[:6]], [*(news[c].title for c in ids[6:]),
                                                                   *(v[0] for v in fresh.values())],
                               history_categories=[news[h].category for h in ids[:6]],
                               history_subcategories=[news[h].subcategory for h in ids[:6]],
                               candidate_categories=[*(news[c].category for c in ids[6:]), "sports", "finance"],
                               candidate_subcategories=[*(news[c].subcategory for c in ids[6:]), "football_nfl",
                                                        "markets"],
                               history_stats=table.lookup(ids[:6]), candidate_stats=table.lookup([*ids[6:], *fresh]))
    want = {it.index: it.score for it in by_text}
    for recs in (first, second):
        for it in recs:
            assert it.score == pytest.approx(want[it.index], abs=1e-5)
    for it in second:          # new items carry the text they were sent with and come from the cache now
        want_text, want_source = (fresh[it.item_id][0], "cache") if it.item_id in fresh else ("", "index")
        assert (it.text, it.source) == (want_text, want_source), it


def test_id_path_reports_truncated_texts_like_the_text_path(server, tiny_data, fp32_index):
    """A new item whose text is cut to max tokens says so when encoded and again when served from the cache;
    indexed items carry the flag the index build recorded (the tokenizer's verdict on their text)."""
    news = _news(tiny_data)
    ids = list(news)[:4]
    long_text = " ".join(["the coach praised the linebacker after a long and hard fought playoff victory"] * 6)
    fresh = {"long-new": (long_text, "sports", ""), "short-new": ("Stocks rally", "finance", "")}
    client = RecommenderClient(server.grpc_url)
    for expected_source in ("encoded", "cache"):
        recs = client.recommend(history_ids=ids[:2], candidate_ids=[*ids[2:], *fresh], new_items=fresh)
        got = {it.item_id: (it.truncated, it.source) for it in recs}
        assert got["long-new"] == (True, expected_source) and got["short-new"] == (False, expected_source)
        assert got[ids[2]] == (False, "index")
    index = ItemIndex(fp32_index)
    assert int(index.truncated.sum()) == index.manifest["truncated_texts"]


def test_unknown_id_without_text_is_invalid(server, tiny_data):
    news = _news(tiny_data)
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = [bytes_input("history_id", list(news)[:2]), bytes_input("candidate_id", ["N1", "no-such-item"]),
              *(bytes_input(n, []) for n in ("new_item_id", "new_item_text", "new_item_category",
                                              "new_item_subcategory"))]
    with pytest.raises(InferenceServerException) as err:
        raw.infer("recommend", inputs)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "candidate_id[1] 'no-such-item' is not in the index; send its text in new_item_*" in err.value.message()
    client = RecommenderClient(server.grpc_url)
    with pytest.raises(InvalidRequest, match="not both"):
        client.recommend(["a text"], candidate_ids=["N1"])
    with pytest.raises(InvalidRequest, match="new_item_id\\[0\\] is 65 bytes"):
        client.recommend(candidate_ids=["N1"], new_items={"x" * 65: "some text"})
    assert raw.is_server_ready()


# ---- item statistics on the id path ---------------------------------------------------------------
def _pipeline_scores(pipeline, news, hist, cands, table, new_items=None):
    """In-process reference: the same texts/categories, statistics looked up in ``table`` by id."""
    new_items = new_items or {}

    def field(i, k):
        return new_items[i][k] if i in new_items else (news[i].title, news[i].category, news[i].subcategory)[k]

    return pipeline.recommend([field(h, 0) for h in hist], [field(c, 0) for c in cands],
                              [field(h, 1) for h in hist], [field(h, 2) for h in hist],
                              [field(c, 1) for c in cands], [field(c, 2) for c in cands],
                              history_stats=table.lookup(hist), candidate_stats=table.lookup(cands))["scores"]


def _served_scores(client, hist, cands, new_items=None) -> np.ndarray:
    recs = client.recommend(history_ids=hist, candidate_ids=cands, new_items=new_items)
    out = np.zeros(len(cands), np.float32)
    for it in recs:
        out[it.index] = it.score
    return out


def _impression(tiny_data, news, table, min_known: int = 3):
    """A dev impression whose items are indexed, with statistics for several of its candidates."""
    for imp in load_split(tiny_data / "dev").impressions:
        hist = [h for h in imp.history if h in news][:10]
        cands = [c for c in imp.candidates if c in news]
        if len(hist) >= 2 and len(cands) >= 4 and (table.lookup(cands).sum(1) > 0).sum() >= min_known:
            return hist, cands
    raise AssertionError("no suitable impression in the tiny dev split")


def test_id_path_serves_item_statistics_and_the_prior_for_unknown_ids(server, pipeline, tiny_data, item_stats_dir):
    news = _news(tiny_data)
    table = StatsTable.read(item_stats_dir)
    hist, cands = _impression(tiny_data, news, table)
    client = RecommenderClient(server.grpc_url)
    got = _served_scores(client, hist, cands)
    np.testing.assert_allclose(got, _pipeline_scores(pipeline, news, hist, cands, table), atol=1e-4)
    # and the statistics matter: the same request scored without any (all zeros: the prior) differs
    assert np.abs(got - _pipeline_scores(pipeline, news, hist, cands, StatsTable.empty())).max() > 1e-3
    # a new item (sent with its text) whose id the statistics do not know gets zeros, i.e. the prior
    fresh = {"brand-new-stats": ("Coach praises linebacker after playoff victory", "sports", "football_nfl")}
    assert table.lookup(list(fresh)).sum() == 0
    got = _served_scores(client, hist, [*cands, *fresh], fresh)
    np.testing.assert_allclose(got, _pipeline_scores(pipeline, news, hist, [*cands, *fresh], table, fresh), atol=1e-4)


def _wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not true after {timeout_s}s"
        time.sleep(0.1)


def test_stats_build_refreshes_a_running_server_without_restart(server, pipeline, tiny_data, item_stats_dir):
    """`genrec stats build` on other logs rewrites the served folder: the running recommend model picks the new
    counts up (same stubs, no restart) and scores follow them; rebuilding from the training log restores them."""
    news = _news(tiny_data)
    old = StatsTable.read(item_stats_dir)
    hist, cands = _impression(tiny_data, news, old)
    client = RecommenderClient(server.grpc_url)
    stubs = server.stub_processes()
    before = _served_scores(client, hist, cands)
    try:
        build_stats([tiny_data / "dev" / "behaviors.tsv"], item_stats_dir, log=lambda _m: None)
        new = StatsTable.read(item_stats_dir)
        want = _pipeline_scores(pipeline, news, hist, cands, new)
        assert np.abs(new.lookup(cands) - old.lookup(cands)).max() > 0 and np.abs(want - before).max() > 1e-3
        _wait_for(lambda: np.allclose(_served_scores(client, hist, cands), want, atol=1e-4))
    finally:
        build_stats([tiny_data / "train" / "behaviors.tsv"], item_stats_dir, log=lambda _m: None)
    _wait_for(lambda: np.allclose(_served_scores(client, hist, cands), before, atol=1e-5))
    assert server.stub_processes() == stubs and server.failure() is None


def test_live_stats_swaps_whole_snapshots_and_skips_a_half_written_folder(tiny_data, tmp_path):
    folder = build_stats([tiny_data / "train" / "behaviors.tsv"], tmp_path / "s", log=lambda _m: None)
    messages: list[str] = []
    live = LiveStats(folder, refresh_ms=0, log=messages.append)
    first = live.table
    ids = [i.decode() for i in first.sorted_ids[:50]]
    seen_by_a_reader = first.lookup(ids)
    assert not live.check()                                  # nothing new
    build_stats([tiny_data / "dev" / "behaviors.tsv"], folder, log=lambda _m: None)
    assert live.check() and live.table is not first and live.loads == 2
    np.testing.assert_array_equal(first.lookup(ids), seen_by_a_reader)   # a snapshot never changes under a reader
    np.testing.assert_array_equal(live.table.lookup(ids), StatsTable.read(folder).lookup(ids))
    # a folder that is not one whole version (its manifest names a data file that is not there) -> not loaded,
    # the current snapshot stays
    current = live.table
    manifest = json.loads((folder / "stats.json").read_text())
    legacy = {"ids.txt": (folder / manifest["files"]["ids"]).read_bytes(),
              "counts.f32": (folder / manifest["files"]["counts"]).read_bytes()}
    broken = {**manifest, "files": {**manifest["files"], "counts": "counts-x.f32"}}
    (folder / "stats.json").write_text(json.dumps(broken))
    assert not live.check() and live.table is current
    assert "counts-x.f32, named by stats.json, is missing" in messages[-1]
    with pytest.raises(StatsLoadError, match="is missing"):
        StatsTable.read(folder)
    # the layout before content-named files (ids.txt, counts.f32, no "files"): read, unless a writer is mid-way
    for name, data in legacy.items():
        (folder / name).write_bytes(data)
    del manifest["files"]
    (folder / "stats.json").write_text(json.dumps(manifest))
    assert live.check() and live.table.lookup(ids).tolist() == current.lookup(ids).tolist()
    time.sleep(0.05)
    (folder / "ids.txt").write_bytes(legacy["ids.txt"])                           # data newer than the manifest
    with pytest.raises(StatsLoadError, match="being rewritten"):
        StatsTable.read(folder)
    assert current.lookup(["no-such-id"]).tolist() == [[0.0] * len(ITEM_STATS)]   # unknown id: the prior


def test_rows_query_has_the_sorted_dtype_and_long_ids_do_not_match(fp32_index, monkeypatch):
    """Issue 12: a query wider than the sorted ids made numpy convert the whole sorted array per call (O(N))."""
    index = ItemIndex(fp32_index)
    width = index.sorted_ids.dtype.itemsize
    seen: list[tuple[np.dtype, np.dtype]] = []
    real = np.searchsorted

    def spy(a, v, *args, **kwargs):
        seen.append((np.asarray(a).dtype, np.asarray(v).dtype))
        return real(a, v, *args, **kwargs)

    monkeypatch.setattr(np, "searchsorted", spy)
    first = bytes(index.sorted_ids[0])
    rows = index.rows([first, b"x" * (width + 1), first + b"\xff" * 3, b"N1"])
    assert seen and all(a == v for a, v in seen), seen
    assert rows[0] >= 0 and rows[1] == -1 and rows[2] == -1
    table = StatsTable.from_ids(["a", "bb"], np.ones((2, len(ITEM_STATS))))
    assert table.lookup(["bb", "bbb", "a" * 100]).sum(1).tolist() == [len(ITEM_STATS), 0.0, 0.0]


def test_stats_need_an_index(artifacts, item_stats_dir, tmp_path):
    """A user error (the CLI's one `genrec: error:` line, exit 2), not a ValueError traceback."""
    with pytest.raises(UserError, match="needs --index"):
        build_repository(artifacts.root, tmp_path / "r", RepositoryConfig(precision="fp32", stats=str(item_stats_dir)))
    assert not (tmp_path / "r").exists()


def test_repeated_texts_are_encoded_once_and_equal_encoding_every_row(artifacts, tiny_data, fp32_index, tmp_path):
    """A catalog where every text appears twice (second copy under a new id, later in the file): the build
    encodes each text once and copies its vector, and the index equals the one that encodes every row."""
    lines = (tiny_data / "train" / "news.tsv").read_text().splitlines()
    n = len(lines)
    copies = ["\t".join(["X" + f[0], *f[1:]]) for f in (line.split("\t") for line in lines)]
    catalog = tmp_path / "news.tsv"
    catalog.write_text("\n".join(lines + copies) + "\n")
    cfg = IndexConfig(precision="fp32", chunk_size=n // 2 + 7, threads=THREADS)   # repeats across and inside chunks
    messages: list[str] = []
    build_index(catalog, artifacts.root, tmp_path / "dedup", cfg, progress=False, log=messages.append)
    build_index(catalog, artifacts.root, tmp_path / "every",
                IndexConfig(precision="fp32", threads=THREADS, dedupe_mb=0), progress=False, log=lambda _m: None)
    dedup, every, base = ItemIndex(tmp_path / "dedup"), ItemIndex(tmp_path / "every"), ItemIndex(fp32_index)
    assert dedup.manifest["encoded_texts"] <= n and dedup.manifest["reused_texts"] >= n
    assert every.manifest["encoded_texts"] == 2 * n and every.manifest["reused_texts"] == 0
    assert dedup.manifest["truncated_texts"] == every.manifest["truncated_texts"]
    np.testing.assert_allclose(np.asarray(dedup.vectors), np.asarray(every.vectors), atol=1e-6)
    first, second = dedup.rows([b"N5", b"XN5"]).tolist()
    np.testing.assert_array_equal(dedup.vectors[first], dedup.vectors[second])
    np.testing.assert_allclose(dedup.vectors[first], base.vectors[base.rows([b"N5"])[0]], atol=1e-6)
    assert any("repeated texts reused" in m for m in messages)
