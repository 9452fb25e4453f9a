"""`genrec index build --ray` on a REAL local Ray cluster (a head and two worker nodes started here, torn down
after): the same index as the single-process build, byte for byte; resumable from an interrupted run, with or
without Ray."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from workers import THREADS

from genrec.core.index import FILES, IndexConfig, build_index
from genrec.index_encoders import ALL

pytest.importorskip("ray", reason="genrec[ray] is not installed")

from genrec.localray import LocalRayCluster  # noqa: E402  (after the skip: it needs the ray CLI)

DATA_FILES = [f for f in FILES if f not in ("index.json", "progress.json")]
VOLATILE = {"seconds", "created", "encoded_texts", "reused_texts", "build_id"}   # facts of the run, not the index
CHUNK = 64                                                                         # many chunks, out of order


@pytest.fixture(scope="module")
def cluster():
    with LocalRayCluster(workers=2, cpus_per_node=1) as c:
        yield c


@pytest.fixture(scope="module")
def catalog(tiny_data, tmp_path_factory) -> Path:
    """The tiny catalog plus 60 items repeating earlier titles under new ids (the text dedupe, across chunks)."""
    lines = (tiny_data / "train" / "news.tsv").read_text().splitlines()
    dups = []
    for i, line in enumerate(lines[:: max(1, len(lines) // 60)][:60]):
        cols = line.split("\t")
        dups.append("\t".join([f"DUP{i}", *cols[1:]]))
    path = tmp_path_factory.mktemp("catalog") / "news.tsv"
    path.write_text("\n".join(lines + dups) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(catalog, artifacts, tmp_path_factory) -> Path:
    """The single-process INT8 build at its defaults (one chunk, both cores)."""
    return build_index(catalog, artifacts.root, tmp_path_factory.mktemp("index") / "single",
                       IndexConfig(precision="int8", threads=THREADS), progress=False, log=lambda _m: None)


def assert_same_index(got: Path, want: Path) -> None:
    for name in DATA_FILES:
        assert (got / name).read_bytes() == (want / name).read_bytes(), f"{name} differs"
    g, w = (json.loads((p / "index.json").read_text()) for p in (got, want))
    assert g["complete"] and {k: v for k, v in g.items() if k not in VOLATILE} == \
        {k: v for k, v in w.items() if k not in VOLATILE}


def test_ray_build_from_the_cli_is_byte_identical_to_the_single_process_build(cluster, catalog, artifacts, reference,
                                                                              tmp_path, capsys):
    from genrec.cli import main

    out = tmp_path / "ray"
    assert main(["index", "build", "--catalog", str(catalog), "--artifacts", str(artifacts.root), "--out", str(out),
                 "--precision", "int8", "--chunk-size", str(CHUNK), "--ray", cluster.address, "--quiet"]) == 0
    assert_same_index(out, reference)
    said = capsys.readouterr().out
    # both worker nodes encoded a share: "... encoded by 2 workers [host:pid N texts, host:pid M texts] ..."
    shares = [int(n) for n in re.findall(r":\d+ (\d+) texts", said)]
    assert len(shares) == 2 and min(shares) > 0, said
    manifest = json.loads((out / "index.json").read_text())
    # repeated titles whose vector was back before their chunk was sent are copied, not encoded (the last chunks'
    # titles may still be in flight then, so not all 60)
    assert manifest["reused_texts"] >= 30 and sum(shares) == manifest["encoded_texts"] == \
        manifest["count"] - manifest["reused_texts"]
    assert json.loads((out / "progress.json").read_text())["rows"] == manifest["count"]


class Interrupt(Exception):
    pass


def interrupted_ray_build(out: Path, catalog: Path, artifacts, address: str, after_rows: int) -> dict:
    def stop(rows: int) -> None:
        if rows >= after_rows:
            raise Interrupt
    with pytest.raises(Interrupt):
        build_index(catalog, artifacts.root, out, IndexConfig(precision="int8", chunk_size=CHUNK, ray=address),
                    progress=False, log=lambda _m: None, on_chunk=stop, encoders=ALL)
    state = json.loads((out / "progress.json").read_text())
    assert not json.loads((out / "index.json").read_text())["complete"]
    return state


def test_an_interrupted_ray_build_resumes_with_or_without_ray(cluster, catalog, artifacts, reference, tmp_path):
    n = json.loads((reference / "index.json").read_text())["count"]
    # interrupted on Ray, resumed on Ray: finished chunks (also those above the first gap) are not encoded again
    out = tmp_path / "ray"
    state = interrupted_ray_build(out, catalog, artifacts, cluster.address, after_rows=5 * CHUNK)
    assert state["chunk_size"] == CHUNK and state["rows"] % CHUNK == 0 and state["rows"] < n
    done = state["rows"] + CHUNK * len(state["chunks"])
    assert done >= 5 * CHUNK
    said: list[str] = []
    build_index(catalog, artifacts.root, out, IndexConfig(precision="int8", chunk_size=CHUNK, ray=cluster.address),
                progress=False, log=said.append, encoders=ALL)
    assert_same_index(out, reference)
    # chunks finish out of order: the resume point is the rows without a gap, plus the finished chunks above it
    assert (f"resuming with {done} of {n} rows written" if state["chunks"] else
            f"resuming at row {done} of {n}") in "\n".join(said)
    encoded = json.loads((out / "index.json").read_text())["encoded_texts"]
    assert encoded <= n - done, (encoded, n, done)
    # interrupted on Ray, resumed in this process: its resume point is the rows written without a gap
    out2 = tmp_path / "ray-then-local"
    shutil.rmtree(out2, ignore_errors=True)
    interrupted_ray_build(out2, catalog, artifacts, cluster.address, after_rows=3 * CHUNK)
    build_index(catalog, artifacts.root, out2, IndexConfig(precision="int8", threads=THREADS), progress=False,
                log=lambda _m: None)
    assert_same_index(out2, reference)
    vectors = np.fromfile(out2 / "vectors.f32", dtype=np.float32)
    assert np.isfinite(vectors).all() and np.abs(vectors).sum() > 0


def test_unreachable_cluster_is_a_clear_error(catalog, artifacts, tmp_path):
    from genrec.raymap import RayUnavailable

    with pytest.raises(RayUnavailable, match="cannot connect to a Ray cluster at '127.0.0.1:1'"):
        build_index(catalog, artifacts.root, tmp_path / "x", IndexConfig(precision="int8", ray="127.0.0.1:1"),
                    progress=False, log=lambda _m: None, encoders=ALL)


def test_a_worker_killed_mid_build_is_restarted_and_its_chunk_encoded_again(cluster, catalog, artifacts, reference,
                                                                             tmp_path):
    """Ray restarts a dead actor and retries the chunk it held (a lost node's worker dies the same way)."""
    import os
    import signal

    import psutil

    killed: list[int] = []

    def kill_one_worker(rows: int) -> None:
        if killed:
            return
        for proc in psutil.process_iter(["cmdline"]):
            if (proc.info["cmdline"] or [""])[0].startswith("ray::ChunkEncoder"):
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
                return
    out = tmp_path / "ray"
    said: list[str] = []
    build_index(catalog, artifacts.root, out, IndexConfig(precision="int8", chunk_size=CHUNK, ray=cluster.address),
                progress=False, log=said.append, on_chunk=kill_one_worker, encoders=ALL)
    assert killed, "no ChunkEncoder process found to kill"
    assert_same_index(out, reference)
    # the restarted actor is a new process: the final report names one the killed one is not
    assert str(killed[0]) not in said[-1] and len(re.findall(r":\d+ \d+ texts", said[-1])) == 2, said[-1]
