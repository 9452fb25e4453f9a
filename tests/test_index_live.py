"""Live index updates (issue 14 item 1): `genrec index add` publishes a generation, servers switch without restart.

Unit tests on the folder layout and the in-process reader, then one load test against a real tritonserver:
clients send id-path requests continuously while three generations are published; every response must come
from exactly one generation, new ids become servable within seconds, and the old generations' maps go.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from workers import THREADS

from genrec.client import RecommenderClient
from genrec.core.index import (
    CURRENT,
    PARTIAL,
    AddConfig,
    IndexConfig,
    IndexMismatch,
    ItemIndex,
    LiveIndex,
    add_items,
    build_index,
    read_current,
)
from genrec.core.mind import load_split

QUIET = {"progress": False, "log": lambda _m: None}


class Interrupt(Exception):
    pass


def _lines(tiny_data) -> list[list[str]]:
    return [line.split("\t") for line in (tiny_data / "train" / "news.tsv").read_text().splitlines() if line]


def _catalog(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("".join("\t".join(r) + "\n" for r in rows))
    return path


def _item(fields: list[str], item_id: str, title: str) -> list[str]:
    """A catalog row: ``fields``' categories and abstract under ``item_id`` with ``title``."""
    return [item_id, fields[1], fields[2], title, *fields[4:]]


def _copy_index(fp32_index, tmp_path) -> Path:
    out = tmp_path / "index"
    shutil.copytree(fp32_index, out)
    return out


def _fresh(artifacts, catalog: Path, out: Path) -> ItemIndex:
    """The reference: the same rows built from scratch into their own index."""
    return ItemIndex(build_index(catalog, artifacts.root, out, IndexConfig(precision="fp32", threads=THREADS), **QUIET))


def _vec(index: ItemIndex, item_id: str) -> np.ndarray:
    rows = index.rows([item_id.encode()])
    assert rows[0] >= 0, item_id
    return index.take(rows)[0][0]


def _mapped(pid: int | str, folder: Path) -> list[str]:
    """Paths under ``folder`` (or unlinked ones) that process ``pid`` maps."""
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith(str(folder)):
            out.add(parts[5])
    return sorted(out)


def test_add_publishes_a_generation_and_replaces_re_added_ids(artifacts, tiny_data, fp32_index, tmp_path):
    lines = _lines(tiny_data)
    index = _copy_index(fp32_index, tmp_path)
    live = LiveIndex(index, refresh_ms=0)
    old = live.index
    old_ids = [r[0] for r in lines[:50]]
    before = {i: _vec(old, i).copy() for i in old_ids[:5]}
    rows = [_item(lines[300], "LIVE-1", lines[300][3] + " tonight"),       # a new id
            _item(lines[301], "LIVE-2", lines[302][3]),
            _item(lines[1], lines[1][0], lines[400][3])]                 # a known id, new text: replaces its row
    add = _catalog(tmp_path / "add.tsv", rows)
    gen = add_items(add, artifacts.root, index, AddConfig(threads=THREADS), **QUIET)
    assert read_current(index) == gen.name == "gen-000001" and not (index / PARTIAL).exists()
    assert live.check() and live.index.generation == 1 and not live.check()
    new = live.index
    assert new.segments[0] is old.segments[0]                  # the base's maps are shared, only the delta is new
    assert [len(s) for s in new.segments] == [len(old), 3] and len(new) == len(old) + 2
    ref = _fresh(artifacts, add, tmp_path / "ref")
    for item_id in ("LIVE-1", "LIVE-2", lines[1][0]):
        np.testing.assert_allclose(_vec(new, item_id), _vec(ref, item_id), atol=1e-6)
    assert np.abs(_vec(new, lines[1][0]) - before[lines[1][0]]).max() > 1e-2       # the new text's vector
    for item_id in (lines[0][0], lines[2][0]):                                     # untouched rows: as before
        np.testing.assert_array_equal(_vec(new, item_id), before[item_id])
    assert old.rows([b"LIVE-1"]).tolist() == [-1]                                  # the old generation is unchanged
    np.testing.assert_array_equal(_vec(old, lines[1][0]), before[lines[1][0]])
    # in one call: found, unknown, re-added; categories come from the new rows
    got = new.rows([b"LIVE-2", b"nope", lines[1][0].encode(), lines[0][0].encode()])
    assert got[1] == -1 and (np.delete(got, 1) >= 0).all()
    _, _, cat, _ = new.take(got[[0]])
    assert cat[0] == ref.take(ref.rows([b"LIVE-2"]))[2][0]

    # a second add: the previous delta's rows stay (minus ids sent again), one delta, one base
    add2 = _catalog(tmp_path / "add2.tsv", [_item(lines[300], "LIVE-1", lines[500][3]),
                                           _item(lines[303], "LIVE-3", lines[303][3])])
    add_items(add2, artifacts.root, index, AddConfig(threads=THREADS), **QUIET)
    assert live.check()
    g2 = live.index
    assert [len(s) for s in g2.segments] == [len(old), 4] and len(g2) == len(old) + 3
    np.testing.assert_allclose(_vec(g2, "LIVE-1"), _vec(_fresh(artifacts, add2, tmp_path / "ref2"), "LIVE-1"),
                               atol=1e-6)
    np.testing.assert_array_equal(_vec(g2, "LIVE-2"), _vec(new, "LIVE-2"))
    np.testing.assert_array_equal(_vec(g2, lines[1][0]), _vec(new, lines[1][0]))

    # compaction: one full base with the same content, no encoder run for the old rows
    add3 = _catalog(tmp_path / "add3.tsv", [_item(lines[304], "LIVE-4", lines[304][3])])
    add_items(add3, artifacts.root, index, AddConfig(threads=THREADS, compact_ratio=0.0), **QUIET)
    assert live.check()
    g3 = live.index
    assert len(g3.segments) == 1 and len(g3) == len(g2) + 1 == len(g3.segments[0])
    probe = [*old_ids, "LIVE-1", "LIVE-2", "LIVE-3", "LIVE-4", "nope"]
    for item_id in probe[:-2]:
        np.testing.assert_array_equal(_vec(g3, item_id), _vec(g2, item_id))
    assert g3.rows([b"nope"]).tolist() == [-1]
    # ItemIndex(DIR) reads the current generation, e.g. in `repository build`
    assert ItemIndex(index).generation == 3


