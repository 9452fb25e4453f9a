"""The retrieval graph (``retrieval.onnx``): the heads' user encoder and item representation, exported on their
own so serving can search the whole catalog by ``user . item_repr`` (the click logit's match term) and an index
build can compute every item's retrieval vector. Gated like the other graphs: ONNX Runtime must reproduce the
PyTorch heads on the parity set, or the export fails."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from genrec.core.retrieval import OrtRetrieval
from genrec.export.parity import ParityError
from genrec.model import RecommenderHeads

# FP32 everywhere (the graph is a LayerNorm and an attention over <= 50 rows): max |diff| against PyTorch of the
# item representations, the user vectors and the match term user . item_repr / sqrt(D) of the parity set.
TOLERANCE = 1e-3


class RetrievalGraph(nn.Module):
    """item_vectors (N, D), category (N,), subcategory (N,) -> item_repr (N, D) and user_vector (D,): the user
    vector of a user whose history is these N items (N = 0: the sentinel, a cold user)."""

    def __init__(self, heads: RecommenderHeads):
        super().__init__()
        self.heads = heads

    def forward(self, item_vectors: torch.Tensor, category: torch.Tensor, subcategory: torch.Tensor):
        v, c, s = item_vectors.unsqueeze(0), category.unsqueeze(0), subcategory.unsqueeze(0)
        user, _, hist = self.heads.user_encoder(v, torch.ones_like(c, dtype=torch.bool), c, s)
        return hist[0, 1:], user[0]                                            # the contract's order


def example_inputs(dim: int, n: int = 7) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, dim, generator=g), torch.ones(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)


def parity(model, path, inputs, precision: str, threads: int = 1) -> dict[str, Any]:
    """ORT ``retrieval.onnx`` against PyTorch over the parity set (its items and its users' histories), and the
    match term against the heads' own (the retrieval score must be the very score the heads add)."""
    ort = OrtRetrieval(path, threads)
    heads = model.heads.eval()
    d = inputs.ref_vectors.shape[1]
    item_diff = user_diff = match_diff = 0.0
    with torch.no_grad():
        for imp in inputs.impressions:
            hv, cv = inputs.ref_vectors[imp["hist"]], inputs.ref_vectors[imp["cand"]]
            got_items = ort.item_repr(cv, imp["cc"], imp["cs"])
            got_user = ort.user_vector(hv, imp["hc"], imp["hs"])
            t = lambda a: torch.from_numpy(np.asarray(a))[None]                    # noqa: E731
            ref_items = heads.item_repr(t(cv), t(imp["cc"]), t(imp["cs"]))[0].numpy()
            ref_user = heads.user_encoder(t(hv), torch.ones(1, len(hv), dtype=torch.bool), t(imp["hc"]),
                                          t(imp["hs"]))[0][0].numpy()
            item_diff = max(item_diff, float(np.abs(got_items - ref_items).max(initial=0)))
            user_diff = max(user_diff, float(np.abs(got_user - ref_user).max()))
            match_diff = max(match_diff, float(np.abs(got_items @ got_user - ref_items @ ref_user).max(initial=0))
                             / math.sqrt(d))
    stats = {"retrieval_item_max_abs_diff": item_diff, "retrieval_user_max_abs_diff": user_diff,
             "retrieval_match_max_abs_diff": match_diff, "tolerance": TOLERANCE}
    worst = max(item_diff, user_diff, match_diff)
    if not worst <= TOLERANCE:
        raise ParityError(precision, "retrieval_max_abs_diff", worst, TOLERANCE, "max")
    return stats
