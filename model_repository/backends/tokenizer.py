"""Triton model ``tokenizer``: request texts/categories -> token ids, category ids, truncation flags, and the
optional item statistics and user profile validated and filled (absent = zeros = no statistics: the heads'
prior; no profile).

With ``cache_bytes`` > 0 repeated texts take their token ids from a bounded LRU (``genrec.core.text.CachedTokenizer``);
hits, misses and bytes are Prometheus metrics (``genrec_token_cache_*``)."""

from __future__ import annotations

import numpy as np

from genrec.core.artifacts import ServingAssets
from genrec.core.contract import TOKENIZER, USER_PROFILE, TokenizerParams
from genrec.core.requests import Limits, validate
from genrec.core.runtime import profile_or_zeros, stats_or_zeros
from genrec.core.text import CachedTokenizer
from genrec.model_repository.backends.common import (
    CacheMetrics,
    get_input,
    get_optional,
    model_params,
    per_request,
    response,
    version_dir,
)

STATS_INPUTS = tuple(t.name for t in TOKENIZER.inputs if t.optional and t is not USER_PROFILE)   # (H|C, S) each


class TokenizerModel:
    def initialize(self, args):
        p = model_params(args, TokenizerParams)
        self.assets = ServingAssets.load(version_dir(args) / p.assets_dir)
        # pad to the longest text of the request (rounded up to a multiple, or to a fixed length when the
        # encoder backend cannot merge ragged batches)
        self.pad_to = p.pad_to if p.pad_to > 0 else None
        self.tokenizer = self.assets.tokenizer(pad_to_multiple_of=p.pad_to_multiple_of)
        self.limits = Limits.from_parameters(p)
        self.categories = ["", *self.assets.category_vocab.to_list()]     # the user_profile axis (K)
        self.metrics = None
        if p.cache_bytes > 0:                  # repeated titles skip WordPiece; ids are a function of the text
            self.tokenizer = CachedTokenizer(self.tokenizer, p.cache_bytes)
            self.metrics = CacheMetrics("tokenizer", args.get("model_instance_name", "tokenizer"),
                                        prefix="genrec_token_cache", what="token ids")

    def execute(self, requests):
        if self.metrics is None:
            return per_request("tokenizer", requests, self._one)
        before = (self.tokenizer.hits, self.tokenizer.misses)
        responses = per_request("tokenizer", requests, self._one)
        self.metrics.update(self.tokenizer, before)
        return responses

    def _one(self, request):
        raw = {t.name: get_input(request, t.name, ndim=1) for t in TOKENIZER.inputs if not t.optional}
        stats = {name: get_optional(request, name, dtype=np.float32, ndim=2) for name in STATS_INPUTS}
        req = validate(raw["history_text"].tolist(), raw["candidate_text"].tolist(),
                       raw["history_category"].tolist(), raw["history_subcategory"].tolist(),
                       raw["candidate_category"].tolist(), raw["candidate_subcategory"].tolist(), self.limits,
                       history_stats=stats["history_stats"], candidate_stats=stats["candidate_stats"],
                       user_profile=get_optional(request, "user_profile", dtype=np.float32, ndim=1),
                       categories=self.categories)
        tok = self.tokenizer([*req.history_text, *req.candidate_text], pad_to=self.pad_to)
        cv, sv = self.assets.category_vocab, self.assets.subcategory_vocab
        return response({
            "input_ids": tok.input_ids,                                           # (H + C, L)
            "attention_mask": tok.attention_mask,                                 # (H + C, L)
            "history_category_id": cv.lookup(req.history_category),               # (H,)
            "history_subcategory_id": sv.lookup(req.history_subcategory),         # (H,)
            "candidate_category_id": cv.lookup(req.candidate_category),           # (C,)
            "candidate_subcategory_id": sv.lookup(req.candidate_subcategory),     # (C,)
            "truncated": tok.truncated.astype(np.bool_),                          # (H + C,)
            "history_item_stats": stats_or_zeros(req.history_stats, len(req.history_text)),       # (H, S)
            "candidate_item_stats": stats_or_zeros(req.candidate_stats, len(req.candidate_text)),  # (C, S)
            "user_profile_vector": profile_or_zeros(req.user_profile, len(self.categories)),      # (K,)
        })
