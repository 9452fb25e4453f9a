"""In-process ONNX Runtime pipeline: tokenizer + category vocabularies + encoder.onnx + heads.onnx.

Torch-free. One implementation used by the export parity gate, the Triton ``python-ort`` models,
the benchmarks' in-process floor and the tests that compare Triton against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from genrec.core.artifacts import ASSETS, ServingAssets
from genrec.core.contract import ENCODER, HEADS, N_STATS

# ONNX metadata of an encoder whose rows are computed independently (a Loop runs each text alone: the
# per-text INT8 recipe, genrec.export.convert.wrap_per_text): its vectors do not depend on batch-mates.
ROWS_KEY = "genrec.rows"
ROWS_INDEPENDENT = "independent"


def session(path: str | Path, threads: int = 0, device: str = "cpu"):
    """An ORT session; ``threads`` = intra-op threads (0 = ORT default), ``device`` cpu or cuda."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("device=cuda needs onnxruntime-gpu (CUDAExecutionProvider is not available)")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


class OrtEncoder:
    """encoder.onnx: (N, L) int64 x2 -> (N, D) float32.

    An encoder stamped ``genrec.rows = independent`` (the per-text INT8 recipe) runs each text alone inside
    its graph; on CPU with ``threads`` != 1 its rows are split into contiguous parts of about equal token
    count, one per thread, each run by a single-threaded session call. Results are identical to one call
    (every row is computed alone either way); it is faster because a 2-thread pool synchronizing on every
    tiny per-row op is slow (measured: 1.8x on 2 cores for 150 titles).
    """

    def __init__(self, path: str | Path, threads: int = 0, device: str = "cpu"):
        self.sess = session(path, threads, device)
        self.row_threads = 1
        rows = self.sess.get_modelmeta().custom_metadata_map.get(ROWS_KEY)
        self.rows_independent = rows == ROWS_INDEPENDENT      # each text computed alone: batch-invariant
        if rows == ROWS_INDEPENDENT and device == "cpu" and threads != 1:
            import os
            from concurrent.futures import ThreadPoolExecutor

            self.row_threads = threads if threads > 0 else max(1, os.cpu_count() or 1)
            if self.row_threads > 1:
                self.sess = session(path, 1, device)
                self._pool = ThreadPoolExecutor(self.row_threads, thread_name_prefix="genrec-encoder")

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        (out,) = self.sess.run([ENCODER.outputs[0].name], {"input_ids": input_ids, "attention_mask": attention_mask})
        return out

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        n = len(input_ids)
        if self.row_threads == 1 or n < 2:
            return self._run(input_ids, attention_mask)
        tokens = np.cumsum(attention_mask.sum(1))
        cuts = np.searchsorted(tokens, tokens[-1] * np.arange(1, self.row_threads) / self.row_threads)
        bounds = np.unique(np.clip(np.concatenate([[0], cuts + 1, [n]]), 0, n))
        parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        outs = self._pool.map(lambda s: self._run(input_ids[s], attention_mask[s]), parts)
        return np.concatenate(list(outs))


def check_attention_mask(mask: np.ndarray) -> None:
    """Raise RequestError unless every row of ``mask`` (N, L) is a tokenizer's: 1 for the row's tokens, then 0
    for padding (a prefix of ones), with at least one token. The per-text encoder reads a row as its first
    ``mask.sum()`` tokens, so a mask with holes or other values describes tokens it does not encode."""
    from genrec.core.requests import RequestError

    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        return
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        r, c = (int(x) for x in np.argwhere(bad)[0])
        raise RequestError(f"attention_mask[{r}][{c}] = {mask[r, c]}: must be 0 or 1")
    first_zero = np.where(mask == 0, np.arange(mask.shape[1]), mask.shape[1]).min(1)     # (N,) padding start
    after = (np.arange(mask.shape[1])[None, :] > first_zero[:, None]) & (mask == 1)        # a 1 after a 0
    if after.any():
        r, c = (int(x) for x in np.argwhere(after)[0])
        raise RequestError(f"attention_mask[{r}] has a 1 at {c} after a 0 at {int(first_zero[r])}: a row must be "
                           "ones for its tokens, then zeros for padding")
    empty = np.flatnonzero(mask[:, 0] == 0)
    if empty.size:
        raise RequestError(f"attention_mask[{int(empty[0])}] is all zeros: every text has at least one token")