def test_old_generation_stays_readable_until_dropped_then_its_files_are_gone(artifacts, tiny_data, fp32_index,
                                                                             tmp_path):
    """The writer deletes generations nobody should open any more; a reader still holding one keeps reading it
    (Linux keeps an unlinked file while mapped) and frees it when it drops the generation."""
    lines = _lines(tiny_data)
    index = _copy_index(fp32_index, tmp_path)
    cfg = AddConfig(threads=THREADS, keep_generations=0)
    add_items(_catalog(tmp_path / "a.tsv", [_item(lines[10], "A-1", lines[11][3])]), artifacts.root, index, cfg,
              **QUIET)
    held = ItemIndex(index)                            # generation 1, as a server holds it
    vec = _vec(held, "A-1").copy()
    delta = held.segments[1].folder
    add_items(_catalog(tmp_path / "b.tsv", [_item(lines[12], "B-1", lines[13][3])]), artifacts.root, index, cfg,
              **QUIET)
    assert not delta.exists()                          # removed from disk (keep_generations=0) ...
    assert any("(deleted)" in m for m in _mapped(os.getpid(), delta))
    np.testing.assert_array_equal(_vec(held, "A-1"), vec)        # ... but the holder still reads it
    del held
    assert _mapped(os.getpid(), delta) == []                   # dropped: its maps are gone, the space is freed
    current = ItemIndex(index)
    assert current.generation == 2 and _vec(current, "A-1").tolist() == vec.tolist()


def test_mismatched_encoder_is_refused(artifacts, tiny_data, fp32_index, tmp_path):
    lines = _lines(tiny_data)
    index = _copy_index(fp32_index, tmp_path)
    manifest = json.loads((index / "index.json").read_text())
    (index / "index.json").write_text(json.dumps({**manifest, "encoder_sha256": "0" * 64}))   # another encoder's
    add = _catalog(tmp_path / "a.tsv", [_item(lines[10], "A-1", lines[11][3])])
    with pytest.raises(IndexMismatch, match="was built by encoder 000000000000 .*does not contain"):
        add_items(add, artifacts.root, index, AddConfig(threads=THREADS), **QUIET)
    assert read_current(index) is None and not (index / "gen-000001").exists()
    # and a server refuses a generation from another encoder: it keeps the one it serves and says why
    good = _copy_index(fp32_index, tmp_path / "good")
    messages: list[str] = []
    live = LiveIndex(good, refresh_ms=0, expect_encoder_sha256=manifest["encoder_sha256"], log=messages.append)
    add_items(add, artifacts.root, good, AddConfig(threads=THREADS), **QUIET)
    gm = good / "gen-000001" / "index.json"
    gm.write_text(json.dumps({**json.loads(gm.read_text()), "encoder_sha256": "1" * 64}))
    assert not live.check() and live.index.generation == 0
    assert "not refreshed (keeping generation 0" in messages[-1] and "was built by encoder 111111111111" in messages[-1]


