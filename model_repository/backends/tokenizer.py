"""Triton model ``tokenizer``: request texts/categories -> token ids, category ids, truncation flags, and the
optional item statistics validated and filled (absent = zeros = no statistics: the heads' prior)."""

from __future__ import annotations

import numpy as np

from genrec.artifacts import ServingAssets
from genrec.contract import TOKENIZER
from genrec.model_repository.backends.common import (
    get_input,
    get_optional,
    model_params,
    per_request,
    response,
    version_dir,
)
from genrec.requests import Limits, validate
from genrec.runtime import stats_or_zeros

STATS_INPUTS = tuple(t.name for t in TOKENIZER.inputs if t.optional)


class TokenizerModel:
    def initialize(self, args):
        p = model_params(args)
        self.assets = ServingAssets.load(version_dir(args) / p.get("assets_dir", "assets"))
        # pad to the longest text of the request (rounded up to a multiple, or to a fixed length when the
        # encoder backend cannot merge ragged batches)
        self.pad_to = int(p["pad_to"]) if int(p.get("pad_to", "0")) > 0 else None
        self.tokenizer = self.assets.tokenizer(pad_to_multiple_of=int(p.get("pad_to_multiple_of", "1")))
        self.limits = Limits.from_parameters(p)

    def execute(self, requests):
        return per_request("tokenizer", requests, self._one)

    def _one(self, request):
        raw = {t.name: get_input(request, t.name, ndim=1) for t in TOKENIZER.inputs if not t.optional}
        stats = {name: get_optional(request, name, dtype=np.float32, ndim=2) for name in STATS_INPUTS}
        req = validate(raw["history_text"].tolist(), raw["candidate_text"].tolist(),
                       raw["history_category"].tolist(), raw["history_subcategory"].tolist(),
                       raw["candidate_category"].tolist(), raw["candidate_subcategory"].tolist(), self.limits,
                       history_stats=stats["history_stats"], candidate_stats=stats["candidate_stats"])
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
        })
