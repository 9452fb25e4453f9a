"""Triton model ``encoder`` (python-ort backend): dynamically batched, ragged requests merged here.

Triton hands ``execute`` the requests its dynamic batcher grouped. Each may have its own token length
(``allow_ragged_batch``); valid ones are padded to the longest, concatenated and run through ONNX Runtime
once, then split back. Invalid ones get their own INVALID_ARGUMENT and do not disturb the rest: token ids
outside the vocabulary, and an ``attention_mask`` that is not what a tokenizer writes (each row 1 for its tokens,
then 0 for padding, at least one token) -- the encoder cuts each text to its mask's length, so any other mask
would encode something else than the tokens a cache entry is filed under.

With ``cache_bytes`` > 0 and a batch-invariant encoder (the per-text INT8 graph), texts encoded before are
served from a content-addressed cache (``genrec.core.runtime.CachedEncoder``); hits, misses and cached bytes are
Prometheus metrics next to Triton's (``genrec_vector_cache_*`` on the metrics port).
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from genrec.core.contract import EncoderParams
from genrec.core.requests import RequestError
from genrec.core.runtime import CachedEncoder, OrtEncoder, check_attention_mask
from genrec.model_repository.backends.common import (
    CacheMetrics,
    error,
    get_input,
    internal_error,
    model_params,
    response,
    version_dir,
)


class EncoderModel:
    def initialize(self, args):
        p = model_params(args, EncoderParams)
        self.encoder = OrtEncoder(version_dir(args) / "model.onnx", threads=p.threads, device=p.device)
        self.vocab_size = p.vocab_size
        self.max_length = p.max_length
        self.cache = None
        if p.cache_bytes > 0 and self.encoder.rows_independent:
            self.cache = CachedEncoder(self.encoder, p.cache_bytes)
            self.metrics = CacheMetrics("encoder", args.get("model_instance_name", "encoder"))
        elif p.cache_bytes > 0:
            pb_utils.Logger.log_warn("encoder: vector cache off: this encoder batches rows together, so a cached "
                                     "vector could differ from a fresh one (export the per-text INT8 graph)")

    def _check(self, request) -> tuple[np.ndarray, np.ndarray]:
        ids = get_input(request, "input_ids", dtype=np.int64, ndim=2)
        mask = get_input(request, "attention_mask", dtype=np.int64, ndim=2)
        if ids.shape != mask.shape:
            raise RequestError(f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} differ in shape")
        if ids.shape[1] > self.max_length or ids.shape[1] == 0:
            raise RequestError(f"token length must be 1..{self.max_length}, got {ids.shape[1]}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise RequestError(f"input_ids must be in [0, {self.vocab_size}), got [{ids.min()}, {ids.max()}]")
        check_attention_mask(mask)
        return ids, mask

    def execute(self, requests):
        responses: list = [None] * len(requests)
        good: list[tuple[int, np.ndarray, np.ndarray]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, *self._check(request)))
            except RequestError as exc:
                responses[i] = error(f"encoder: {exc}")
            except Exception as exc:  # noqa: BLE001
                responses[i] = internal_error("encoder", exc)
        if good:
            width = max(ids.shape[1] for _, ids, _ in good)
            total = sum(ids.shape[0] for _, ids, _ in good)
            all_ids = np.zeros((total, width), dtype=np.int64)                  # (sum N_i, L_max)
            all_mask = np.zeros((total, width), dtype=np.int64)
            row = 0
            for _, ids, mask in good:
                all_ids[row: row + len(ids), : ids.shape[1]] = ids
                all_mask[row: row + len(ids), : ids.shape[1]] = mask
                row += len(ids)
            try:
                if self.cache is None:
                    vectors = self.encoder(all_ids, all_mask)                      # (sum N_i, D)
                else:
                    before = (self.cache.hits, self.cache.misses)
                    vectors = self.cache(all_ids, all_mask)                        # repeated texts from the cache
                    self.metrics.update(self.cache, before)
            except Exception as exc:  # noqa: BLE001
                for i, _, _ in good:
                    responses[i] = internal_error("encoder", exc)
                return responses
            row = 0
            for i, ids, _ in good:
                responses[i] = response({"item_vectors": vectors[row: row + len(ids)]})
                row += len(ids)
        return responses