def test_interrupted_add_leaves_the_served_generation_and_resumes(artifacts, tiny_data, fp32_index, tmp_path):
    lines = _lines(tiny_data)
    index = _copy_index(fp32_index, tmp_path)
    live = LiveIndex(index, refresh_ms=0)
    rows = [_item(lines[k], f"R-{k}", lines[k + 1][3]) for k in range(40)]
    add = _catalog(tmp_path / "a.tsv", rows)

    def stop(done: int) -> None:
        if done >= 20:
            raise Interrupt

    with pytest.raises(Interrupt):
        add_items(add, artifacts.root, index, AddConfig(threads=THREADS, chunk_size=10), progress=False,
                  log=lambda _m: None, on_chunk=stop)
    assert read_current(index) is None and not list(index.glob("gen-*"))
    assert not live.check() and live.index.generation == 0 and ItemIndex(index).rows([b"R-0"]).tolist() == [-1]
    messages: list[str] = []
    encoded: list[int] = []
    add_items(add, artifacts.root, index, AddConfig(threads=THREADS, chunk_size=10), progress=False,
              log=messages.append, on_chunk=encoded.append)
    assert any("resuming at row 20" in m for m in messages) and encoded[0] == 30
    assert live.check() and len(live.index) == len(ItemIndex(fp32_index)) + 40
    np.testing.assert_allclose(_vec(live.index, "R-33"), _vec(_fresh(artifacts, add, tmp_path / "ref"), "R-33"),
                               atol=1e-6)
    with pytest.raises(IndexMismatch, match="holds live generations"):       # `index build` would clobber it
        build_index(add, artifacts.root, index, IndexConfig(precision="fp32"), **QUIET)


