"""Triton model ``heads`` (python-ort backend): one user per request -> scores, tasks, explanation.

``history_stats`` / ``candidate_stats`` are optional here: absent = zeros = no statistics (the prior); so is
``user_profile``: absent = zeros = no profile."""

from __future__ import annotations

import numpy as np

from genrec.core.contract import HeadsParams
from genrec.core.requests import RequestError, validate_profile, validate_stats
from genrec.core.runtime import OrtHeads
from genrec.model_repository.backends.common import (
    get_input,
    get_optional,
    model_params,
    per_request,
    response,
    version_dir,
)


class HeadsModel:
    def initialize(self, args):
        p = model_params(args, HeadsParams)
        self.heads = OrtHeads(version_dir(args) / "model.onnx", threads=p.threads, device=p.device)
        self.dim, self.n_categories, self.n_subcategories = p.dim, p.n_categories, p.n_subcategories
        self.categories = [""] * self.n_categories      # validate_profile names only the index here (no vocab)

    def execute(self, requests):
        return per_request("heads", requests, self._one)

    def _ids(self, request, name: str, n_max: int) -> np.ndarray:
        ids = get_input(request, name, dtype=np.int64, ndim=1)
        if ids.size and (ids.min() < 0 or ids.max() >= n_max):
            raise RequestError(f"{name} must be in [0, {n_max}), got [{ids.min()}, {ids.max()}]")
        return ids

    def _one(self, request):
        vec = get_input(request, "item_vectors", dtype=np.float32, ndim=2)
        hc = self._ids(request, "history_category", self.n_categories)
        hs = self._ids(request, "history_subcategory", self.n_subcategories)
        cc = self._ids(request, "candidate_category", self.n_categories)
        cs = self._ids(request, "candidate_subcategory", self.n_subcategories)
        if len(hc) != len(hs) or len(cc) != len(cs):
            raise RequestError("category and subcategory ids must have one value per item")
        if len(cc) == 0:
            raise RequestError("no candidates: candidate_category is empty")
        if vec.shape != (len(hc) + len(cc), self.dim):
            raise RequestError(f"item_vectors must be (H + C, {self.dim}) = ({len(hc) + len(cc)}, {self.dim}), "
                               f"got {list(vec.shape)}")
        if not np.isfinite(vec).all():
            raise RequestError("item_vectors contains NaN or Inf")
        hst = validate_stats(get_optional(request, "history_stats", dtype=np.float32, ndim=2), "history_stats",
                             len(hc), "history_category")
        cst = validate_stats(get_optional(request, "candidate_stats", dtype=np.float32, ndim=2), "candidate_stats",
                             len(cc), "candidate_category")
        prof = validate_profile(get_optional(request, "user_profile", dtype=np.float32, ndim=1), self.categories)
        return response(self.heads(vec, hc, hs, cc, cs, hst, cst, prof))
