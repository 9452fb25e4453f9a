"""Batched item encoding and impression scoring: the loops that run the model over a whole item table or
impression set (training's cache of the frozen LM, validation, evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genrec.core.stats import N_STATS
from genrec.core.text import TextTokenizer, length_sorted_batches
from genrec.model import GenRec, HeadsBatch, ItemEncoder
from genrec.tables import ImpressionArrays, ItemTable


@torch.no_grad()
def encode_lower(encoder: ItemEncoder, tokenizer: TextTokenizer, texts: Sequence[str], batch_size: int = 128,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Run the frozen part of the encoder over ``texts`` once (the training cache).

    Returns (cache, mask, n_truncated): cache (N, H) pooled when nothing is fine-tuned, else
    (N, max_length, H) float16 hidden states with mask (N, max_length).
    """
    encoder.eval()
    tok = tokenizer(list(texts), pad_to=tokenizer.max_length)
    ids_all, mask_all = torch.from_numpy(tok.input_ids), torch.from_numpy(tok.attention_mask)
    pooled_mode = encoder.n_frozen == len(encoder.lm.encoder.layer)
    hidden = encoder.lm.config.hidden_size
    if pooled_mode:
        cache = torch.zeros(len(texts), hidden)
    else:
        cache = torch.zeros(len(texts), tokenizer.max_length, hidden, dtype=torch.float16)
    batches = length_sorted_batches(tok.attention_mask, batch_size)
    it = batches
    if progress:
        from genrec.core.progress import progress as progress_bar
        it = progress_bar(batches, desc="encoding items (frozen LM)", unit="batch", leave=False)
    for idx, width in it:
        ids, mask = ids_all[idx, :width], mask_all[idx, :width]
        out = encoder.lower(ids, mask)
        if pooled_mode:
            cache[idx] = out
        else:
            cache[idx, :width] = out.to(torch.float16)
    return cache, (None if pooled_mode else mask_all), int(tok.truncated.sum())


@torch.no_grad()
def encode_items(model: GenRec, tokenizer: TextTokenizer, texts: Sequence[str], batch_size: int = 128,
                 progress: bool = False) -> tuple[torch.Tensor, int]:
    """Item vectors of ``texts`` -> ((N, D) vectors, number of truncated texts): the frozen part once
    (``encode_lower``), then ``GenRec.cached_item_vectors``."""
    cache, mask, n_trunc = encode_lower(model.encoder, tokenizer, texts, batch_size, progress)
    return model.cached_item_vectors(cache, mask, batch_size=batch_size), n_trunc


@torch.no_grad()
def score_impressions(model: GenRec, vectors: torch.Tensor, table: ItemTable, imps: ImpressionArrays,
                      batch_size: int = 64, keys: tuple[str, ...] = ("click_logit",)) -> dict[str, list[np.ndarray]]:
    """Score every impression (``GenRec.score``, in batches). vectors (N, D) item vectors aligned with ``table``.

    Returns, per requested key, one array per impression: (C_i,) for per-candidate outputs, the
    full row for per-user outputs such as ``topic_logits``.
    """
    model.eval()
    if imps.history_stats is None or imps.candidate_stats is None:
        raise ValueError("impressions have no item statistics: call attach_stats() or attach_stats_as_of() first")
    cat, sub = torch.from_numpy(table.category), torch.from_numpy(table.subcategory)
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    n = len(imps.candidates)
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        hist = torch.from_numpy(imps.history[sl])                                  # (B, H)
        width = max(1, int((hist > 0).sum(1).max()))
        hist = hist[:, :width]
        c_lists = imps.candidates[sl]
        c_max = max(len(c) for c in c_lists)
        cands = torch.zeros(len(c_lists), c_max, dtype=torch.int64)                # (B, C)
        cand_stats = torch.zeros(len(c_lists), c_max, N_STATS)                     # (B, C, S)
        for j, (c, st) in enumerate(zip(c_lists, imps.candidate_stats[sl])):
            cands[j, : len(c)] = torch.from_numpy(c)
            cand_stats[j, : len(c)] = torch.from_numpy(st)
        hist_stats = torch.from_numpy(imps.history_stats[sl, :width])              # (B, H, S)
        profile = torch.from_numpy(imps.profile[sl]) if imps.profile is not None else None   # (B, K)
        res = model.score(HeadsBatch.from_rows(vectors, cat, sub, hist, cands, hist_stats, cand_stats, profile))
        for k in keys:
            val = res[k].numpy()
            for j, c in enumerate(c_lists):
                out[k].append(val[j, : len(c)] if val.ndim >= 2 and k != "topic_logits" else val[j])
    return out