# ---- under load, against a real tritonserver ---------------------------------------------------------------
def test_index_add_under_load_switches_generations_without_failures(artifacts, tiny_data, fp32_index, pipeline,
                                                                    tmp_path):
    """Three publishes while 3 clients send id-path requests to 2 recommend instances (default 1000 ms refresh).

    Each request has X (an indexed id whose text every publish changes) in its history and candidates, and
    Y1..Y3 (published by adds 1..3; sent with their text, so they are servable before). A response from
    generation g must score like g (X's g-th text) and say Y1..Yg came from the index and the others not:
    a request mixing two generations would fail one of the two. 0 failed requests; every Yg served from the
    index within 5 s of its publish; the old generations' files are removed and unmapped afterwards."""
    from genrec.model_repository.builder import RepositoryConfig, build_repository
    from genrec.server.launcher import running_server

    lines = _lines(tiny_data)
    news = load_split(tiny_data / "train").news
    by_id = {r[0]: r for r in lines}
    ids = [r[0] for r in lines]
    x = ids[5]
    hist, cands = [*ids[:5], x], [*ids[6:12], x]
    x_texts = [by_id[x][3], *(by_id[ids[100 + 7 * g]][3] for g in range(3))]      # X's text in generations 0..3
    ys = [f"LIVE-Y{g + 1}" for g in range(3)]
    y_src = [by_id[ids[200 + 11 * g]] for g in range(3)]
    new_items = {y: (s[3], s[1], s[2]) for y, s in zip(ys, y_src)}
    all_cands = [*cands, *ys]

    def expected(g: int) -> np.ndarray:
        def field(i, k):
            if i == x:
                return (x_texts[g], news[x].category, news[x].subcategory)[k]
            return new_items[i][k] if i in new_items else (news[i].title, news[i].category, news[i].subcategory)[k]
        return pipeline.recommend([field(h, 0) for h in hist], [field(c, 0) for c in all_cands],
                                  [field(h, 1) for h in hist], [field(h, 2) for h in hist],
                                  [field(c, 1) for c in all_cands], [field(c, 2) for c in all_cands])["scores"]

    want = [expected(g) for g in range(4)]
    gaps = [np.abs(want[a] - want[b]).max() for a in range(4) for b in range(a + 1, 4)]
    assert min(gaps) > 1e-3, gaps                   # the generations are told apart by the scores

    index = _copy_index(fp32_index, tmp_path)
    repo = build_repository(artifacts.root, tmp_path / "repo",
                            RepositoryConfig(precision="fp32", index=str(index), recommend_instances=2,
                                             max_queue_delay_us=1000))
    assert "index_refresh_ms" in (repo / "recommend" / "config.pbtxt").read_text()
    results: list[tuple[float, float, np.ndarray, dict[str, str]]] = []      # (start, end, scores, Y sources)
    errors: list[str] = []
    stop = threading.Event()

    def load(url: str) -> None:
        client = RecommenderClient(url)
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                recs = client.recommend(history_ids=hist, candidate_ids=all_cands, new_items=new_items)
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors.append(repr(exc))
                continue
            scores = np.zeros(len(all_cands), np.float32)
            for it in recs:
                scores[it.index] = it.score
            results.append((t0, time.monotonic(), scores, {it.item_id: it.source for it in recs if it.item_id in ys}))

    with running_server(repo) as srv:
        stubs = srv.stub_processes()
        recommend_pids = [pid for pid, name in stubs.items() if name.startswith("recommend")]
        assert len(recommend_pids) == 2
        threads = [threading.Thread(target=load, args=(srv.grpc_url,), daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        published: list[float] = []
        try:
            time.sleep(1.5)
            for g in range(3):
                add = _catalog(tmp_path / f"add{g}.tsv", [_item(by_id[x], x, x_texts[g + 1]),
                                                          _item(y_src[g], ys[g], y_src[g][3])])
                add_items(add, artifacts.root, index, AddConfig(threads=1), **QUIET)
                published.append(time.monotonic())
                deadline = published[-1] + 10
                while time.monotonic() < deadline:        # until both instances serve Yg from the index
                    recent = [r for r in results[-12:] if r[0] > published[-1]]
                    if len(recent) >= 8 and all(r[3][ys[g]] == "index" for r in recent):
                        break
                    time.sleep(0.1)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)

        assert errors == [], errors[:3]
        assert len(results) > 50, len(results)
        seen = set()
        for t0, _, scores, src in results:
            match = [g for g in range(4) if np.abs(scores - want[g]).max() < 1e-4]
            assert len(match) == 1, (t0, [float(np.abs(scores - w).max()) for w in want])
            g = match[0]
            assert [src[y] == "index" for y in ys] == [k < g for k in range(3)], (g, src)   # one generation
            seen.add(g)
        assert seen == {0, 1, 2, 3}
        latency = []
        for g in range(3):                # the last request started after the publish that missed Yg
            late = [end for start, end, _, src in results if start > published[g] and src[ys[g]] != "index"]
            latency.append(max(late, default=published[g]) - published[g])
        print(f"\npublish -> servable by id (both instances): {[round(s, 2) for s in latency]} s; "
              f"{len(results)} requests, 0 failed")
        assert max(latency) < 5.0, latency
        # strictly by id now: no text sent for the published items
        client = RecommenderClient(srv.grpc_url)
        for _ in range(4):
            recs = client.recommend(history_ids=hist, candidate_ids=all_cands)
            assert {it.item_id: it.source for it in recs if it.item_id in ys} == dict.fromkeys(ys, "index")
        # old generations: removed from disk (keep 1 previous), and no instance maps them any more
        assert read_current(index) == "gen-000003"
        assert sorted(p.name for p in index.glob("gen-*")) == ["gen-000002", "gen-000003"]
        deadline = time.monotonic() + 10
        while True:
            maps = {pid: _mapped(pid, index) for pid in recommend_pids}
            stale = {pid: [m for m in got if "gen-000003" not in m and "/gen-" in m or "(deleted)" in m]
                     for pid, got in maps.items()}
            if not any(stale.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not any(stale.values()), stale
        for got in maps.values():                      # the shared base and the current delta, nothing else
            assert str(index / "vectors.f32") in got and str(index / "gen-000003" / "vectors.f32") in got
        assert srv.stub_processes() == stubs and srv.failure() is None      # no restart
    assert (index / CURRENT).read_text().strip() == "gen-000003"


def test_index_add_writes_the_new_segments_retrieval_files_before_it_switches(artifacts, tiny_data, fp32_index,
                                                                            tmp_path, monkeypatch):
    """A compacted base is a new segment: a server that sees it before its ANN index exists would search
    it exactly. `genrec index add` builds the retrieval files of the staged segment, then switches."""
    import genrec.core.retrieval as retrieval
    from genrec.cli import main

    lines = _lines(tiny_data)
    index = _copy_index(fp32_index, tmp_path)
    seen: list[tuple[str, str | None]] = []
    builder = retrieval.segment_retrieval_builder

    def spying_builder(*args, **kwargs):
        build = builder(*args, **kwargs)

        def run(folder):
            seen.append((folder.name, read_current(index)))        # what was served while it was built
            return build(folder)
        return run

    monkeypatch.setattr(retrieval, "segment_retrieval_builder", spying_builder)
    add = _catalog(tmp_path / "add.tsv", [_item(lines[300], "LIVE-R", lines[300][3])])
    assert main(["index", "add", "--catalog", str(add), "--index", str(index), "--artifacts", str(artifacts.root),
                 "--compact-ratio", "0", "--quiet"]) == 0
    live = ItemIndex(index)
    assert live.generation == 1 and seen[0] == ("gen-000001", None)   # built while nothing new was current
    for seg in live.segments:
        manifest = json.loads((seg.folder / retrieval.ANN_MANIFEST).read_text())
        assert manifest["encoder_sha256"] == seg.manifest["encoder_sha256"] and manifest["count"] == len(seg)