class CachedEncoder:
    """An encoder with a content-addressed cache of item vectors in front (the text path's repeated items).

    Keys hash each row's real tokens (its input_ids up to its attention length), so a text seen before is not
    encoded again whatever its request, padding or batch-mates; the encoder itself is fixed per instance.
    Only correct for an encoder whose rows do not depend on their batch (``OrtEncoder.rows_independent``,
    the per-text INT8 graph): a cached vector then equals a fresh one bit for bit, and scores stay a
    function of the request alone. Rows repeated inside one call are encoded once. Bounded in bytes (LRU).
    """

    def __init__(self, encoder: OrtEncoder, capacity_bytes: int):
        if not encoder.rows_independent:
            raise ValueError("a vector cache needs an encoder whose rows are independent of their batch "
                             "(the per-text INT8 graph); this one batches rows together")
        from genrec.core.vcache import VectorLRU

        self.encoder = encoder
        self.cache = VectorLRU(capacity_bytes)
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes

    @staticmethod
    def keys(input_ids: np.ndarray, attention_mask: np.ndarray) -> list[bytes]:
        """Per row: a hash of exactly what the per-text encoder computes that row's vector from -- its first
        ``max(1, mask.sum())`` token ids *and* mask values (the graph cuts each row there) -- so two rows share a
        key only when the encoder sees the same input. (Masks that are not a tokenizer's are refused before the
        encoder by :func:`check_attention_mask`; the key does not rely on it.)"""
        import hashlib

        lengths = np.maximum(1, attention_mask.sum(1))
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        return [hashlib.blake2b(ids[r, : lengths[r]].tobytes() + b"|" + mask[r, : lengths[r]].tobytes(),
                                digest_size=16).digest() for r in range(len(input_ids))]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if len(input_ids) == 0:
            return self.encoder(input_ids, attention_mask)
        keys = self.keys(input_ids, attention_mask)
        rows: dict[bytes, list[int]] = {}                    # key -> its rows in this call
        for r, k in enumerate(keys):
            rows.setdefault(k, []).append(r)
        found = {k: hit[0] for k in rows if (hit := self.cache.get(k)) is not None}
        todo = [rs[0] for k, rs in rows.items() if k not in found]   # one row per key the cache lacks
        if todo:
            idx = np.asarray(todo)
            width = max(1, int(attention_mask[idx].sum(1).max()))
            fresh = self.encoder(input_ids[idx, :width], attention_mask[idx, :width])   # (misses, D)
            for r, vec in zip(todo, fresh):
                found[keys[r]] = self.cache.put(keys[r], vec, 0, 0)[0]
        out = np.empty((len(keys), next(iter(found.values())).shape[0]), dtype=np.float32)
        for k, rs in rows.items():
            out[rs] = found[k]
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        return out


def stats_or_zeros(stats, n: int) -> np.ndarray:
    """(n, S) float32 raw item statistics; None = no statistics for any item = zeros (the heads' prior)."""
    if stats is None:
        return np.zeros((n, N_STATS), dtype=np.float32)
    return np.ascontiguousarray(stats, dtype=np.float32).reshape(n, N_STATS)


def profile_or_zeros(profile, k: int) -> np.ndarray:
    """(K,) float32 profile topic weights (genrec.core.profiles); None = no profile = zeros."""
    if profile is None:
        return np.zeros(k, dtype=np.float32)
    return np.ascontiguousarray(profile, dtype=np.float32).reshape(k)


