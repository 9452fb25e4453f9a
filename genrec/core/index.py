"""Item-embedding index: a whole catalog encoded once, memory-mapped, stamped with the encoder's hash.

INDEX_DIR/
  index.json        manifest: encoder sha256 + precision, D, row count, catalog fingerprint, complete flag
  ids.bin           (N,) fixed-width UTF-8 ids, catalog order          memory-mapped
  order.i64         (N,) argsort of ids: binary search without a dict  memory-mapped
  category.i64      (N,) category ids, subcategory.i64 (N,)             memory-mapped
  vectors.f32       (N, D) float32 item vectors                         memory-mapped
  truncated.u8      (N,) 1 where the item's text was cut to max tokens
  progress.json     rows encoded so far (resume point)

Building streams news.tsv twice (count + ids/categories, then encode in chunks), so a 1M-item catalog
never sits in memory; an interrupted build resumes from the last flushed chunk. A text seen earlier in the
build (``dedupe_mb`` of recent vectors, keyed by a hash of the text) is copied instead of encoded again:
the encoder is a function of the text alone, so the index is the same, only cheaper where texts repeat.
Torch-free: the serving model opens indexes with this module.

Live updates (``genrec index add``): INDEX_DIR may hold generations next to (or instead of) the legacy
top-level files::

  CURRENT           "gen-000007": the served generation, replaced by write-temp + rename (the atomic switch)
  gen-000005/       a base: a complete genrec.index/2 segment (above) + generation.json {"segments": ["gen-000005"]}
  gen-000007/       a delta: the items added since the base (one segment) + generation.json
                    {"segments": ["gen-000005", "gen-000007"]}; "." names the legacy top-level files as a base

Without CURRENT the folder is read as before. Servers follow CURRENT with :class:`LiveIndex`; the writer
(``add_items``) deletes generations the current and ``keep_generations`` previous ones no longer use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from genrec.core import fsio
from genrec.core.artifacts import TORCHSCRIPT_GRAPH, Artifacts, ServingAssets
from genrec.core.contract import CONTRACT_VERSION
from genrec.core.errors import UserError
from genrec.core.mind import NewsItem, iter_news
from genrec.core.refresh import Refresher
from genrec.core.runtime import OrtEncoder
from genrec.core.text import encode_length_sorted, item_text, sha256_file
from genrec.core.vcache import VectorLRU

FORMAT = "genrec.index/2"      # /2: truncated.u8 (per-row truncation flags)
MAX_ID_BYTES = 64


FILES = ("index.json", "ids.bin", "order.i64", "category.i64", "subcategory.i64", "vectors.f32", "truncated.u8",
         "progress.json")
DATA_FILES = FILES[1:7]                      # fsynced before the manifest that declares them complete
# a segment's retrieval files (genrec.core.retrieval: RETRIEVAL_VECTORS, ANN_INDEX, ANN_MANIFEST): derived from
# its vectors, so a rebuild removes them with the rest (they would describe another catalog)
DERIVED_FILES = ("ann.json", "ann.faiss", "retrieval.f32")


class IndexMismatch(UserError, RuntimeError):
    """The index is missing, incomplete, or was built by another encoder."""


class CatalogError(UserError, ValueError):
    """The catalog cannot be indexed: no items, a duplicate id, an id too long."""


@dataclasses.dataclass
class IndexConfig:
    precision: str = dataclasses.field(default="int8", metadata={
        "help": "which exported encoder encodes the catalog; the serving repository must use the same one",
        "choices": ("fp32", "fp16", "int8")})
    chunk_size: int = dataclasses.field(default=4096, metadata={
        "help": "items encoded and flushed per chunk (the resume granularity)"})
    batch_size: int = dataclasses.field(default=128, metadata={"help": "texts per ONNX Runtime call"})
    threads: int = dataclasses.field(default=0, metadata={"help": "ORT intra-op threads (0 = all cores)"})
    encoder: str = dataclasses.field(default="onnx", metadata={
        "help": "which export encodes: onnx, or torchscript (<precision>/encoder.pt: what a `--backend torch` "
                "repository serves, so new items encoded there match the index)", "choices": ("onnx", "torchscript")})
    device: str = dataclasses.field(default="cpu", metadata={
        "help": "torchscript only: cpu or cuda", "choices": ("cpu", "cuda")})
    skip_bad_lines: bool = dataclasses.field(default=False, metadata={
        "help": "count and report malformed catalog lines instead of failing"})
    dedupe_mb: int = dataclasses.field(default=256, metadata={
        "help": "MB of recently encoded vectors kept by text: an item whose text was encoded earlier in this "
                "build (product variants, syndicated stories, repeated creatives) reuses that vector instead of "
                "running the encoder again (0 = encode every row)"})
    ray: str = dataclasses.field(default="", metadata={
        "help": "Ray cluster address (auto = the cluster this machine has joined, or HOST:PORT of its head): the "
                "catalog's chunks are encoded by actors across the cluster, each holding an ONNX Runtime session; "
                "the same index, byte for byte with a batch-invariant encoder (per-text INT8). Empty = this process"})
    ray_cpus_per_worker: int = dataclasses.field(default=1, metadata={
        "help": "with --ray: CPUs each encoder actor reserves and uses as ORT threads (1 = a core per actor: the "
                "per-text INT8 encoder runs each text single-threaded anyway)"})
    ray_workers: int = dataclasses.field(default=0, metadata={
        "help": "with --ray: encoder actors (0 = as many as the cluster's CPUs hold at --ray-cpus-per-worker)"})


Encoder = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(input_ids (N, L) int64, attention_mask (N, L) int64) -> (N, D) float32: what encodes a build's texts
(:class:`genrec.core.runtime.OrtEncoder`'s call)."""
EncoderFactory = Callable[[Path, IndexConfig], Encoder]
"""(exported graph file, the build's config) -> the :data:`Encoder` that runs it in this process."""
ClusterEncode = Callable[..., Path]
"""Encodes rows ``done..count`` of a laid-out index elsewhere and seals it: the signature of
:func:`genrec.ray_encoder.encode_on_ray` ``(catalog, graph, assets, out, manifest, done, cfg, *, progress, log,
on_chunk)``."""


