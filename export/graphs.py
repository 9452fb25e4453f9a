"""The exported graphs as torch modules whose signatures follow ``genrec.core.contract``, each one part of
``genrec.model.GenRec``'s composition: the encoder (``GenRec.item_vectors``), the heads (``GenRec.score_user``) and
the retrieval graph (``GenRec.retrieval``: the heads' user encoder and item representation on their own, so serving
can search the whole catalog by ``user . item_repr``, the click logit's match term, and an index build can compute
every item's retrieval vector).

Each graph holds only the part of the model it runs, under the checkpoint's name (``encoder``, ``heads``), so the
exported weights keep their names; its forward is the composition step the model's method is."""

from __future__ import annotations

import torch
from torch import nn

from genrec.core.contract import HEADS, N_STATS
from genrec.model import GenRec


class EncoderGraph(nn.Module):
    """input_ids, attention_mask (N, L) int64 -> item_vectors (N, D): LM, pooling and projection."""

    def __init__(self, model: GenRec):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask)                          # (N, D): GenRec.item_vectors


class HeadsGraph(nn.Module):
    """One user: item_vectors (H + C, D) with history rows first, category ids, item statistics (H, S) and
    (C, S) raw counts (all zeros = no statistics = the training prior), profile topic weights (K,) (all zeros =
    no profile) -> per-task outputs.

    H comes from ``history_category``'s length, so H = 0 (a cold user) needs no special input.
    """

    def __init__(self, model: GenRec):
        super().__init__()
        self.heads = model.heads

    def forward(self, item_vectors: torch.Tensor, history_category: torch.Tensor, history_subcategory: torch.Tensor,
                candidate_category: torch.Tensor, candidate_subcategory: torch.Tensor, history_stats: torch.Tensor,
                candidate_stats: torch.Tensor, user_profile: torch.Tensor):
        out = self.heads.one_user(item_vectors, history_category, history_subcategory, candidate_category,
                                  candidate_subcategory, history_stats, candidate_stats, user_profile)   # score_user
        return tuple(out[name] for name in HEADS.output_names)                  # the contract's order


def _distinct(avoid: set[int], count: int) -> list[int]:
    out: list[int] = []
    n = 2
    while len(out) < count:
        if n not in avoid:
            out.append(n)
            avoid.add(n)
        n += 1
    return out


def example_inputs(dim: int, n_categories: int = 0, n_subcategories: int = 0):
    """Tracing inputs; every dynamic dim (N = H + C, L, H, C) gets a size distinct from each other and from
    the fixed dims (D, K, S), so no two axes can be confused. Statistics are non-zero counts."""
    avoid = {0, 1, dim, n_categories, n_subcategories, N_STATS}
    n_hist, n_cand, seq = _distinct(avoid, 3)
    while n_hist + n_cand in avoid:
        n_cand = _distinct(avoid, 1)[0]
    g = torch.Generator().manual_seed(0)
    enc = (torch.randint(1000, 2000, (n_hist + n_cand, seq), generator=g),
           torch.ones(n_hist + n_cand, seq, dtype=torch.int64))
    stats = lambda n: torch.randint(0, 50, (n, N_STATS), generator=g).float()    # noqa: E731
    heads = (torch.randn(n_hist + n_cand, dim, generator=g), torch.ones(n_hist, dtype=torch.int64),
             torch.ones(n_hist, dtype=torch.int64), torch.ones(n_cand, dtype=torch.int64),
             torch.ones(n_cand, dtype=torch.int64), stats(n_hist), stats(n_cand),
             (torch.arange(max(1, n_categories)) % 2).float())                  # a profile of every other topic
    return enc, heads


class RetrievalGraph(nn.Module):
    """item_vectors (N, D), category (N,), subcategory (N,) -> item_repr (N, D) and user_vector (D,): the user
    vector of a user whose history is these N items (N = 0: the sentinel, a cold user)."""

    def __init__(self, model: GenRec):
        super().__init__()
        self.heads = model.heads

    def forward(self, item_vectors: torch.Tensor, category: torch.Tensor, subcategory: torch.Tensor):
        return self.heads.retrieval(item_vectors, category, subcategory)      # GenRec.retrieval: the contract's order


def retrieval_example_inputs(dim: int, n: int = 7) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, dim, generator=g), torch.ones(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)
