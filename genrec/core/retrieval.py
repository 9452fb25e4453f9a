"""Whole-catalog retrieval: the user vector, item retrieval vectors and the ANN index over them. Torch-free.

The click logit is ``user . item_repr / sqrt(D)`` plus a feature term (``RecommenderHeads.forward``). The first
term alone is an inner product between a per-user and a per-item vector, so the items with the largest match
for a user can be found among millions by an ANN index, then re-ranked by the full heads (features, item
statistics, explanations). ``retrieval.onnx`` (exported with the heads, same weights) computes both vectors:
``item_repr`` of catalog items at index build, ``user_vector`` of a request's history when serving.

ANN: faiss IVF-Flat, inner product (measured against usearch and faiss HNSW by ``genrec bench ann``: README).
Per index segment, beside its vectors::

  retrieval.f32     (N, D) float32 retrieval vectors, row-aligned with the segment's vectors
  ann.faiss         the IVF index over them (ids = segment rows), memory-mapped when served
  ann.json          format, encoder sha256, retrieval graph sha256, nlist, nprobe, count, and the segment it was
                    built from (its build id and row count): files of another build of the folder are not used

Every file is written beside its target and renamed in (``genrec.core.fsio``), ann.json last: a server that has
the old files memory-mapped keeps reading them, never a file rewritten under it.

Segments smaller than ``exact_below`` items get no IVF: they are searched exactly (a live delta usually).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from genrec.core import fsio
from genrec.core.contract import RETRIEVAL  # noqa: F401  (re-exported: the graph this module runs)

ANN_FORMAT = "genrec.ann/1"
RETRIEVAL_VECTORS = "retrieval.f32"
ANN_INDEX = "ann.faiss"
ANN_MANIFEST = "ann.json"


class OrtRetrieval:
    """retrieval.onnx in process (ONNX Runtime)."""

    def __init__(self, path: str | Path, threads: int = 0):
        from genrec.core.runtime import session

        self.sess = session(path, threads)

    def _run(self, vectors: np.ndarray, cat: np.ndarray, sub: np.ndarray) -> list[np.ndarray]:
        return self.sess.run(None, {"item_vectors": np.ascontiguousarray(vectors, dtype=np.float32),
                                    "category": np.asarray(cat, dtype=np.int64),
                                    "subcategory": np.asarray(sub, dtype=np.int64)})

    def item_repr(self, vectors: np.ndarray, cat: np.ndarray, sub: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """(N, D) item vectors -> (N, D) retrieval vectors (rows independent: chunked)."""
        if len(vectors) == 0:
            return np.zeros((0, vectors.shape[1]), dtype=np.float32)
        return np.concatenate([self._run(vectors[i: i + chunk], cat[i: i + chunk], sub[i: i + chunk])[0]
                               for i in range(0, len(vectors), chunk)])

    def user_vector(self, vectors: np.ndarray, cat: np.ndarray, sub: np.ndarray) -> np.ndarray:
        """(H, D) history item vectors (H may be 0) -> (D,) user vector."""
        return self._run(vectors, cat, sub)[1]


def default_nlist(n: int) -> int:
    """Inverted lists: ~4 sqrt(N), a power of two (100k -> 1024, 1M -> 4096)."""
    return max(1, int(2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))))


def segment_id(segment_manifest: dict[str, Any]) -> str:
    """What identifies one build of an index segment: its build id (written since the retrieval files record it),
    else a digest of what an older manifest holds (catalog, encoder, time, count)."""
    if segment_manifest.get("build_id"):
        return str(segment_manifest["build_id"])
    import hashlib

    keys = ("catalog_sha256", "encoder_sha256", "created", "count", "generation")
    return "legacy-" + hashlib.sha256(json.dumps([segment_manifest.get(k) for k in keys]).encode()).hexdigest()[:16]


def build_ann(folder: str | Path, vectors: np.ndarray, *, encoder_sha256: str, retrieval_sha256: str,
              nprobe: int, exact_below: int = 20_000, threads: int = 0, seed: int = 0,
              segment: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write RETRIEVAL_VECTORS, (ANN_INDEX,) ANN_MANIFEST for one segment (``segment``: its index.json, which
    the manifest records), each beside its target then renamed in, the manifest last."""
    folder = Path(folder)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    fsio.remove(folder / ANN_MANIFEST)             # from here until the new one is in, the files are not used
    fsio.write_array(folder / RETRIEVAL_VECTORS, vectors)
    manifest: dict[str, Any] = {"format": ANN_FORMAT, "count": n, "dim": d, "encoder_sha256": encoder_sha256,
                                "retrieval_sha256": retrieval_sha256, "kind": "exact"}
    if segment is not None:
        manifest.update(segment_id=segment_id(segment), segment_count=int(segment["count"]))
    if n >= exact_below:
        import faiss

        if threads > 0:
            faiss.omp_set_num_threads(threads)
        nlist = default_nlist(n)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(seed).permutation(n)[: 64 * nlist]]
        ivf.train(sample)
        ivf.add(vectors)
        fsio.write_with(folder / ANN_INDEX, lambda tmp: faiss.write_index(ivf, str(tmp)))
        manifest.update(kind="ivf_flat", nlist=nlist, nprobe=min(nprobe, nlist))
    else:
        fsio.remove(folder / ANN_INDEX)
    fsio.write_json(folder / ANN_MANIFEST, manifest)
    return manifest


