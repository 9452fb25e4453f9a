"""``genrec bench ann``: ANN libraries for the retrieval stage, measured against exact search on the same vectors.

Retrieval scores items by ``user . item_repr`` (the heads' match term: ``genrec.core.retrieval``), an inner product.
The catalog here is a model's real retrieval vectors, grown to 100k / 1M distinct items by adding Gaussian noise
(scale ``noise`` x the items' own per-dimension spread) to randomly drawn real ones, so it keeps the real
cluster structure; the queries are the model's real user vectors. Per library and setting: recall@M against
exact numpy search (tie-aware: an item counts when its exact score reaches the exact M-th score), p50/p99
latency of one query on one thread (the serving stub's share of 2 cores), build seconds, bytes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass
class AnnBenchConfig:
    vectors: str = dataclasses.field(default="", metadata={
        "help": "npz with 'items' (N, D) retrieval vectors and 'users' (Q, D) user vectors (genrec.core.retrieval); "
                "empty = a seeded random stand-in (for smoke runs only)"})
    sizes: tuple[int, ...] = dataclasses.field(default=(100_000, 1_000_000), metadata={
        "help": "catalog sizes to measure"})
    m: int = dataclasses.field(default=200, metadata={"help": "items retrieved per query (recall@M)"})
    queries: int = dataclasses.field(default=200, metadata={"help": "user vectors per measurement"})
    noise: float = dataclasses.field(default=0.3, metadata={
        "help": "noise scale, relative to each dimension's spread, that makes the grown catalog's items distinct"})
    libraries: tuple[str, ...] = dataclasses.field(default=("numpy", "faiss-ivf", "faiss-hnsw", "usearch"),
                                                    metadata={"help": "which searches to measure"})
    out: str = dataclasses.field(default="build/bench-ann", metadata={"help": "results.json goes here"})
    seed: int = dataclasses.field(default=0, metadata={"help": "catalog growth and query sampling"})


def grow_catalog(items: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = items[rng.integers(0, len(items), n)]
    return (base + rng.standard_normal(base.shape).astype(np.float32) * (noise * items.std(0))).astype(np.float32)


def exact_topm(items: np.ndarray, users: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, M) exact top-M ids by inner product and the M-th score per query (the tie-aware recall threshold)."""
    ids, kth = [], []
    for u in users:
        s = items @ u
        top = np.argpartition(-s, m - 1)[:m]
        ids.append(top[np.argsort(-s[top])])
        kth.append(s[ids[-1][-1]])
    return np.array(ids), np.array(kth)


def recall(items: np.ndarray, users: np.ndarray, found: list[np.ndarray], kth: np.ndarray, m: int) -> float:
    hits = [((items[f[f >= 0]] @ u) >= t - 1e-5).sum() for f, u, t in zip(found, users, kth)]
    return float(np.mean(np.minimum(hits, m)) / m)


def _timed(fn, users: np.ndarray) -> tuple[list[np.ndarray], dict[str, float]]:
    fn(users[0])
    out, times = [], []
    for u in users:
        t = time.perf_counter()
        out.append(fn(u))
        times.append((time.perf_counter() - t) * 1e3)
    return out, {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def measure(items: np.ndarray, users: np.ndarray, m: int, libraries: tuple[str, ...], log=print) -> list[dict]:
    n, d = items.shape
    _, kth = exact_topm(items, users, m)
    rows: list[dict[str, Any]] = []

    def add(lib: str, setting: str, fn, build_s: float, nbytes: int) -> None:
        found, lat = _timed(fn, users)
        rows.append({"library": lib, "setting": setting, "items": n, "recall": recall(items, users, found, kth, m),
                     **lat, "build_s": round(build_s, 1), "bytes": int(nbytes)})
        log(f"  {n:>8} {lib:<11} {setting:<22} recall@{m} {rows[-1]['recall']:.4f}  p50 {lat['p50_ms']:.2f} ms  "
            f"p99 {lat['p99_ms']:.2f} ms  build {build_s:.1f} s")

    if "numpy" in libraries:
        add("numpy", "exact", lambda u: np.argpartition(-(items @ u), m - 1)[:m], 0.0, items.nbytes)
    if "faiss-ivf" in libraries or "faiss-hnsw" in libraries:
        import faiss

        faiss.omp_set_num_threads(1)
    if "faiss-ivf" in libraries:
        nlist = int(2 ** round(np.log2(4 * np.sqrt(n))))
        t = time.perf_counter()
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        faiss.omp_set_num_threads(2)
        ivf.train(items[np.random.default_rng(0).permutation(n)[: max(64 * nlist, 50_000)][:n]])
        ivf.add(items)
        faiss.omp_set_num_threads(1)
        build = time.perf_counter() - t
        for nprobe in (4, 8, 16, 32, 64):
            ivf.nprobe = nprobe
            add("faiss", f"IVF{nlist},Flat nprobe={nprobe}", lambda u: ivf.search(u[None], m)[1][0], build,
                items.nbytes + nlist * d * 4)
    if "faiss-hnsw" in libraries:
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        faiss.omp_set_num_threads(2)
        hnsw.add(items)
        faiss.omp_set_num_threads(1)
        build = time.perf_counter() - t
        for ef in (200, 400):
            hnsw.hnsw.efSearch = ef
            add("faiss", f"HNSW32,Flat ef={ef}", lambda u: hnsw.search(u[None], m)[1][0], build,
                items.nbytes + n * 32 * 2 * 4)
    if "usearch" in libraries:
        from usearch.index import Index

        t = time.perf_counter()
        idx = Index(ndim=d, metric="ip", dtype="f32", connectivity=16, expansion_add=128)
        idx.add(np.arange(n), items, threads=2)
        build = time.perf_counter() - t
        for ef in (200, 400):
            idx.expansion_search = ef
            add("usearch", f"HNSW16 f32 ef={ef}", lambda u: idx.search(u, m, threads=1).keys, build,
                idx.memory_usage)
    return rows


def run_ann_bench(cfg: AnnBenchConfig) -> dict[str, Any]:
    rng = np.random.default_rng(cfg.seed)
    if cfg.vectors:
        data = np.load(cfg.vectors)
        base, users = data["items"].astype(np.float32), data["users"].astype(np.float32)
    else:
        base = rng.standard_normal((3000, 64)).astype(np.float32)
        users = rng.standard_normal((cfg.queries, 64)).astype(np.float32)
    users = users[rng.permutation(len(users))[: cfg.queries]]
    rows = []
    for n in cfg.sizes:
        items = grow_catalog(base, n, cfg.noise, cfg.seed)
        rows += measure(items, users, cfg.m, cfg.libraries)
        del items
    result = {"config": dataclasses.asdict(cfg), "rows": rows}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
