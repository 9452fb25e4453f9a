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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from genrec.artifacts import TORCHSCRIPT_GRAPH, Artifacts, ServingAssets
from genrec.contract import CONTRACT_VERSION
from genrec.data.mind import NewsItem, iter_news
from genrec.errors import UserError
from genrec.runtime import OrtEncoder
from genrec.text import encode_length_sorted, item_text, sha256_file
from genrec.vcache import VectorLRU

FORMAT = "genrec.index/2"      # /2: truncated.u8 (per-row truncation flags)
MAX_ID_BYTES = 64


FILES = ("index.json", "ids.bin", "order.i64", "category.i64", "subcategory.i64", "vectors.f32", "truncated.u8",
         "progress.json")


class IndexMismatch(UserError, RuntimeError):
    """The index is missing, incomplete, or was built by another encoder."""


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


def _chunks(items: Iterator[NewsItem], size: int) -> Iterator[list[NewsItem]]:
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
                on_chunk: Callable[[int], None] | None = None) -> Path:
    """Encode every item of ``catalog`` (news.tsv) with the exported encoder; resume if interrupted.

    ``on_chunk(rows_done)`` is called after each flushed chunk (progress hooks, tests).
    """
    catalog, out = Path(catalog), Path(out)
    art = Artifacts.load(artifacts)
    assets = ServingAssets.load(art.assets)
    graph = "encoder"
    if cfg.encoder == "torchscript":
        graph = TORCHSCRIPT_GRAPH
    if graph not in art.manifest["precisions"].get(cfg.precision, {}):
        raise ValueError(f"{art.root} has no {cfg.precision} {graph}")
    encoder_sha = art.sha256(cfg.precision, graph)
    fingerprint = sha256_file(catalog)
    manifest_path = out / "index.json"
    out.mkdir(parents=True, exist_ok=True)

    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    same = manifest is not None and manifest.get("format") == FORMAT and \
        manifest["encoder_sha256"] == encoder_sha and manifest["catalog_sha256"] == fingerprint
    if same and manifest["complete"]:
        log(f"{out}: already complete for this catalog and encoder ({manifest['count']} items)")
        return out
    if manifest is not None and not same:
        log(f"{out}: built for another catalog, encoder or index format; rebuilding from scratch")
        for name in FILES:
            (out / name).unlink(missing_ok=True)
        manifest = None

    n = 0
    id_width = 1
    if manifest is None:
        for item in iter_news(catalog, skip_bad_lines=cfg.skip_bad_lines):
            raw = item.news_id.encode("utf-8")
            if len(raw) > MAX_ID_BYTES:
                raise ValueError(f"item id {item.news_id[:80]!r} is longer than {MAX_ID_BYTES} bytes")
            n += 1
            id_width = max(id_width, len(raw))
        if n == 0:
            raise ValueError(f"{catalog} has no items")
        manifest = {"format": FORMAT, "contract_version": CONTRACT_VERSION, "encoder_sha256": encoder_sha,
                    "precision": cfg.precision, "dim": assets.dim, "count": n, "id_width": id_width,
                    "catalog": str(catalog.resolve()), "catalog_sha256": fingerprint,
                    "use_abstract": bool(assets.info.get("use_abstract", False)),
                    "categories_sha256": hashlib.sha256(
                        json.dumps(assets.category_vocab.to_list()).encode()).hexdigest(),
                    "complete": False, "created": datetime.now(UTC).isoformat(timespec="seconds")}
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
            raise ValueError(f"{catalog}: duplicate item id {sorted_ids[dup[0]].decode()!r} "
                             f"({dup.size} duplicates); ids must be unique")
        np.memmap(out / "order.i64", dtype=np.int64, mode="w+", shape=(n,))[:] = order
        ids.flush(), cats.flush(), subs.flush()
        np.memmap(out / "vectors.f32", dtype=np.float32, mode="w+", shape=(n, assets.dim)).flush()
        np.memmap(out / "truncated.u8", dtype=np.uint8, mode="w+", shape=(n,)).flush()
        _write_json(out / "progress.json", {"rows": 0})
        _write_json(manifest_path, manifest)
    n = manifest["count"]
    done = json.loads((out / "progress.json").read_text())["rows"]
    if done:
        log(f"{out}: resuming at row {done} of {n}")

    if cfg.encoder == "torchscript":
        from genrec.export.torchscript import TorchScriptEncoder

        encoder = TorchScriptEncoder(art.graph(cfg.precision, graph), device=cfg.device, threads=cfg.threads)
    else:
        encoder = OrtEncoder(art.graph(cfg.precision, graph), threads=cfg.threads)
    tokenizer = assets.tokenizer()
    vectors = np.memmap(out / "vectors.f32", dtype=np.float32, mode="r+", shape=(n, manifest["dim"]))
    cut = np.memmap(out / "truncated.u8", dtype=np.uint8, mode="r+", shape=(n,))      # per row: text was cut
    bar = None
    if progress:
        from genrec.progress import progress as progress_bar
        bar = progress_bar(total=n, initial=done, desc="indexing", unit="item", mininterval=1.0)
    t0 = time.perf_counter()
    row = 0
    encoded_texts = reused = 0
    seen = VectorLRU(cfg.dedupe_mb * 2**20)        # recently encoded texts (vector, truncated flag) by text key
    for chunk in _chunks(iter_news(catalog, skip_bad_lines=cfg.skip_bad_lines), cfg.chunk_size):
        start, row = row, row + len(chunk)
        if row <= done:
            continue                                            # encoded before the interruption
        texts = [item_text(it.title, it.abstract, manifest["use_abstract"]) for it in chunk]
        keys = ([VectorLRU.key("", t, "", "") for t in texts] if cfg.dedupe_mb
                else [j.to_bytes(8, "little") for j in range(len(texts))])     # dedupe off: every row its own
        out_vec = np.empty((len(chunk), manifest["dim"]), dtype=np.float32)    # (chunk, D)
        out_cut = np.zeros(len(chunk), dtype=np.uint8)
        first: dict[bytes, int] = {}                 # text key -> its first row in this chunk to encode
        copies: list[tuple[int, int]] = []           # (row, row it copies) for repeats inside the chunk
        for j, key in enumerate(keys):
            hit = seen.get(key)
            if hit is not None:
                out_vec[j], _, _, out_cut[j] = hit
                reused += 1
            elif key in first:
                copies.append((j, first[key]))
            else:
                first[key] = j
        todo = np.fromiter(first.values(), dtype=np.int64, count=len(first))
        if len(todo):
            tok = tokenizer([texts[j] for j in todo], pad_to=tokenizer.max_length)
            out_vec[todo] = encode_length_sorted(encoder, tok, cfg.batch_size)
            out_cut[todo] = tok.truncated
            encoded_texts += len(todo)
            for j in todo.tolist():
                seen.put(keys[j], out_vec[j], 0, 0, bool(out_cut[j]))        # a copy; not kept when dedupe is off
        for j, src in copies:
            out_vec[j], out_cut[j] = out_vec[src], out_cut[src]
            reused += 1
        vectors[start:row] = out_vec
        cut[start:row] = out_cut
        cut.flush()
        vectors.flush()
        _write_json(out / "progress.json", {"rows": row})       # only after the rows are on disk
        if bar is not None:
            bar.update(len(chunk))
        if on_chunk is not None:
            on_chunk(row)
    if bar is not None:
        bar.close()
    truncated = int(np.count_nonzero(cut))
    manifest.update(complete=True, seconds=round(time.perf_counter() - t0, 1), truncated_texts=truncated,
                    encoded_texts=encoded_texts, reused_texts=reused)
    _write_json(manifest_path, manifest)
    log(f"indexed {n} items into {out} ({manifest['seconds']} s for this run; {encoded_texts} texts encoded, "
        f"{reused} repeated texts reused; {truncated} texts cut to {tokenizer.max_length} tokens)")
    return out


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


class ItemIndex:
    """Read-only view of a complete index: vectorized id lookup, vectors and category ids."""

    def __init__(self, folder: str | Path, *, expect_encoder_sha256: str | None = None):
        folder = Path(folder)
        path = folder / "index.json"
        if not path.is_file():
            raise IndexMismatch(f"no index at {folder} (build one with `genrec index build`)")
        self.manifest = m = json.loads(path.read_text())
        if m.get("format") != FORMAT:
            raise IndexMismatch(f"{path}: format {m.get('format')!r} is not {FORMAT!r}")
        if not m["complete"]:
            rows = json.loads((folder / "progress.json").read_text())["rows"]
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