def ort_encoder(graph: Path, cfg: IndexConfig) -> Encoder:
    """The core's own encoder: the exported ONNX graph in ONNX Runtime, in this process."""
    return OrtEncoder(graph, threads=cfg.threads)


@dataclasses.dataclass(frozen=True)
class IndexEncoders:
    """What encodes an index build's rows, passed in by the caller, so the core imports no torch and no Ray.

    ``local`` maps ``IndexConfig.encoder`` to a factory of the encoder run in this process; ``cluster`` encodes
    on the Ray cluster ``IndexConfig.ray`` names. The default is the core's own (the ONNX encoder here);
    :data:`genrec.index_encoders.ALL` adds TorchScript and Ray, and is what the CLI and the benchmarks pass."""

    local: Mapping[str, EncoderFactory] = dataclasses.field(default_factory=lambda: {"onnx": ort_encoder})
    cluster: ClusterEncode | None = None


def catalog_chunks(items: Iterator[NewsItem], size: int) -> Iterator[list[NewsItem]]:
    """``items`` in lists of ``size`` (the last one shorter): the chunks a build encodes and flushes."""
    chunk: list[NewsItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_index(catalog: str | Path, artifacts: str | Path, out: str | Path, cfg: IndexConfig = IndexConfig(),
                *, progress: bool = True, log: Callable[[str], None] = print,
                on_chunk: Callable[[int], None] | None = None,
                encoders: IndexEncoders = IndexEncoders()) -> Path:
    """Encode every item of ``catalog`` (news.tsv) with the exported encoder; resume if interrupted.

    ``on_chunk(rows_done)`` is called after each flushed chunk (progress hooks, tests). ``encoders``: what
    ``cfg.encoder`` and ``cfg.ray`` name (the core's own ONNX encoder unless the caller passes more).
    """
    if (encoders.cluster is None) if cfg.ray else (cfg.encoder not in encoders.local):
        what = "--ray" if cfg.ray else f"--encoder {cfg.encoder}"
        raise UserError(f"{what}: this caller of build_index passed no such encoder (it has "
                        f"{', '.join(encoders.local) or 'none'}{', ray' if encoders.cluster else ''}); "
                        "genrec.index_encoders.ALL has every one (what `genrec index build` uses)")
    catalog, out = Path(catalog), Path(out)
    art = Artifacts.load(artifacts)
    assets = ServingAssets.load(art.assets)
    graph = TORCHSCRIPT_GRAPH if cfg.encoder == "torchscript" else "encoder"
    missing = art.missing(cfg.precision, graph)
    if missing:
        raise IndexMismatch(f"{missing}, or index with --precision {next(iter(art.precisions), cfg.precision)}")
    encoder_sha = art.sha256(cfg.precision, graph)
    if (out / CURRENT).exists():
        raise IndexMismatch(f"{out} holds live generations ({CURRENT}): publish items with `genrec index add`, "
                            "or build a new index into another folder")
    fingerprint = sha256_file(catalog)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _resumable(out, encoder_sha, fingerprint, log)
    if manifest is not None and manifest["complete"]:
        log(f"{out}: already complete for this catalog and encoder ({manifest['count']} items)")
        return out
    if manifest is None:
        for name in DERIVED_FILES:                     # left by an interrupted rebuild: another catalog's
            fsio.remove(out / name)
        n, id_width = _count_ids(catalog, cfg)
        manifest = {"format": FORMAT, "contract_version": CONTRACT_VERSION, "encoder_sha256": encoder_sha,
                    "precision": cfg.precision, "dim": assets.dim, "count": n, "id_width": id_width,
                    "catalog": str(catalog.resolve()), "catalog_sha256": fingerprint,
                    "use_abstract": bool(assets.info.get("use_abstract", False)),
                    "categories_sha256": hashlib.sha256(
                        json.dumps(assets.category_vocab.to_list()).encode()).hexdigest(),
                    "complete": False, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "build_id": uuid.uuid4().hex}          # what the segment's retrieval files record (ann.json)
        _lay_out(catalog, out, assets, cfg, manifest)
    done = int(fsio.read_json(out / "progress.json", IndexMismatch)["rows"])
    if done:
        log(f"{out}: resuming at row {done} of {manifest['count']}")

    if cfg.ray:
        if cfg.encoder != "onnx":
            raise ValueError("--ray encodes with the ONNX encoder (actors hold ONNX Runtime sessions); drop "
                             "--encoder torchscript or --ray")
        return encoders.cluster(catalog, art.graph(cfg.precision, graph), assets, out, manifest, done, cfg,
                                progress=progress, log=log, on_chunk=on_chunk)
    encoder = encoders.local[cfg.encoder](art.graph(cfg.precision, graph), cfg)
    return _encode_here(catalog, out, manifest, done, encoder, assets.tokenizer(), cfg, progress=progress, log=log,
                        on_chunk=on_chunk)


def _resumable(out: Path, encoder_sha: str, fingerprint: str, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The manifest of the build at ``out`` to resume (or complete already) for this encoder and catalog; None
    when there is none: nothing there, or another build's files, removed here (the manifest first)."""
    manifest_path = out / "index.json"
    try:       # never garbage when written by us (atomic writes): anything else there is not ours to replace
        manifest = fsio.read_json(manifest_path, IndexMismatch, "not a genrec index: choose another --out")
    except FileNotFoundError:
        return None
    if not (isinstance(manifest, dict) and str(manifest.get("format", "")).startswith("genrec.index/")):
        raise IndexMismatch(f"{manifest_path} is not a genrec index manifest: not rebuilding {out} over it; "
                            "choose another --out")
    same = manifest.get("format") == FORMAT and manifest.get("encoder_sha256") == encoder_sha and \
        manifest.get("catalog_sha256") == fingerprint
    if same and not manifest.get("complete"):
        try:
            int(fsio.read_json(out / "progress.json", IndexMismatch)["rows"])
        except (OSError, IndexMismatch, KeyError, TypeError, ValueError):
            same = False                   # no usable resume point: start over
    if same:
        return manifest
    log(f"{out}: built for another catalog, encoder or index format; rebuilding from scratch")
    for name in (*FILES, *DERIVED_FILES):          # the manifest first: the folder stops being an index
        fsio.remove(out / name)
    return None


def _count_ids(catalog: Path, cfg: IndexConfig) -> tuple[int, int]:
    """(items, widest id in bytes) of ``catalog``: the build's first pass."""
    n, id_width = 0, 1
    for item in iter_news(catalog, skip_bad_lines=cfg.skip_bad_lines):
        raw = item.news_id.encode("utf-8")
        if len(raw) > MAX_ID_BYTES:
            raise CatalogError(f"{catalog}: item id {item.news_id[:80]!r} is longer than {MAX_ID_BYTES} bytes")
        n += 1
        id_width = max(id_width, len(raw))
    if n == 0:
        raise CatalogError(f"{catalog} has no items: nothing to index")
    return n, id_width


def _lay_out(catalog: Path, out: Path, assets: ServingAssets, cfg: IndexConfig, manifest: dict[str, Any]) -> None:
    """A new build's files at ``out``: ids, categories and their order filled (the catalog's second pass),
    vectors and truncation flags zeroed, progress at row 0, then the (incomplete) ``manifest``."""
    n, id_width = manifest["count"], manifest["id_width"]
    ids = np.memmap(out / "ids.bin", dtype=f"S{id_width}", mode="w+", shape=(n,))
    cats = np.memmap(out / "category.i64", dtype=np.int64, mode="w+", shape=(n,))
    subs = np.memmap(out / "subcategory.i64", dtype=np.int64, mode="w+", shape=(n,))
    for row, item in enumerate(iter_news(catalog, skip_bad_lines=cfg.skip_bad_lines)):
        ids[row] = item.news_id.encode("utf-8")
        cats[row] = assets.category_vocab.id(item.category)
        subs[row] = assets.subcategory_vocab.id(item.subcategory)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if dup.size:
        raise CatalogError(f"{catalog}: duplicate item id {sorted_ids[dup[0]].decode(errors='replace')!r} "
                           f"({dup.size} duplicates); ids must be unique")
    fsio.write_array(out / "order.i64", order, np.int64)
    ids.flush(), cats.flush(), subs.flush()
    del ids, cats, subs
    np.memmap(out / "vectors.f32", dtype=np.float32, mode="w+", shape=(n, assets.dim)).flush()
    np.memmap(out / "truncated.u8", dtype=np.uint8, mode="w+", shape=(n,)).flush()
    for name in DATA_FILES:
        fsio.fsync_path(out / name)
    fsio.checkpoint(f"{out}: data files created")
    fsio.write_json(out / "progress.json", {"rows": 0})
    fsio.write_json(out / "index.json", manifest)


class ChunkPlan:
    """One chunk of a build: rows whose text was encoded recently are filled from ``seen`` at once, a text that
    repeats inside the chunk is encoded once and copied (``todo``: the rows left to encode, one per text).
    The encoder is a function of the text alone, so the index is the same, only cheaper where texts repeat.
    Shared by the build in this process and the Ray driver (genrec.ray_encoder)."""

    def __init__(self, texts: list[str], dim: int, seen: VectorLRU, dedupe: bool):
        self.keys = ([VectorLRU.key("", t, "", "") for t in texts] if dedupe
                     else [j.to_bytes(8, "little") for j in range(len(texts))])     # dedupe off: every row its own
        self.vec = np.empty((len(texts), dim), dtype=np.float32)      # (chunk, D)
        self.cut = np.zeros(len(texts), dtype=np.uint8)
        self.reused = 0
        first: dict[bytes, int] = {}                 # text key -> its first row in this chunk to encode
        self.copies: list[tuple[int, int]] = []      # (row, row it copies) for repeats inside the chunk
        for j, key in enumerate(self.keys):
            hit = seen.get(key)
            if hit is not None:
                self.vec[j], _, _, self.cut[j] = hit
                self.reused += 1
            elif key in first:
                self.copies.append((j, first[key]))
            else:
                first[key] = j
        self.todo = np.fromiter(first.values(), dtype=np.int64, count=len(first))
        self.texts = [texts[j] for j in self.todo.tolist()]        # what is left to encode

    def fill(self, encoded: tuple[np.ndarray, np.ndarray] | None, seen: VectorLRU) -> tuple[np.ndarray, np.ndarray]:
        """The chunk's (vectors, truncated flags) from the encoded ``texts`` (None when there were none), which
        ``seen`` keeps for later chunks; the in-chunk repeats copied."""
        if encoded is not None:
            self.vec[self.todo], self.cut[self.todo] = encoded
            for j in self.todo.tolist():
                seen.put(self.keys[j], self.vec[j], 0, 0, bool(self.cut[j]))     # a copy; not kept when dedupe is off
        for j, src in self.copies:
            self.vec[j], self.cut[j] = self.vec[src], self.cut[src]
        self.reused += len(self.copies)
        return self.vec, self.cut


def _encode_here(catalog: Path, out: Path, manifest: dict[str, Any], done: int, encoder: Encoder, tokenizer,
                 cfg: IndexConfig, *, progress: bool, log: Callable[[str], None],
                 on_chunk: Callable[[int], None] | None) -> Path:
    """Encode rows ``done..count`` of the index at ``out`` (laid out by ``build_index``) in this process, chunk by
    chunk, each flushed before the resume point passes it; mark the index complete."""
    n = manifest["count"]
    vectors = np.memmap(out / "vectors.f32", dtype=np.float32, mode="r+", shape=(n, manifest["dim"]))
    cut = np.memmap(out / "truncated.u8", dtype=np.uint8, mode="r+", shape=(n,))      # per row: text was cut
    bar = None
    if progress:
        from genrec.core.progress import progress as progress_bar
        bar = progress_bar(total=n, initial=done, desc="indexing", unit="item", mininterval=1.0)
    t0 = time.perf_counter()
    row = 0
    encoded_texts = reused = 0
    seen = VectorLRU(cfg.dedupe_mb * 2**20)        # recently encoded texts (vector, truncated flag) by text key
    for chunk in catalog_chunks(iter_news(catalog, skip_bad_lines=cfg.skip_bad_lines), cfg.chunk_size):
        start, row = row, row + len(chunk)
        if row <= done:
            continue                                            # encoded before the interruption
        plan = ChunkPlan([item_text(it.title, it.abstract, manifest["use_abstract"]) for it in chunk],
                         manifest["dim"], seen, bool(cfg.dedupe_mb))
        encoded = encode_texts(encoder, tokenizer, plan.texts, cfg.batch_size) if plan.texts else None
        vectors[start:row], cut[start:row] = plan.fill(encoded, seen)
        encoded_texts += len(plan.texts)
        reused += plan.reused
        fsio.checkpoint(f"{out}: rows {start}..{row} in the maps")
        cut.flush()
        vectors.flush()
        fsio.write_json(out / "progress.json", {"rows": row})       # only after the rows are on disk
        if bar is not None:
            bar.update(len(chunk))
        if on_chunk is not None:
            on_chunk(row)
    if bar is not None:
        bar.close()
    truncated = int(np.count_nonzero(cut))
    del vectors, cut
    manifest.update(complete=True, seconds=round(time.perf_counter() - t0, 1), truncated_texts=truncated,
                    encoded_texts=encoded_texts, reused_texts=reused)
    seal(out, manifest)
    log(f"indexed {n} items into {out} ({manifest['seconds']} s for this run; {encoded_texts} texts encoded, "
        f"{reused} repeated texts reused; {truncated} texts cut to {tokenizer.max_length} tokens)")
    return out


def encode_texts(encoder, tokenizer, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n, D) float32, truncated (n,) bool) of ``texts``: the one encoding step of a build, in this
    process or in a Ray actor (genrec.ray_encoder)."""
    tok = tokenizer(texts, pad_to=tokenizer.max_length)
    return encode_length_sorted(encoder, tok, batch_size), tok.truncated


def seal(out: Path, manifest: dict[str, Any]) -> None:
    """Declare the segment at ``out`` complete: its data files made durable, then the manifest replaced in one
    rename. Before this the folder is an incomplete build every reader refuses (and the next build resumes)."""
    for name in DATA_FILES:
        fsio.fsync_path(out / name)
    fsio.write_json(out / "index.json", {**manifest, "complete": True})


class Segment:
    """One complete ``genrec.index/2`` folder, memory-mapped: vectorized id lookup, vectors and category ids."""

    def __init__(self, folder: str | Path, *, expect_encoder_sha256: str | None = None):
        folder = Path(folder)
        path = folder / "index.json"
        if not path.is_file():
            raise IndexMismatch(f"no index at {folder} (build one with `genrec index build`)")
        st = path.stat()
        self.folder = folder
        self.key = (str(folder.resolve()), st.st_ino, st.st_mtime_ns)      # what identifies this written segment
        self.manifest = m = fsio.read_json(path, IndexMismatch, "the index manifest")
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise IndexMismatch(f"{path}: format {m.get('format') if isinstance(m, dict) else m!r} is not {FORMAT!r}")
        if not m.get("complete"):
            try:
                rows = fsio.read_json(folder / "progress.json", IndexMismatch)["rows"]
            except (OSError, IndexMismatch, KeyError, TypeError):
                rows = "?"
            raise IndexMismatch(f"{folder} is incomplete ({rows} of {m['count']} rows): "
                                "rerun `genrec index build` to resume it")
        if expect_encoder_sha256 is not None and m["encoder_sha256"] != expect_encoder_sha256:
            raise IndexMismatch(
                f"index {folder} was built by encoder {m['encoder_sha256'][:12]} ({m['precision']}), but this server "
                f"serves encoder {expect_encoder_sha256[:12]}: its vectors would not match freshly encoded items. "
                "Rebuild the index with the served artifacts and precision.")
        n, d = m["count"], m["dim"]
        self.dim = d
        self.ids = np.memmap(folder / "ids.bin", dtype=f"S{m['id_width']}", mode="r", shape=(n,))
        self.order = np.memmap(folder / "order.i64", dtype=np.int64, mode="r", shape=(n,))
        self.sorted_ids = np.asarray(self.ids[self.order])         # (N,) small: id_width bytes per item
        self.category = np.memmap(folder / "category.i64", dtype=np.int64, mode="r", shape=(n,))
        self.subcategory = np.memmap(folder / "subcategory.i64", dtype=np.int64, mode="r", shape=(n,))
        self.vectors = np.memmap(folder / "vectors.f32", dtype=np.float32, mode="r", shape=(n, d))
        # (N,) whether each item's text was cut to the model's max tokens when it was indexed
        self.truncated = np.memmap(folder / "truncated.u8", dtype=np.uint8, mode="r", shape=(n,)).astype(bool)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: list[bytes]) -> np.ndarray:
        """(len(ids),) row of each id, -1 where unknown. Binary search, no per-item Python dict."""
        if not ids:
            return np.zeros(0, dtype=np.int64)
        pos, found = sorted_lookup(self.sorted_ids, ids)
        return np.where(found, self.order[pos], -1)


class ItemIndex:
    """Read-only view of one generation of INDEX_DIR: a legacy single folder (``index.json`` at the top), or
    the generation ``CURRENT`` names: a base segment plus at most one delta segment of items added since.

    ``rows`` gives rows in the concatenation of the segments (base first); an id in the delta shadows the
    same id in the base (an item re-added with new text). ``take`` reads those rows without concatenating.
    ``reuse``: segments already open (the previous generation's); one with the same folder and manifest is
    shared instead of mapped and sorted again, so a switch costs O(delta), not O(N).
    """

    def __init__(self, folder: str | Path, *, expect_encoder_sha256: str | None = None,
                 reuse: Sequence[Segment] = ()):
        folder = Path(folder)
        self.folder = folder
        name = read_current(folder)
        self.generation_name = name                       # None: a legacy single-folder index
        if name is None:
            self.generation = 0
            names = ["."]
            gm = None
        else:
            gpath = folder / name / GENERATION
            try:
                gm = fsio.read_json(gpath, IndexMismatch, "a generation manifest")
            except FileNotFoundError:
                raise IndexMismatch(f"{folder}: CURRENT names {name}, which has no {GENERATION} "
                                    "(removed by a newer `genrec index add`?)") from None
            if not isinstance(gm, dict) or gm.get("format") != GEN_FORMAT:
                raise IndexMismatch(f"{gpath}: format {gm.get('format') if isinstance(gm, dict) else gm!r} is not "
                                    f"{GEN_FORMAT!r}")
            self.generation = int(gm["generation"])
            names = gm["segments"]
        open_ = {s.key: s for s in reuse}
        segments = []
        for seg_name in names:
            sf = folder / seg_name
            try:
                st = (sf / "index.json").stat()
                seg = open_.get((str(sf.resolve()), st.st_ino, st.st_mtime_ns))
            except FileNotFoundError:
                seg = None
            segments.append(seg if seg is not None else Segment(sf, expect_encoder_sha256=expect_encoder_sha256))
        self.segments: list[Segment] = segments
        first = segments[0].manifest
        for seg in segments[1:]:
            if (seg.manifest["encoder_sha256"], seg.dim) != (first["encoder_sha256"], segments[0].dim):
                raise IndexMismatch(f"{folder}: segment {seg.folder} was encoded by another encoder "
                                    f"than {segments[0].folder}")
        self.manifest = first if gm is None else gm
        self.dim = segments[0].dim
        self.offsets = np.cumsum([0] + [len(s) for s in segments])[:-1].tolist()      # first global row of each
        self._count = len(segments[0]) if gm is None else int(gm["count"])

    def __len__(self) -> int:
        """Distinct live ids (a re-added id counts once)."""
        return self._count

    def rows(self, ids: list[bytes]) -> np.ndarray:
        """(len(ids),) global row of each id, -1 where unknown: newest segment first, so a re-added id's new row
        wins. One binary search per segment (at most two), only over the ids still unknown."""
        if len(self.segments) == 1:
            return self.segments[0].rows(ids)
        out = np.full(len(ids), -1, dtype=np.int64)
        for seg, off in zip(reversed(self.segments), reversed(self.offsets)):
            todo = np.flatnonzero(out < 0)
            if not len(todo):
                break
            got = seg.rows([ids[i] for i in todo.tolist()])
            hit = got >= 0
            out[todo[hit]] = got[hit] + off
        return out

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows (all >= 0, from :meth:`rows` of this same object) -> (vectors (K, D) float32, truncated (K,) bool,
        category (K,) int64, subcategory (K,) int64), copied out of the maps."""
        if len(self.segments) == 1:
            s = self.segments[0]
            return s.vectors[rows], s.truncated[rows], s.category[rows], s.subcategory[rows]
        vec = np.empty((len(rows), self.dim), dtype=np.float32)
        cut = np.empty(len(rows), dtype=bool)
        cat = np.empty(len(rows), dtype=np.int64)
        sub = np.empty(len(rows), dtype=np.int64)
        for seg, off in zip(self.segments, self.offsets):
            mask = (rows >= off) & (rows < off + len(seg))
            if mask.any():
                r = rows[mask] - off
                vec[mask], cut[mask], cat[mask], sub[mask] = (seg.vectors[r], seg.truncated[r], seg.category[r],
                                                               seg.subcategory[r])
        return vec, cut, cat, sub

    # The arrays of a single-segment index (what tools and tests read); a generation with a delta concatenates
    # them on first use (O(N) copies: never on the serving path, which uses rows/take).
    def _concat(self, attr: str) -> np.ndarray:
        if len(self.segments) == 1:
            return getattr(self.segments[0], attr)
        cached = self.__dict__.setdefault("_concat_cache", {})
        if attr not in cached:
            parts = [getattr(s, attr) for s in self.segments]
            if attr == "ids":
                width = max(p.dtype.itemsize for p in parts)
                parts = [np.asarray(p).astype(f"S{width}") for p in parts]
            cached[attr] = np.concatenate(parts)
        return cached[attr]

    ids = property(lambda self: self._concat("ids"))
    vectors = property(lambda self: self._concat("vectors"))
    category = property(lambda self: self._concat("category"))
    subcategory = property(lambda self: self._concat("subcategory"))
    truncated = property(lambda self: self._concat("truncated"))

    @property
    def order(self) -> np.ndarray:
        return self._single("order")

    @property
    def sorted_ids(self) -> np.ndarray:
        return self._single("sorted_ids")

    def _single(self, attr: str) -> np.ndarray:
        if len(self.segments) != 1:
            raise AttributeError(f"{attr}: generation {self.generation} has {len(self.segments)} segments")
        return getattr(self.segments[0], attr)


def sorted_lookup(sorted_ids: np.ndarray, ids: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Binary search of ``ids`` in ``sorted_ids`` (ascending, fixed-width S{w}): (positions, found mask).

    The query array has exactly ``sorted_ids``' dtype: with a wider query numpy would convert the whole
    sorted array on every call (O(N): ~5 ms per 150 ids at 1M items). Ids longer than the width cannot be
    in the array; they are searched as b"" and masked out, never widened.
    """
    width = sorted_ids.dtype.itemsize
    fits = np.fromiter((len(i) <= width for i in ids), dtype=bool, count=len(ids))
    query = np.array([i if ok else b"" for i, ok in zip(ids, fits)], dtype=sorted_ids.dtype)
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, query), len(sorted_ids) - 1)
    return pos, fits & (sorted_ids[pos] == query)


# ---- generations: live updates ------------------------------------------------------------------------------

GEN_FORMAT = "genrec.index-generation/1"
GENERATION = "generation.json"
CURRENT = "CURRENT"
PARTIAL = "add.partial"          # an `index add` in progress (resumed by the next one)
LOCK = ".writer.lock"


def read_current(folder: str | Path) -> str | None:
    """The generation CURRENT names (``gen-000003``), or None for a legacy single-folder index."""
    try:
        name = (Path(folder) / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    if not name.startswith("gen-") or "/" in name:
        raise IndexMismatch(f"{folder}/{CURRENT}: {name!r} is not a generation name")
    return name


def generation_key(folder: str | Path) -> tuple | None:
    """What identifies the served generation of INDEX_DIR without reading it: CURRENT's (inode, mtime), else
    the legacy index.json's; None when there is neither. Every publish replaces CURRENT through a rename."""
    folder = Path(folder)
    for name in (CURRENT, "index.json"):
        try:
            st = os.stat(folder / name)
        except FileNotFoundError:
            continue
        return name, st.st_ino, st.st_mtime_ns, st.st_size
    return None


@dataclasses.dataclass
class AddConfig:
    threads: int = dataclasses.field(default=0, metadata={"help": "ORT intra-op threads (0 = all cores)"})
    batch_size: int = dataclasses.field(default=128, metadata={"help": "texts per encoder call"})
    chunk_size: int = dataclasses.field(default=4096, metadata={
        "help": "new items encoded and flushed per chunk (an interrupted add resumes from the last one)"})
    device: str = dataclasses.field(default="cpu", metadata={
        "help": "torchscript-built indexes only: cpu or cuda", "choices": ("cpu", "cuda")})
    skip_bad_lines: bool = dataclasses.field(default=False, metadata={
        "help": "count and report malformed catalog lines instead of failing"})
    dedupe_mb: int = dataclasses.field(default=256, metadata={
        "help": "MB of recently encoded vectors kept by text: repeated texts among the new items are encoded once"})
    keep_generations: int = dataclasses.field(default=1, metadata={
        "help": "previous generations kept on disk besides the current one, so a server that has not switched yet "
                "can still open the one it is about to read; older ones are deleted (a server still mapping one "
                "keeps its pages: Linux frees an unlinked file when its last mapping goes)"})
    compact_ratio: float = dataclasses.field(default=0.1, metadata={
        "help": "when the items added since the base exceed this fraction of it, write one new full base (an O(N) "
                "copy, no encoding) instead of a delta: lookups stay two binary searches and replaced rows stop "
                "taking space (0 = every add writes a full base)"})


def _graph_for(art: Artifacts, precision: str, encoder_sha: str, index: Path) -> str:
    """Which exported graph built the index (onnx ``encoder`` or TorchScript): the one whose hash it carries."""
    graphs = art.manifest["precisions"].get(precision, {})
    for graph in ("encoder", TORCHSCRIPT_GRAPH):
        if graph in graphs and art.sha256(precision, graph) == encoder_sha:
            return graph
    raise IndexMismatch(
        f"{index} was built by encoder {encoder_sha[:12]} ({precision}), which {art.root} does not contain: items "
        "encoded with these artifacts would not match the indexed vectors. Add with the artifacts the index was "
        "built (and is served) with, or rebuild the index with `genrec index build`.")


def _widen(ids: np.ndarray, width: int) -> np.ndarray:
    return np.asarray(ids).astype(f"S{width}")


def _isin(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """(len(ids),) whether each fixed-width id is in ``sorted_ids`` (ascending); any widths, vectorized."""
    if len(sorted_ids) == 0 or len(ids) == 0:
        return np.zeros(len(ids), dtype=bool)
    width = max(ids.dtype.itemsize, sorted_ids.dtype.itemsize)
    a, s = _widen(ids, width), _widen(sorted_ids, width)         # null padding keeps the order
    pos = np.minimum(np.searchsorted(s, a), len(s) - 1)
    return s[pos] == a


def _write_segment(out: Path, parts: list[tuple[Segment, np.ndarray]], manifest: dict[str, Any],
                   chunk: int = 1 << 16) -> int:
    """Copy ``rows`` of each segment (in order) into a new complete segment folder; no encoding. Returns N.
    Streams chunks with plain writes (not a writable map), so a 1M-row compaction holds one chunk in memory."""
    out.mkdir(parents=True)
    n = sum(len(r) for _, r in parts)
    width = max(seg.ids.dtype.itemsize for seg, _ in parts)
    names = ("ids.bin", "category.i64", "subcategory.i64", "vectors.f32", "truncated.u8")
    files = {name: open(out / name, "wb") for name in names}
    cut = 0
    try:
        for seg, rows in parts:
            for i in range(0, len(rows), chunk):
                r = rows[i:i + chunk]
                files["ids.bin"].write(np.asarray(seg.ids[r]).astype(f"S{width}").tobytes())
                files["category.i64"].write(np.ascontiguousarray(seg.category[r], dtype=np.int64).tobytes())
                files["subcategory.i64"].write(np.ascontiguousarray(seg.subcategory[r], dtype=np.int64).tobytes())
                files["vectors.f32"].write(np.ascontiguousarray(seg.vectors[r], dtype=np.float32).tobytes())
                t = seg.truncated[r].astype(np.uint8)
                files["truncated.u8"].write(t.tobytes())
                cut += int(np.count_nonzero(t))
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in files.values():
            f.close()
    ids = np.fromfile(out / "ids.bin", dtype=f"S{width}")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if n > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
        raise AssertionError("duplicate id in a merged segment")       # the merge keeps one row per id
    fsio.write_array(out / "order.i64", order, np.int64)
    fsio.write_json(out / "progress.json", {"rows": n})
    seal(out, {**manifest, "count": n, "id_width": width, "truncated_texts": cut, "build_id": uuid.uuid4().hex})
    return n


def _generations(index: Path) -> dict[int, Path]:
    out = {}
    for p in index.glob("gen-*"):
        if p.is_dir() and p.name[4:].isdigit():
            out[int(p.name[4:])] = p
    return out


def collect_garbage(index: str | Path, keep_generations: int = 1, *, log: Callable[[str], None] = print) -> list[str]:
    """Delete every generation but the current one and the ``keep_generations`` published before it (the
    chain of ``previous`` in generation.json), except segments a kept generation still uses (a delta's base); so
    also generations an `index add` renamed in but died before it switched CURRENT to (never served). A server
    still mapping a deleted file keeps reading it: Linux frees an unlinked file's pages when its last mapping
    goes, and the server drops a generation's maps when no request uses it any more. Call with the writer lock
    held (``add_items`` does). Returns the removed names."""
    index = Path(index)
    current = read_current(index)
    gens = _generations(index)
    cur = int(current[4:]) if current is not None else 0       # no CURRENT: no generation was ever published
    used: set[str] = set()
    name, kept = current, 0                  # the current generation, then the ones published before it
    while name is not None and name.startswith("gen-") and kept < 1 + max(0, keep_generations):
        path = gens.get(int(name[4:]))
        if path is None:
            break
        used.add(path.name)
        kept += 1
        try:
            gm = fsio.read_json(path / GENERATION, IndexMismatch)
        except FileNotFoundError:
            break
        used.update(gm["segments"])
        name = gm.get("previous")
    removed = []
    for g, path in sorted(gens.items()):
        if g != cur and path.name not in used:
            fsio.checkpoint(f"removing generation {path.name}")
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name + (" (never published)" if g > cur else ""))
    if current is not None and "." not in used and (index / "index.json").exists():   # a legacy base nobody uses
        for name in (*FILES, *DERIVED_FILES):
            (index / name).unlink(missing_ok=True)
        removed.append("the legacy base at the top of the folder")
    if removed:
        fsio.fsync_path(index)
        log(f"{index}: removed {', '.join(removed)}")
    return removed


def _next_segment(base: Segment, delta: Segment | None, new: Segment, compact_ratio: float
                  ) -> tuple[list[tuple[Segment, np.ndarray]], bool, int]:
    """What the next generation's one new segment copies, as (segment, rows) parts: the previous delta's rows
    minus the ids ``new`` sends again, then ``new``'s; past ``compact_ratio`` of the base, also the base's rows
    not shadowed by either, first (a new full base: ``compact``). And how many base ids the delta shadows (0
    when compact): the generation counts each id once."""
    keep_delta = (np.flatnonzero(~_isin(np.asarray(delta.ids), new.sorted_ids)) if delta is not None
                  else np.zeros(0, dtype=np.int64))
    compact = len(keep_delta) + len(new) > compact_ratio * len(base)
    parts: list[tuple[Segment, np.ndarray]] = []
    if compact:                                    # one full base: base rows not shadowed, then the delta
        shadow = np.sort(np.concatenate([_widen(new.sorted_ids, MAX_ID_BYTES)] + (
            [_widen(np.asarray(delta.ids)[keep_delta], MAX_ID_BYTES)] if delta is not None else [])))
        parts.append((base, np.flatnonzero(~_isin(np.asarray(base.ids), shadow))))
    if delta is not None:
        parts.append((delta, keep_delta))
    parts.append((new, np.arange(len(new))))
    shadowed = 0
    if not compact:
        shadowed = int(np.count_nonzero(_isin(np.asarray(new.ids), base.sorted_ids)))
        if delta is not None:
            shadowed += int(np.count_nonzero(_isin(np.asarray(delta.ids)[keep_delta], base.sorted_ids)))
    return parts, compact, shadowed


def add_items(catalog: str | Path, artifacts: str | Path, index: str | Path, cfg: AddConfig = AddConfig(), *,
              progress: bool = True, log: Callable[[str], None] = print,
              on_chunk: Callable[[int], None] | None = None,
              before_publish: Callable[[Path], object] | None = None,
              encoders: IndexEncoders = IndexEncoders()) -> Path:
    """Publish the items of ``catalog`` (news.tsv: new items, or known ids with new text) as a new generation
    of INDEX_DIR and switch to it atomically; servers pick it up within ``index_refresh_ms``.

    Only the catalog's items are encoded (resumably, under INDEX_DIR/add.partial). The new generation is the
    current base plus one delta segment: the previous delta's rows (minus ids the catalog sends again) and the
    new rows, copied. Past ``compact_ratio`` the generation is one new full base instead. The generation folder
    is complete before ``CURRENT`` names it (write-temp + rename), so no reader ever sees a half-written one;
    an interrupted add leaves the served generation as it was. Returns the new generation's folder.
    ``encoders``: as for :func:`build_index` (an index the TorchScript encoder built needs it to add items).
    """
    import fcntl

    catalog, index = Path(catalog), Path(index)
    if not index.is_dir():
        raise IndexMismatch(f"no index at {index} (build the first one with `genrec index build`)")
    with open(index / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another `genrec index add` is writing {index}") from None
        cur = ItemIndex(index)
        m = cur.manifest
        collect_garbage(index, cfg.keep_generations, log=log)      # what an interrupted add left behind
        art = Artifacts.load(artifacts)
        graph = _graph_for(art, m["precision"], m["encoder_sha256"], index)
        work = index / PARTIAL
        work.mkdir(exist_ok=True)
        for stale in work.glob("gen-*"):                 # a generation an interrupted add was writing
            shutil.rmtree(stale, ignore_errors=True)
        icfg = IndexConfig(precision=m["precision"], chunk_size=cfg.chunk_size, batch_size=cfg.batch_size,
                           threads=cfg.threads, encoder="onnx" if graph == "encoder" else "torchscript",
                           device=cfg.device, skip_bad_lines=cfg.skip_bad_lines, dedupe_mb=cfg.dedupe_mb)
        t0 = time.perf_counter()
        build_index(catalog, artifacts, work / "new", icfg, progress=progress, log=log, on_chunk=on_chunk,
                    encoders=encoders)
        t_encoded = time.perf_counter()
        new = Segment(work / "new")
        base = cur.segments[0]
        for key in ("use_abstract", "categories_sha256", "dim"):
            if new.manifest[key] != base.manifest[key]:
                raise IndexMismatch(f"{catalog}: {key} of the new items ({new.manifest[key]}) differs from the "
                                    f"index ({base.manifest[key]}): built from other artifacts")
        delta = cur.segments[1] if len(cur.segments) > 1 else None
        number = max([cur.generation, *_generations(index)]) + 1
        name = f"gen-{number:06d}"
        parts, compact, shadowed = _next_segment(base, delta, new, cfg.compact_ratio)
        segment_manifest = {**{k: new.manifest[k] for k in ("format", "contract_version", "encoder_sha256",
                                                            "precision", "dim", "use_abstract", "categories_sha256")},
                            "catalog": new.manifest["catalog"], "catalog_sha256": new.manifest["catalog_sha256"],
                            "encoded_texts": new.manifest.get("encoded_texts"),
                            "reused_texts": new.manifest.get("reused_texts"), "generation": number,
                            "kind": "base" if compact else "delta",
                            "created": datetime.now(UTC).isoformat(timespec="seconds")}
        staged = work / name
        shutil.rmtree(staged, ignore_errors=True)
        rows = _write_segment(staged, parts, segment_manifest)
        if before_publish is not None:      # e.g. the segment's retrieval files: complete before it goes live
            before_publish(staged)
            fsio.fsync_tree(staged)
        if compact:
            segments, count = [name], rows
        else:
            segments = ["." if base.folder.resolve() == index.resolve() else base.folder.name, name]
            count = len(base) + rows - shadowed
        replaced = int(np.count_nonzero(cur.rows([bytes(i) for i in new.ids]) >= 0))
        fsio.write_json(staged / GENERATION, {
            "format": GEN_FORMAT, "generation": number, "segments": segments, "count": count,
            "previous": cur.generation_name or ".", "added": len(new) - replaced, "replaced": replaced,
            **{k: m[k] for k in ("encoder_sha256", "precision", "dim", "use_abstract", "categories_sha256")},
            "created": segment_manifest["created"]})
        fsio.fsync_tree(staged)
        fsio.checkpoint(f"renaming {name} in")
        staged.rename(index / name)                    # the generation appears complete ...
        fsio.checkpoint(f"renamed {name} in")
        fsio.fsync_path(index)
        fsio.write_text(index / CURRENT, name + "\n")   # ... and CURRENT switches to it in one rename
        published = time.perf_counter()
        del new, cur, base, delta, parts
        shutil.rmtree(work, ignore_errors=True)
        log(f"published {name} ({count} items: {len(segments)} segment{'s' * (len(segments) > 1)}, "
            f"{'compacted into a new base' if compact else f'{rows} rows in the delta'}; "
            f"{replaced} replaced ids) -- encode {t_encoded - t0:.1f} s, write + switch {published - t_encoded:.1f} s")
        collect_garbage(index, cfg.keep_generations, log=log)
    return index / name


class LiveIndex:
    """The current :class:`ItemIndex` generation of INDEX_DIR, swapped atomically when ``index add`` publishes.

    Mirrors :class:`genrec.core.statstore.LiveStats`: ``refresh_ms`` > 0 starts a daemon thread that checks
    CURRENT that often; a new generation is opened (sharing the unchanged base segment's maps) into a new
    object which then replaces ``self.index`` in one reference assignment. A request reads ``live.index``
    once, so it never mixes generations. A generation that cannot be opened (mismatched encoder, removed
    already) is logged once and the current one stays. The old generation's maps are released when the last
    request holding it returns (reference counting: nothing else keeps it).
    """

    def __init__(self, folder: str | Path, refresh_ms: int = 1000, *, expect_encoder_sha256: str | None = None,
                 log: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        self.refresh_ms = refresh_ms
        self.expect = expect_encoder_sha256
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.key = generation_key(self.folder)
        self.index = ItemIndex(self.folder, expect_encoder_sha256=self.expect)      # the first open must succeed
        self.loads, self._last_error = 1, ""
        self._refresher = Refresher(self.check, refresh_ms, what="item index", log=self.log)

    def check(self) -> bool:
        """Switch to a newly published generation if there is one; True when ``index`` was replaced."""
        key = generation_key(self.folder)
        if key is None or key == self.key:
            return False
        current = self.index
        try:
            index = ItemIndex(self.folder, expect_encoder_sha256=self.expect, reuse=current.segments)
            if index.dim != current.dim:
                raise IndexMismatch(f"{self.folder}: new generation has D={index.dim}, the served one D={current.dim}")
        except (IndexMismatch, OSError, ValueError, KeyError) as exc:
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                self.log(f"item index not refreshed (keeping generation {current.generation}, "
                         f"{len(current)} items): {exc}")
            return False
        gone = current.generation
        weakref.finalize(current, self.log, f"item index generation {gone} released (no request uses it)")
        del current
        self.index = index                                # one reference assignment: atomic for readers
        self.key = key
        self.loads += 1
        self._last_error = ""
        self.log(f"item index switched to generation {index.generation} ({len(index)} items) from {self.folder}")
        return True

    def close(self) -> None:
        self._refresher.close()