class SegmentSearcher:
    """Top-M inner-product search over one segment's retrieval vectors: IVF (memory-mapped inverted lists) or
    exact numpy for small segments."""

    @classmethod
    def exact(cls, vectors: np.ndarray) -> SegmentSearcher:
        """An in-memory exact searcher (a segment published before its retrieval files were built)."""
        self = cls.__new__(cls)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.manifest = {"count": len(vectors), "kind": "exact (computed when served)"}
        self.ivf = None
        return self

    def __init__(self, folder: str | Path, *, expect_encoder_sha256: str | None = None,
                 expect_retrieval_sha256: str | None = None, nprobe: int = 0):
        folder = Path(folder)
        path = folder / ANN_MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no retrieval index ({ANN_MANIFEST}): rebuild it with "
                                    "`genrec index build` from artifacts that include retrieval.onnx")
        self.manifest = m = json.loads(path.read_text())
        if m.get("format") != ANN_FORMAT:
            raise ValueError(f"{path}: format {m.get('format')!r} is not {ANN_FORMAT!r}")
        for key, want in (("encoder_sha256", expect_encoder_sha256), ("retrieval_sha256", expect_retrieval_sha256)):
            if want is not None and m[key] != want:
                raise ValueError(f"{path}: built with {key} {m[key][:12]}, the served artifacts have {want[:12]}: "
                                 "rebuild the index")
        self.vectors = np.memmap(folder / RETRIEVAL_VECTORS, dtype=np.float32, mode="r",
                                 shape=(m["count"], m["dim"]))
        self.ivf = None
        if m["kind"] == "ivf_flat":
            import faiss

            self.ivf = faiss.read_index(str(folder / ANN_INDEX), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            self.ivf.nprobe = min(nprobe, m["nlist"]) if nprobe > 0 else m["nprobe"]

    def __len__(self) -> int:
        return self.manifest["count"]

    def search(self, user: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(D,) -> (rows, scores), best first, at most m (fewer when the segment is smaller)."""
        m = min(m, len(self))
        if m <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if self.ivf is not None:
            scores, rows = self.ivf.search(np.asarray(user, np.float32)[None], m)
            keep = rows[0] >= 0
            return rows[0][keep].astype(np.int64), scores[0][keep]
        s = self.vectors @ np.asarray(user, np.float32)
        top = np.argpartition(-s, m - 1)[:m] if m < len(s) else np.arange(len(s))
        top = top[np.argsort(-s[top], kind="stable")]
        return top.astype(np.int64), s[top]


# ---- an index's retrieval files, and retrieval over a served generation -----------------------------------------

@dataclasses.dataclass
class RetrievalConfig:
    nprobe: int = dataclasses.field(default=64, metadata={
        "help": "inverted lists searched per query: 64 of ~4 sqrt(N) keeps recall@200 >= 0.99 of exact search at "
                "100k and 1M items (genrec bench ann)"})
    exact_below: int = dataclasses.field(default=20_000, metadata={
        "help": "segments with fewer items get no IVF and are searched exactly (about as fast, and exact)"})
    threads: int = dataclasses.field(default=0, metadata={"help": "threads for k-means and ORT (0 = all cores)"})


def has_retrieval(artifacts) -> str | None:
    """The first precision of an Artifacts whose export includes retrieval.onnx (None: exported before it)."""
    return next((p for p in artifacts.precisions if "retrieval" in artifacts.manifest["precisions"][p]), None)


def _valid(folder: Path, encoder_sha256: str, retrieval_sha256: str, segment: dict[str, Any]) -> bool:
    """Whether ``folder``'s retrieval files were built from this segment (its build and row count) with these
    weights: files of another build of the same folder (another catalog) must not be searched."""
    try:
        m = json.loads((folder / ANN_MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(m, dict) and m.get("format") == ANN_FORMAT and m.get("encoder_sha256") == encoder_sha256
            and m.get("retrieval_sha256") == retrieval_sha256 and m.get("segment_id") == segment_id(segment)
            and m.get("count") == m.get("segment_count") == int(segment["count"]))


def segment_retrieval_builder(artifacts: str | Path, cfg: RetrievalConfig = RetrievalConfig(), *,
                              log: Callable[[str], None] = print) -> Callable[[Path], bool]:
    """A function that writes one index segment folder's retrieval files (retrieval vectors + IVF) unless they
    are there already from these weights; True when it built them."""
    from genrec.core.artifacts import Artifacts
    from genrec.core.index import Segment

    art = Artifacts.load(artifacts)
    precision = has_retrieval(art)
    if precision is None:
        raise ValueError(f"{art.root} has no retrieval.onnx: re-export the model (genrec export) to serve retrieval")
    graph_sha = art.sha256(precision, "retrieval")
    ort = OrtRetrieval(art.graph(precision, "retrieval"), cfg.threads)

    def build(folder: Path) -> bool:
        seg = Segment(folder)
        enc = seg.manifest["encoder_sha256"]
        if _valid(seg.folder, enc, graph_sha, seg.manifest):
            return False
        vectors = ort.item_repr(np.asarray(seg.vectors), np.asarray(seg.category), np.asarray(seg.subcategory))
        m = build_ann(seg.folder, vectors, encoder_sha256=enc, retrieval_sha256=graph_sha, nprobe=cfg.nprobe,
                      exact_below=cfg.exact_below, threads=cfg.threads, segment=seg.manifest)
        log(f"retrieval: {seg.folder}: {m['count']} items, {m['kind']}"
            + (f" (nlist {m['nlist']}, nprobe {m['nprobe']})" if m["kind"] == "ivf_flat" else ""))
        return True

    return build


def build_index_retrieval(index: str | Path, artifacts: str | Path, cfg: RetrievalConfig = RetrievalConfig(), *,
                          log: Callable[[str], None] = print) -> list[str]:
    """Retrieval vectors (+ IVF) for every segment of INDEX_DIR's current generation that lacks them or has them
    from other weights (after ``index build``; ``index add`` builds its new segment's before it switches).
    Returns the segment folders built."""
    from genrec.core.index import ItemIndex

    build = segment_retrieval_builder(artifacts, cfg, log=log)
    return [str(seg.folder) for seg in ItemIndex(index).segments if build(seg.folder)]


class Retriever:
    """Top-M items of a served index generation for a user vector, ANN per segment.

    Searchers are opened once per segment (keyed like the index's segments, so a generation switch opens only
    the new delta's). A segment whose retrieval files are missing or come from other weights (published before
    ``build_index_retrieval`` ran on it) is computed in process once and searched exactly, with a log line.
    """

    def __init__(self, graph_path: str | Path, graph_sha256: str, *, nprobe: int = 0, threads: int = 1,
                 log: Callable[[str], None] = print):
        self.graph = OrtRetrieval(graph_path, threads)
        self.sha = graph_sha256
        self.nprobe = nprobe
        self.log = log
        self._searchers: dict[Any, SegmentSearcher] = {}
        self._lock = threading.Lock()

    def searcher(self, seg) -> SegmentSearcher:
        found = self._searchers.get(seg.key)
        if found is not None:
            return found
        with self._lock:
            if seg.key not in self._searchers:
                enc = seg.manifest["encoder_sha256"]
                if _valid(seg.folder, enc, self.sha, seg.manifest):
                    s = SegmentSearcher(seg.folder, nprobe=self.nprobe)
                else:
                    self.log(f"retrieval: {seg.folder} has no retrieval files for these weights; computing its "
                             f"{len(seg)} retrieval vectors now (run `genrec index retrieval`)")
                    s = SegmentSearcher.exact(self.graph.item_repr(np.asarray(seg.vectors), np.asarray(seg.category),
                                                                   np.asarray(seg.subcategory)))
                self._searchers = {**self._searchers, seg.key: s}
            return self._searchers[seg.key]

    def forget_except(self, segments) -> None:
        """Drop searchers of segments no longer served (after a generation switch)."""
        keep = {s.key for s in segments}
        with self._lock:
            self._searchers = {k: v for k, v in self._searchers.items() if k in keep}

    def user_vector(self, vectors: np.ndarray, cat: np.ndarray, sub: np.ndarray) -> np.ndarray:
        return self.graph.user_vector(vectors, cat, sub)

    def search(self, index, user: np.ndarray, m: int, exclude_rows: np.ndarray,
               categories: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Global rows of ``index`` (an ItemIndex generation) and scores, best first, at most m: without
        ``exclude_rows`` and rows shadowed by a newer segment, only ``categories`` (ids) when given."""
        if len(self._searchers) > len(index.segments) + 2:   # switched generations: drop the unserved segments'
            self.forget_except(index.segments)
        exclude = np.unique(exclude_rows[exclude_rows >= 0])
        fetch = m + len(exclude) if categories is None else max(8 * m, m + len(exclude))
        rows, scores = [], []
        for seg, off in zip(index.segments, index.offsets):
            r, s = self.searcher(seg).search(user, fetch)
            if categories is not None and len(r):
                keep = np.isin(np.asarray(seg.category)[r], categories)
                r, s = r[keep], s[keep]
            rows.append(r + off)
            scores.append(s)
        rows_a, scores_a = np.concatenate(rows), np.concatenate(scores)
        if len(index.segments) > 1 and len(rows_a):            # an id re-added in the delta: its old row goes
            ids = _ids_of(index, rows_a)
            rows_a_live = index.rows(ids) == rows_a
            rows_a, scores_a = rows_a[rows_a_live], scores_a[rows_a_live]
        keep = ~np.isin(rows_a, exclude)
        rows_a, scores_a = rows_a[keep], scores_a[keep]
        order = np.argsort(-scores_a, kind="stable")[:m]
        return rows_a[order], scores_a[order]


@dataclasses.dataclass(frozen=True)
class PopularPool:
    """The second candidate source of retrieval: the most popular items of one stats generation that one index
    generation holds, most popular first. Built once per (stats, index) pair; per request only filtered."""

    rows: np.ndarray          # (P,) global rows of the index
    category: np.ndarray      # (P,) their category ids (for restrict_category)

    @classmethod
    def build(cls, index, stats_table, n: int) -> PopularPool:
        ids = stats_table.most_popular(n)
        rows = index.rows([bytes(i) for i in ids]) if len(ids) else np.zeros(0, np.int64)
        rows = np.asarray(rows[rows >= 0], dtype=np.int64)        # items the stats know but the index lacks: out
        return cls(rows, index.take(rows)[2] if len(rows) else np.zeros(0, np.int64))

    def pick(self, n: int, exclude_rows: np.ndarray, categories: np.ndarray | None = None) -> np.ndarray:
        """Up to ``n`` rows, most popular first, not in ``exclude_rows``, in ``categories`` when given."""
        keep = ~np.isin(self.rows, exclude_rows)
        if categories is not None:
            keep &= np.isin(self.category, categories)
        return self.rows[keep][:n]


def _ids_of(index, rows: np.ndarray) -> list[bytes]:
    out: list[bytes] = [b""] * len(rows)
    for seg, off in zip(index.segments, index.offsets):
        mask = np.flatnonzero((rows >= off) & (rows < off + len(seg)))
        for j, r in zip(mask.tolist(), (rows[mask] - off).tolist()):
            out[j] = bytes(seg.ids[r])
    return out
