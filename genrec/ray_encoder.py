"""``genrec index build --ray``: the catalog's chunks encoded by Ray actors, written by the driver.

The driver does what the single-process build does around the encoder: it streams news.tsv, keeps the text
dedupe (an in-chunk repeat or a text whose vector came back earlier is copied, not sent), writes each chunk's rows
into the same memory-mapped files and records the resume point. Only the encoding moves: each actor holds an ONNX
Runtime session of the same encoder graph (shipped through Ray's object store, so worker nodes need genrec
installed but not the artifacts folder) and runs :func:`genrec.core.index.encode_texts`, the single-process build's
encoding step. With a batch-invariant encoder (the per-text INT8 graph) the index is byte-identical to the
single-process one, whatever the chunk order or worker count (tested).

Resume: chunks finish out of order, so progress.json holds ``rows`` (every row below is written: what the
single-process build reads) plus ``chunks`` (starts of finished chunks above it, for this ``chunk_size``). An
interrupted build resumes with or without --ray.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from genrec.core import fsio
from genrec.core.artifacts import ServingAssets
from genrec.core.index import ChunkPlan, IndexConfig, catalog_chunks, encode_texts, seal
from genrec.core.mind import iter_news
from genrec.core.text import item_text
from genrec.core.vcache import VectorLRU
from genrec.raymap import connected, map_chunks, worker_count


class ChunkEncoder:
    """A Ray actor: one ONNX Runtime session of the index's encoder and the tokenizer; encodes lists of texts.

    The encoder's bytes and tokenizer.json come with each task as ``[ObjectRef]`` (a reference, not the data) and
    are loaded on the first task, also after Ray restarted the actor: an object-store constructor argument would
    do the same but Ray warns that restarts then depend on it (ray-project/ray#53727)."""

    def __init__(self, max_length: int, threads: int, batch_size: int):
        self.max_length, self.threads, self.batch_size = max_length, threads, batch_size
        self.encoder = self.tokenizer = None
        self.texts = self.seconds = 0

    def _load(self, shipped) -> None:
        import ray

        from genrec.core.runtime import OrtEncoder
        from genrec.core.text import TextTokenizer

        graph, tokenizer_json = ray.get(shipped)
        fd, path = tempfile.mkstemp(suffix=".onnx", prefix="genrec-encoder-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(graph)
            self.encoder = OrtEncoder(path, threads=self.threads)      # the model is in memory once loaded
        finally:
            os.unlink(path)
        self.tokenizer = TextTokenizer(tokenizer_json, max_length=self.max_length)

    def run(self, key: int, payload: tuple[list[str], list]) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
        texts, (shipped,) = payload
        if self.encoder is None:
            self._load(shipped)
        t0 = time.perf_counter()
        vectors, truncated = encode_texts(self.encoder, self.tokenizer, texts, self.batch_size)
        self.texts += len(texts)
        self.seconds += time.perf_counter() - t0
        return key, (vectors, truncated)

    def describe(self) -> dict[str, Any]:
        import socket

        return {"host": socket.gethostname(), "pid": os.getpid(), "texts": self.texts,
                "seconds": round(self.seconds, 2)}


def encode_on_ray(catalog: Path, graph_path: Path, assets: ServingAssets, out: Path, manifest: dict[str, Any],
                  done: int, cfg: IndexConfig, *, progress: bool, log: Callable[[str], None],
                  on_chunk: Callable[[int], None] | None) -> Path:
    """Encode rows ``done..count`` of the index at ``out`` (files laid out by ``build_index``) on the Ray cluster
    at ``cfg.ray``; mark the index complete."""
    n, dim = manifest["count"], manifest["dim"]
    state = json.loads((out / "progress.json").read_text())
    finished = set(state.get("chunks", [])) if state.get("chunk_size") == cfg.chunk_size else set()
    finished = {s for s in finished if s >= done}
    vectors = np.memmap(out / "vectors.f32", dtype=np.float32, mode="r+", shape=(n, dim))
    cut = np.memmap(out / "truncated.u8", dtype=np.uint8, mode="r+", shape=(n,))
    seen = VectorLRU(cfg.dedupe_mb * 2**20)        # vectors back from the workers, by text key
    plans: dict[int, ChunkPlan] = {}               # chunk start -> what to fill in when its vectors come back
    counts = {"encoded": 0, "reused": 0, "rows": done + sum(min(cfg.chunk_size, n - s) for s in finished)}
    prefix = [done]
    if finished:
        log(f"{out}: resuming with {counts['rows']} of {n} rows written (rows below {done} and {len(finished)} "
            f"chunks of {cfg.chunk_size} above)")
    bar = None
    if progress:
        from genrec.core.progress import progress as progress_bar
        bar = progress_bar(total=n, initial=counts["rows"], desc="indexing (ray)", unit="item", mininterval=1.0)

    def write(start: int, out_vec: np.ndarray, out_cut: np.ndarray) -> None:
        stop = start + len(out_vec)
        vectors[start:stop] = out_vec
        cut[start:stop] = out_cut
        cut.flush()
        vectors.flush()
        finished.add(start)
        while prefix[0] in finished:                               # rows below prefix are all on disk
            finished.discard(prefix[0])
            prefix[0] = min(n, prefix[0] + cfg.chunk_size)
        fsio.write_json(out / "progress.json", {"rows": prefix[0], "chunk_size": cfg.chunk_size,
                                                "chunks": sorted(finished)})    # only after the rows are on disk
        counts["rows"] += len(out_vec)
        if bar is not None:
            bar.update(len(out_vec))
        if on_chunk is not None:
            on_chunk(counts["rows"])

    def tasks() -> Iterator[tuple[int, tuple[list[str], list]]]:
        row = 0
        for chunk in catalog_chunks(iter_news(catalog, skip_bad_lines=cfg.skip_bad_lines), cfg.chunk_size):
            start, row = row, row + len(chunk)
            if row <= done or start in finished:
                continue                                           # on disk before the interruption
            plan = ChunkPlan([item_text(it.title, it.abstract, manifest["use_abstract"]) for it in chunk], dim, seen,
                             bool(cfg.dedupe_mb))
            if plan.texts:
                plans[start] = plan
                yield start, (plan.texts, [shipped])
            else:
                finish(start, plan, None)

    def finish(row: int, plan: ChunkPlan, result: tuple[np.ndarray, np.ndarray] | None) -> None:
        out_vec, out_cut = plan.fill(result, seen)
        counts["encoded"] += len(plan.texts)
        counts["reused"] += plan.reused
        write(row, out_vec, out_cut)

    t0 = time.perf_counter()
    with connected(cfg.ray) as ray:
        workers = worker_count(ray, cfg.ray_cpus_per_worker, cfg.ray_workers, log)
        shipped = ray.put((Path(graph_path).read_bytes(), assets.tokenizer_json))
        log(f"ray: {workers} encoder workers of {cfg.ray_cpus_per_worker} CPU(s) on "
            f"{len([nd for nd in ray.nodes() if nd.get('Alive')])} node(s); rows {done}..{n} in chunks of "
            f"{cfg.chunk_size}")
        described = map_chunks(ray, ChunkEncoder, (assets.max_length, cfg.ray_cpus_per_worker, cfg.batch_size),
                               tasks(), lambda row, result: finish(row, plans.pop(row), result),
                               workers=workers, cpus_per_worker=cfg.ray_cpus_per_worker)
    if bar is not None:
        bar.close()
    if prefix[0] != n:
        raise RuntimeError(f"{out}: rows {prefix[0]}..{n} were not written (chunks {sorted(finished)[:5]}...)")
    truncated = int(np.count_nonzero(cut))
    manifest.update(complete=True, seconds=round(time.perf_counter() - t0, 1), truncated_texts=truncated,
                    encoded_texts=counts["encoded"], reused_texts=counts["reused"])
    seal(out, manifest)                      # the data files durable, then the manifest: complete
    per_worker = ", ".join(f"{d['host']}:{d['pid']} {d['texts']} texts in {d['seconds']} s" for d in described)
    log(f"indexed {n} items into {out} on Ray ({manifest['seconds']} s for this run; {counts['encoded']} texts "
        f"encoded by {workers} workers [{per_worker}], {counts['reused']} repeated texts reused; {truncated} texts "
        f"cut to {assets.max_length} tokens)")
    return out
