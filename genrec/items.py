"""Item tables, batched item encoding, and batched impression scoring (training and evaluation)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from genrec.core.mind import Impression, NewsItem
from genrec.core.profiles import generated_id, profile_vector
from genrec.core.stats import N_STATS, ItemStats, stats_as_of
from genrec.core.text import TextTokenizer, item_text, length_sorted_batches
from genrec.core.vocab import Vocab
from genrec.model import ItemEncoder, RecommenderHeads

PAD = 0   # row 0 of every item table is a padding item (empty text, OOV categories)


@dataclasses.dataclass
class ItemTable:
    ids: list[str]                # (N,) news ids; ids[0] == "" is the padding item
    texts: list[str]              # (N,)
    category: np.ndarray          # (N,) int64 category ids
    subcategory: np.ndarray       # (N,) int64 subcategory ids
    index: dict[str, int]

    @classmethod
    def from_news(cls, news: dict[str, NewsItem], cat_vocab: Vocab, sub_vocab: Vocab,
                  use_abstract: bool, generated: Sequence[Impression] = ()) -> ItemTable:
        """``generated``: impressions whose LLM-written history titles (``Impression.generated``) get rows too,
        as items of unknown category (what a client that sends them as history texts sends)."""
        items = list(news.values())
        titles = dict.fromkeys(t for imp in generated for t in imp.generated)
        items += [NewsItem(generated_id(t), "", "", t, "") for t in titles if generated_id(t) not in news]
        ids = [""] + [n.news_id for n in items]
        texts = [""] + [item_text(n.title, n.abstract, use_abstract) for n in items]
        cat = np.concatenate([[0], cat_vocab.lookup(n.category for n in items)]).astype(np.int64)
        sub = np.concatenate([[0], sub_vocab.lookup(n.subcategory for n in items)]).astype(np.int64)
        return cls(ids, texts, cat, sub, {nid: i for i, nid in enumerate(ids) if nid})

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass
class ImpressionArrays:
    """Impressions as index arrays into an ItemTable; unknown news ids are dropped and counted."""

    history: np.ndarray                 # (I, Hmax) int64 item rows, left-aligned, 0-padded
    candidates: list[np.ndarray]        # I x (C_i,) int64 item rows
    labels: list[np.ndarray] | None     # I x (C_i,) int8
    user_ids: list[str]
    missing_history: int = 0
    missing_candidates: int = 0
    profile: np.ndarray | None = None                  # (I, K) LLM profile topic weights (genrec.core.profiles)
    history_stats: np.ndarray | None = None            # (I, Hmax, S) item statistics seen by each impression
    candidate_stats: list[np.ndarray] | None = None    # I x (C_i, S)

    def attach_stats_as_of(self, log: Sequence[Impression], impressions: Sequence[Impression],
                           table: ItemTable, staleness: np.ndarray | None = None) -> None:
        """Training: impression i (built from ``impressions[i]``) sees the counts of the events of ``log``
        strictly before its own time minus ``staleness[i]`` seconds (default 0)."""
        self.history_stats, self.candidate_stats = stats_as_of(log, impressions, self.history, self.candidates,
                                                               table.index, len(table), staleness)

    def attach_stats(self, stats: ItemStats, table: ItemTable) -> None:
        """Evaluation and serving: one fixed set of counts (e.g. the whole training log)."""
        per_row = np.zeros((len(table), N_STATS), dtype=np.float32)
        per_row[1:] = stats.lookup(table.ids[1:])
        self.history_stats = per_row[self.history]
        self.candidate_stats = [per_row[c] for c in self.candidates]

    @classmethod
    def build(cls, impressions: Sequence[Impression], table: ItemTable, max_history: int, *,
              categories: Sequence[str] | None = None, generated: bool = False) -> ImpressionArrays:
        """``categories``: the model's category names ("" first) for the profile matrix (None: no profiles, the
        heads see "no profile"; a width other than the model's would not index its categories); ``generated``: prepend
        each impression's LLM-written titles to its history (as the oldest items; the real ones are kept first
        when the history is full). Their rows must be in ``table`` (ItemTable.from_news(generated=...))."""
        hist = np.zeros((len(impressions), max_history), dtype=np.int64)
        profile = None if categories is None else np.asarray(
            [profile_vector(imp.profile, categories) for imp in impressions],
            dtype=np.float32).reshape(len(impressions), len(categories))
        cands, labels = [], []
        miss_h = miss_c = 0
        has_labels = bool(impressions) and impressions[0].labels is not None
        for i, imp in enumerate(impressions):
            ids = [*(generated_id(t) for t in imp.generated), *imp.history] if generated else imp.history
            rows = [table.index.get(h, -1) for h in ids[-max_history:]]
            miss_h += rows.count(-1)
            rows = [r for r in rows if r >= 0]
            hist[i, : len(rows)] = rows
            keep = [(table.index.get(c, -1), j) for j, c in enumerate(imp.candidates)]
            miss_c += sum(1 for r, _ in keep if r < 0)
            keep = [(r, j) for r, j in keep if r >= 0]
            cands.append(np.array([r for r, _ in keep], dtype=np.int64))
            if has_labels:
                labels.append(np.array([imp.labels[j] for _, j in keep], dtype=np.int8))
        return cls(hist, cands, labels if has_labels else None, [imp.user_id for imp in impressions],
                   miss_h, miss_c, profile)


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
def encode_items(encoder: ItemEncoder, tokenizer: TextTokenizer, texts: Sequence[str], batch_size: int = 128,
                 progress: bool = False) -> tuple[torch.Tensor, int]:
    """Full item encoder over ``texts`` -> ((N, D) vectors, number of truncated texts)."""
    cache, mask, n_trunc = encode_lower(encoder, tokenizer, texts, batch_size, progress)
    return upper_in_batches(encoder, cache, mask, batch_size), n_trunc


def upper_rows(encoder: ItemEncoder, cache: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor,
               batch_size: int = 256) -> torch.Tensor:
    """The trainable part of the encoder for cache ``rows`` -> (len(rows), D), with gradients.

    With fine-tuned layers the cache holds (N, max_length, H) hidden states; running the top layers
    over all max_length positions would spend ~3x the work on padding (ml-100k titles: median 8 of
    32 tokens), so the rows run in length-sorted chunks, each cut to its own longest text (the one
    length-sorted batching of genrec.core.text). Padding is masked out of attention and pooling, so the
    vectors are those of the full width.
    """
    if mask is None:
        return encoder.upper(cache[rows].float(), None)                          # (R, D) pooled cache
    row_mask = mask[rows]                                                         # (R, L)
    out = None
    for idx, width in length_sorted_batches(row_mask.numpy(), batch_size):
        sel = torch.from_numpy(idx)
        vec = encoder.upper(cache[:, :width][rows[sel]].float(), row_mask[sel, :width])   # (b, D)
        if out is None:
            out = vec.new_zeros(len(rows), vec.shape[1])
        out = out.index_copy(0, sel, vec)
    return out if out is not None else torch.zeros(0, encoder.cfg.dim)


def upper_in_batches(encoder: ItemEncoder, cache: torch.Tensor, mask: torch.Tensor | None,
                     batch_size: int = 256) -> torch.Tensor:
    """Item vectors (N, D) for the whole cache, without gradients."""
    with torch.no_grad():
        return upper_rows(encoder, cache, mask, torch.arange(len(cache)), batch_size)


@torch.no_grad()
def score_impressions(heads: RecommenderHeads, vectors: torch.Tensor, table: ItemTable, imps: ImpressionArrays,
                      batch_size: int = 64, keys: tuple[str, ...] = ("click_logit",)) -> dict[str, list[np.ndarray]]:
    """Run the heads over every impression. vectors (N, D) item vectors aligned with ``table``.

    Returns, per requested key, one array per impression: (C_i,) for per-candidate outputs, the
    full row for per-user outputs such as ``topic_logits``.
    """
    heads.eval()
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
        res = heads(vectors[hist], hist > 0, cat[hist], sub[hist], vectors[cands], cat[cands], sub[cands],
                    hist_stats, cand_stats, profile)
        for k in keys:
            val = res[k].numpy()
            for j, c in enumerate(c_lists):
                out[k].append(val[j, : len(c)] if val.ndim >= 2 and k != "topic_logits" else val[j])
    return out
