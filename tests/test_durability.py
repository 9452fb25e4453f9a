"""Durable, atomic writes (issue 27 items 1-3): `repository build` never replaces a folder that is not its own,
a rebuilt index never keeps another build's retrieval files or rewrites a file a server has mapped, and kill -9 in
the middle of every persistent write (`index build`, `stats build`, `index add`, `repository build`) leaves the old
state or the new one.

Each command runs for real (``genrec.cli.main`` in a forked child, tests/cli_runner.py) and SIGKILLs itself at a
chosen step of its writes (``GENREC_FSIO_KILL_AT``, genrec/core/fsio.py; the steps of one run are listed first
with ``GENREC_FSIO_TRACE``). After each kill the folder is read as a server would read it (it must hold the old
state or the new one, whole, or refuse clearly where there was nothing complete before; never a mix), then the
same command runs again without a kill and must leave exactly what an uninterrupted run leaves.

The kill points: a fixed sample of the steps (the first, the last, the ones each test names: just after a commit
point or just before it, and evenly spread ones); GENREC_CRASH_POINTS=all kills at every step (slow, for a
thorough check by hand: every step of the four commands passed on 12-03).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runner import CliRunner
from workers import THREADS

from genrec.core.index import IndexConfig, IndexMismatch, ItemIndex, _generations, build_index
from genrec.core.retrieval import (
    RETRIEVAL_VECTORS,
    Retriever,
    SegmentSearcher,
    _valid,
    build_ann,
    build_index_retrieval,
    has_retrieval,
)
from genrec.core.statstore import StatsLoadError, StatsTable, build_stats
from genrec.model_repository.builder import MANIFEST, RepositoryConfig, build_repository, is_repository, load_configs

SAMPLE = 4                     # kill points per command (besides the trace run), spread over its steps


def kill_points(trace: list[str], *must: str) -> list[int]:
    """Steps to kill at (1-based): every step with GENREC_CRASH_POINTS=all; else the first, the last, the first
    step matching each ``must`` pattern, and evenly spread ones up to SAMPLE."""
    n = len(trace)
    if os.environ.get("GENREC_CRASH_POINTS") == "all":
        return list(range(1, n + 1))
    points = {1, n}
    for pattern in must:
        hits = [i for i, step in enumerate(trace, 1) if re.search(pattern, step)]
        assert hits, f"no step matches {pattern!r}: {trace}"
        points.add(hits[0])
    for p in np.linspace(1, n, SAMPLE).round().astype(int).tolist():
        if len(points) >= SAMPLE:
            break
        points.add(p)
    return sorted(points)


def steps(cli: CliRunner, argv: list[str], tmp: Path) -> list[str]:
    """The write steps of one uninterrupted run of ``argv`` (which must succeed)."""
    trace = tmp / "trace.txt"
    trace.unlink(missing_ok=True)
    res = cli.run(*argv, env={"GENREC_FSIO_TRACE": str(trace)})
    assert res.rc == 0, res.stderr
    return trace.read_text().splitlines()


def crash_run(cli: CliRunner, argv: list[str], at: int):
    res = cli.run(*argv, env={"GENREC_FSIO_KILL_AT": str(at)})
    assert res.killed, f"not killed at step {at}: rc {res.rc}\n{res.stderr[-2000:]}"
    return res


def small_catalog(tiny_data: Path, out: Path, rows: slice, replace_titles: int = 0) -> Path:
    lines = (tiny_data / "train" / "news.tsv").read_text().splitlines()[rows]
    for i in range(replace_titles):                     # known ids with a new text: `index add` replaces them
        f = lines[i].split("\t")
        f[3] += " (updated)"
        lines[i] = "\t".join(f)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def index_state(folder: Path) -> tuple[list[bytes], np.ndarray]:
    ix = ItemIndex(folder)
    ids = [bytes(i) for i in ix.ids]
    rows = ix.rows(ids)
    return sorted(ids), np.asarray(ix.take(rows[np.argsort(ids)])[0])


def same_index(folder: Path, ref: tuple[list[bytes], np.ndarray]) -> bool:
    ids, vec = index_state(folder)
    return ids == ref[0] and np.allclose(vec, ref[1], atol=1e-6)


def retrieval_sound(folder: Path, artifacts) -> None:
    """Every segment's retrieval files are either absent/invalid (not used: computed when served) or were built
    from exactly this segment: the vectors in retrieval.f32 match a fresh computation."""
    prec = has_retrieval(artifacts)
    sha = artifacts.sha256(prec, "retrieval")
    ort = _retrieval_graph(str(artifacts.graph(prec, "retrieval")))
    for seg in ItemIndex(folder).segments:
        if _valid(seg.folder, seg.manifest["encoder_sha256"], sha, seg.manifest):
            got = np.fromfile(seg.folder / RETRIEVAL_VECTORS, dtype=np.float32).reshape(len(seg), -1)
            want = ort.item_repr(np.asarray(seg.vectors), np.asarray(seg.category), np.asarray(seg.subcategory))
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{seg.folder}: stale retrieval files")


@functools.lru_cache(maxsize=2)
def _retrieval_graph(path: str):
    from genrec.core.retrieval import OrtRetrieval

    return OrtRetrieval(path, 1)


def fresh_copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ---- stats build ------------------------------------------------------------------------------------------------
def test_stats_build_killed_anywhere_leaves_the_old_or_the_new_statistics(cli, tiny_data, tmp_path):
    logs = (tiny_data / "train" / "behaviors.tsv").read_text().splitlines()
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text("\n".join(logs[:150]) + "\n")
    b.write_text("\n".join(logs[150:400]) + "\n")
    pristine = build_stats([a], tmp_path / "pristine", log=lambda _m: None)
    old = StatsTable.read(pristine)
    new = StatsTable.read(build_stats([b], tmp_path / "ref-b", log=lambda _m: None))
    target = tmp_path / "stats"

    def argv() -> list[str]:
        return ["stats", "build", "--behaviors", str(b), "--out", str(target)]

    fresh_copy(pristine, target)
    trace = steps(cli, argv(), tmp_path)
    for at in kill_points(trace, r"replacing .*stats\.json$", r"replaced .*stats\.json$"):
        fresh_copy(pristine, target)
        crash_run(cli, argv(), at)
        got = StatsTable.read(target)                 # always loadable: there was a complete version before
        matches = [ref for ref in (old, new) if np.array_equal(got.sorted_ids, ref.sorted_ids)
                   and np.array_equal(got.counts, ref.counts)]
        assert matches, f"killed at step {at} ({trace[at - 1]}): statistics are neither the old nor the new ones"
        assert cli.run(*argv()).rc == 0
        again = StatsTable.read(target)
        assert np.array_equal(again.sorted_ids, new.sorted_ids) and np.array_equal(again.counts, new.counts)
        assert len(list(target.iterdir())) == 3, f"killed at step {at}: left {sorted(os.listdir(target))}"
    # killed before a first version existed (just before its manifest went in): refused clearly; the rerun builds it
    shutil.rmtree(target)
    first = steps(cli, argv(), tmp_path)
    shutil.rmtree(target)
    manifest_step = next(i for i, step in enumerate(first, 1) if step.endswith(f"replacing {target / 'stats.json'}"))
    crash_run(cli, argv(), manifest_step)
    with pytest.raises(StatsLoadError):
        StatsTable.read(target)
    assert cli.run(*argv()).rc == 0 and len(StatsTable.read(target)) == len(new)


# ---- index build ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalogs(tiny_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("catalogs")
    return {"a": small_catalog(tiny_data, d / "a" / "news.tsv", slice(0, 24)),
            "c": small_catalog(tiny_data, d / "c" / "news.tsv", slice(100, 116)),
            "add": small_catalog(tiny_data, d / "add" / "news.tsv", slice(20, 32), replace_titles=3)}


def _build(catalog: Path, artifacts, out: Path) -> Path:
    build_index(catalog, artifacts.root, out, IndexConfig(precision="fp32", threads=THREADS, chunk_size=8),
                progress=False, log=lambda _m: None)
    build_index_retrieval(out, artifacts.root, log=lambda _m: None)
    return out


def test_index_build_killed_anywhere_never_serves_a_mix_and_resumes(cli, artifacts, catalogs, tmp_path):
    """A rebuild for another catalog over a complete index with retrieval files (the stale-files case)."""
    pristine = _build(catalogs["a"], artifacts, tmp_path / "pristine")
    ref_a = index_state(pristine)
    ref_c = index_state(_build(catalogs["c"], artifacts, tmp_path / "ref-c"))
    target = tmp_path / "index"

    def argv() -> list[str]:
        return ["index", "build", "--catalog", str(catalogs["c"]), "--artifacts", str(artifacts.root),
                "--out", str(target), "--precision", "fp32", "--chunk-size", "8", "--threads", str(THREADS),
                "--quiet"]

    fresh_copy(pristine, target)
    trace = steps(cli, argv(), tmp_path)
    outcomes = set()
    for at in kill_points(trace, r"rows 8\.\.16 in the maps", r"replaced .*retrieval\.f32"):
        fresh_copy(pristine, target)
        crash_run(cli, argv(), at)
        try:
            loaded = "old" if same_index(target, ref_a) else "new" if same_index(target, ref_c) else "mixed"
        except IndexMismatch:
            loaded = "refused (incomplete)"
        assert loaded != "mixed", f"killed at step {at} ({trace[at - 1]}): a mixed index loads"
        if loaded != "refused (incomplete)":
            retrieval_sound(target, artifacts)
        outcomes.add(loaded)
        res = cli.run(*argv())
        assert res.rc == 0, res.stderr
        assert same_index(target, ref_c)
        retrieval_sound(target, artifacts)
        assert _valid(target, ItemIndex(target).manifest["encoder_sha256"],
                      artifacts.sha256(has_retrieval(artifacts), "retrieval"), ItemIndex(target).manifest)
    assert {"old", "refused (incomplete)"} <= outcomes, outcomes


# ---- index add --------------------------------------------------------------------------------------------------
def test_index_add_killed_anywhere_keeps_serving_one_whole_generation(cli, artifacts, catalogs, tmp_path):
    pristine = _build(catalogs["a"], artifacts, tmp_path / "pristine")
    ref_old = index_state(pristine)
    published = fresh_copy(pristine, tmp_path / "ref-new")
    assert cli.run("index", "add", "--catalog", catalogs["add"], "--index", published, "--artifacts",
                   artifacts.root, "--threads", THREADS, "--quiet").rc == 0
    ref_new = index_state(published)
    target = tmp_path / "index"

    def argv() -> list[str]:
        return ["index", "add", "--catalog", str(catalogs["add"]), "--index", str(target), "--artifacts",
                str(artifacts.root), "--threads", str(THREADS), "--quiet"]

    fresh_copy(pristine, target)
    trace = steps(cli, argv(), tmp_path)
    outcomes = set()
    for at in kill_points(trace, r"add\.partial/new: rows", r"renamed gen-\d+ in"):
        fresh_copy(pristine, target)
        crash_run(cli, argv(), at)
        # the served index: always loadable, always one whole generation
        loaded = "old" if same_index(target, ref_old) else "new" if same_index(target, ref_new) else "mixed"
        assert loaded != "mixed", f"killed at step {at} ({trace[at - 1]}): a mixed generation is served"
        retrieval_sound(target, artifacts)
        outcomes.add(loaded)
        res = cli.run(*argv())
        assert res.rc == 0, res.stderr
        assert same_index(target, ref_new)
        retrieval_sound(target, artifacts)
        served = ItemIndex(target)
        previous = served.manifest["previous"]
        allowed = {served.generation} | ({int(previous[4:])} if previous.startswith("gen-") else set())
        left = sorted(set(_generations(target)) - allowed)
        assert not left, f"killed at step {at}: generations never published are left: {left}"
        assert not (target / "add.partial").exists()
    assert outcomes == {"old", "new"}, outcomes


# ---- repository build -------------------------------------------------------------------------------------------
def test_repository_build_killed_anywhere_leaves_a_whole_repository(cli, artifacts, tmp_path):
    pristine = build_repository(artifacts.root, tmp_path / "pristine", RepositoryConfig(precision="fp32",
                                                                                          max_candidates=100))
    target = tmp_path / "repo"

    def argv() -> list[str]:
        return ["repository", "build", "--artifacts", str(artifacts.root), "--out", str(target),
                "--precision", "fp32", "--max-candidates", "123"]

    def served_limits() -> set[str]:
        configs = load_configs(target)
        assert set(configs) == {"tokenizer", "encoder", "heads", "genrec"}
        return {configs[m].parameters["max_candidates"].string_value for m in ("genrec", "tokenizer")}

    fresh_copy(pristine, target)
    trace = steps(cli, argv(), tmp_path)
    outcomes = set()
    for at in kill_points(trace):
        fresh_copy(pristine, target)
        crash_run(cli, argv(), at)
        assert is_repository(target) and (target / MANIFEST).is_file(), f"killed at step {at}: no repository"
        limits = served_limits()
        assert limits in ({"100"}, {"123"}), f"killed at step {at} ({trace[at - 1]}): mixed configs {limits}"
        outcomes.add(limits.pop())
        assert cli.run(*argv()).rc == 0 and served_limits() == {"123"}
        assert not [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    assert outcomes == {"100", "123"}, outcomes


# ---- item 1: repository build --out --------------------------------------------------------------------------
def test_repository_build_never_replaces_a_folder_that_is_not_its_own(cli, artifacts, catalogs, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifacts.root, art)
    before = sorted(str(p.relative_to(art)) for p in art.rglob("*"))
    index = _build(catalogs["a"], artifacts, tmp_path / "index")
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "notes" / "keep.txt").write_text("mine")
    cases = {"the artifacts themselves": ["--artifacts", art, "--out", art],
             "the current folder": ["--artifacts", art, "--out", "."],
             "an index": ["--artifacts", art, "--out", index],
             "a folder holding the index": ["--artifacts", art, "--out", tmp_path, "--index", index]}
    for what, args in cases.items():
        res = cli.run("repository", "build", "--precision", "fp32", *args, cwd=work)
        assert res.rc == 2, f"{what}: rc {res.rc}\n{res.stderr}"
        assert res.stderr.startswith("genrec: error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert sorted(str(p.relative_to(art)) for p in art.rglob("*")) == before          # nothing of it removed
    assert (work / "notes" / "keep.txt").read_text() == "mine"
    assert same_index(index, index_state(index)) and (index / "ann.json").is_file()
    # its own repository is replaced (atomically), an empty folder is filled
    repo, empty = tmp_path / "repo", tmp_path / "empty"
    empty.mkdir()
    for out in (repo, repo, empty):
        res = cli.run("repository", "build", "--precision", "fp32", "--artifacts", art, "--out", out)
        assert res.rc == 0, res.stderr
        assert is_repository(out) and set(load_configs(out)) == {"tokenizer", "encoder", "heads", "genrec"}
    assert not [p for p in tmp_path.iterdir() if ".genrec-" in p.name]


# ---- item 2: retrieval files of another build ----------------------------------------------------------------
def test_an_index_rebuilt_for_another_catalog_keeps_no_retrieval_files_of_the_old_one(cli, artifacts, tiny_data,
                                                                                          tmp_path):
    """The review's reproduction: 6 items, then 3 into the same folder. The old ann.json (6 rows) passed the
    weights check, the ANN answered row 5 of a 3-row index: IndexError -> INTERNAL on every retrieval."""
    six = small_catalog(tiny_data, tmp_path / "six" / "news.tsv", slice(0, 6))
    three = small_catalog(tiny_data, tmp_path / "three" / "news.tsv", slice(40, 43))
    out = tmp_path / "index"
    for catalog in (six, three):
        res = cli.run("index", "build", "--catalog", catalog, "--artifacts", artifacts.root, "--out", out,
                      "--precision", "fp32", "--threads", THREADS, "--quiet")
        assert res.rc == 0, res.stderr
    index = ItemIndex(out)
    assert len(index) == 3
    retrieval_sound(out, artifacts)
    prec = has_retrieval(artifacts)
    retriever = Retriever(artifacts.graph(prec, "retrieval"), artifacts.sha256(prec, "retrieval"), threads=1,
                          log=lambda _m: None)
    user = np.ones(index.dim, np.float32)
    rows, _ = retriever.search(index, user, 10, np.zeros(0, np.int64))
    assert sorted(rows.tolist()) == [0, 1, 2]
    # the segment's identity is what the files record: a copy of another build's files is not used
    (out / "ann.json").write_text((out / "ann.json").read_text().replace(index.manifest["build_id"], "other-build"))
    assert not _valid(out, index.manifest["encoder_sha256"], artifacts.sha256(prec, "retrieval"), index.manifest)


def test_rebuilt_retrieval_files_never_change_under_a_reader(tmp_path):
    """build_ann writes new files beside and renames them in: a searcher that mapped the old files keeps
    reading them unchanged (a file truncated and rewritten in place under a mapping reads the new bytes, or
    SIGBUS where it got shorter)."""
    rng = np.random.default_rng(0)
    old, new = rng.standard_normal((50, 8)).astype(np.float32), rng.standard_normal((50, 8)).astype(np.float32)
    build_ann(tmp_path, old, encoder_sha256="e" * 64, retrieval_sha256="r" * 64, nprobe=4, exact_below=1000)
    reader = SegmentSearcher(tmp_path)
    inode = (tmp_path / RETRIEVAL_VECTORS).stat().st_ino
    build_ann(tmp_path, new, encoder_sha256="e" * 64, retrieval_sha256="r" * 64, nprobe=4, exact_below=1000)
    np.testing.assert_array_equal(np.asarray(reader.vectors), old)
    assert (tmp_path / RETRIEVAL_VECTORS).stat().st_ino != inode
    np.testing.assert_array_equal(np.asarray(SegmentSearcher(tmp_path).vectors), new)