class OrtHeads:
    """heads.onnx. ``history_stats`` (H, S) / ``candidate_stats`` (C, S) are raw counts in ``ITEM_STATS``
    order; None (or an all-zero row) means "no statistics": the item gets the training prior. ``user_profile``
    (K,) topic weights; None (or zeros) means "no profile"."""

    def __init__(self, path: str | Path, threads: int = 0, device: str = "cpu"):
        self.sess = session(path, threads, device)
        self.n_categories = next(int(i.shape[0]) for i in self.sess.get_inputs() if i.name == "user_profile")

    def __call__(self, item_vectors: np.ndarray, history_category: np.ndarray, history_subcategory: np.ndarray,
                 candidate_category: np.ndarray, candidate_subcategory: np.ndarray,
                 history_stats: np.ndarray | None = None,
                 candidate_stats: np.ndarray | None = None,
                 user_profile: np.ndarray | None = None,
                 outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Every heads output, or only ``outputs`` (ORT then runs only the nodes they need: without
        ``explanation`` the leave-one-out part is skipped; the other outputs are the same values)."""
        feeds = {"item_vectors": item_vectors, "history_category": history_category,
                 "history_subcategory": history_subcategory, "candidate_category": candidate_category,
                 "candidate_subcategory": candidate_subcategory,
                 "history_stats": stats_or_zeros(history_stats, len(history_category)),
                 "candidate_stats": stats_or_zeros(candidate_stats, len(candidate_category)),
                 "user_profile": profile_or_zeros(user_profile, self.n_categories)}
        names = list(HEADS.output_names if outputs is None else outputs)
        return dict(zip(names, self.sess.run(names, feeds)))


class Pipeline:
    """The exported model entirely in process: ``genrec.model.GenRec``'s composition over the ONNX graphs, step for
    step. ``item_vectors`` (tokenizer + encoder.onnx) is ``GenRec.item_vectors``, ``score_user`` (heads.onnx) is
    ``GenRec.score_user``, and ``recommend`` (one user's texts and category names) is ``GenRec.forward``."""

    def __init__(self, artifacts_dir: str | Path, precision: str, threads: int = 0, device: str = "cpu",
                 pad_to_multiple_of: int = 1):
        root = Path(artifacts_dir)
        self.assets = ServingAssets.load(root / ASSETS)
        self.tokenizer = self.assets.tokenizer(pad_to_multiple_of)
        self.encoder = OrtEncoder(root / precision / "encoder.onnx", threads, device)
        self.heads = OrtHeads(root / precision / "heads.onnx", threads, device)

    def item_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Item texts -> (N, D) item vectors."""
        tok = self.tokenizer(list(texts))
        return self.encoder(tok.input_ids, tok.attention_mask)                 # (N, D)

    def score_user(self, item_vectors: np.ndarray, history_category: np.ndarray, history_subcategory: np.ndarray,
                   candidate_category: np.ndarray, candidate_subcategory: np.ndarray, history_stats=None,
                   candidate_stats=None, user_profile=None) -> dict[str, np.ndarray]:
        """One user over precomputed vectors (H + C, D), history rows first, and category ids -> every heads output
        (``OrtHeads``: None statistics / profile = zeros = none)."""
        return self.heads(item_vectors, history_category, history_subcategory, candidate_category,
                          candidate_subcategory, history_stats, candidate_stats, user_profile)

    def recommend(self, history: Sequence[str], candidates: Sequence[str],
                  history_categories: Sequence[str] | None = None, history_subcategories: Sequence[str] | None = None,
                  candidate_categories: Sequence[str] | None = None,
                  candidate_subcategories: Sequence[str] | None = None, history_stats=None,
                  candidate_stats=None, user_profile=None) -> dict[str, np.ndarray]:
        """``history_stats`` / ``candidate_stats``: optional (H, S) / (C, S) item statistics (``ITEM_STATS``:
        raw counts, then the collaborative vector); None = zeros = no statistics, i.e. the training prior.
        ``user_profile``: optional (K,) topic weights (``genrec.core.profiles.profile_vector``); None = no profile."""
        cv, sv = self.assets.category_vocab, self.assets.subcategory_vocab
        return self.score_user(self.item_vectors([*history, *candidates]),                    # (H + C, D)
                               cv.lookup(history_categories or [""] * len(history)),
                               sv.lookup(history_subcategories or [""] * len(history)),
                               cv.lookup(candidate_categories or [""] * len(candidates)),
                               sv.lookup(candidate_subcategories or [""] * len(candidates)),
                               history_stats, candidate_stats, user_profile)
