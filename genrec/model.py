"""The genrec model: pretrained-LM item encoder, engineered features, attention user encoder and
multi-task fusion heads (GENRE / ONCE-style, PLM-NR user encoder).

Two modules, exported separately (see ``genrec.export``):

* :class:`ItemEncoder` -- MiniLM (all-MiniLM-L6-v2) -> masked mean pooling -> L2 norm -> trainable
  projection to D. With ``finetune_layers = k`` only the top k transformer layers train; the output of
  the frozen part is cached once (``lower``), so CPU training stays fast.
* :class:`RecommenderHeads` -- everything after item text vectors: category/subcategory embeddings,
  engineered features, additive-attention user encoder, click head and auxiliary task heads.

:class:`GenRec` holds both and is the one place that composes them: item texts -> item vectors
(``item_vectors``, ``cached_item_vectors`` in training), B users over precomputed vectors (``score`` of a
:class:`HeadsBatch`), one user as served (``score_user``, the heads graph's contract), the retrieval vectors
(``retrieval``), and the whole served forward (``forward``). Training, evaluation, export, the parity gates and the
benchmarks call these; ``genrec.core.runtime.Pipeline`` mirrors the same structure over the ONNX graphs.

Tensor shapes: B users, H history items, C candidates, D vector size, L tokens, K categories, S item statistics.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import ModelConfig  # noqa: F401  (re-exported)
from genrec.core.contract import N_COUNTS, N_STATS
from genrec.core.stats import CTR_POPULARITY_WEIGHT

MASK_FILL = -1e4   # additive-mask value; finite so the FP16 graph cannot produce inf - inf = NaN

# Engineered per-candidate features, in the order of the last axis of RecommenderHeads.features():
# content/user features, then item statistics (genrec.core.stats) and how the candidate compares with the
# items the user clicked before; then the LLM profile (genrec.core.profiles): the weight of the candidate's category
# among the user's profile topics, and whether the user has a profile at all.
FEATURE_NAMES = ("max_similarity", "mean_similarity", "category_overlap", "subcategory_overlap",
                 "log_history_length", "cold_user",
                 "item_log_exposures", "item_log_popularity", "item_ctr", "item_known",
                 "popularity_vs_history", "ctr_vs_history",
                 "cf_max_similarity", "cf_mean_similarity", "cf_known",
                 "profile_match", "profile_known")
N_ITEM_FEATURES = 3   # standardized item features (log exposures, log popularity, smoothed CTR)
RAW_POPULARITY, RAW_CTR = 1, 2   # their columns in RecommenderHeads._raw_item_features

from genrec.config import TASKS  # noqa: E402,F401


def load_lm_config(lm_config: dict):
    from transformers import BertConfig

    cfg = BertConfig.from_dict(dict(lm_config))
    cfg._attn_implementation = "eager"   # plain matmul attention: exports cleanly, ORT fuses it
    return cfg


class ItemEncoder(nn.Module):
    """Item text -> item vector. input_ids/attention_mask (N, L) -> (N, D)."""

    def __init__(self, cfg: ModelConfig, lm_config: dict):
        super().__init__()
        from transformers import BertModel

        bert_cfg = load_lm_config(lm_config)
        if not 0 <= cfg.finetune_layers <= bert_cfg.num_hidden_layers:
            raise ValueError(f"finetune_layers must be in 0..{bert_cfg.num_hidden_layers}, got {cfg.finetune_layers}")
        self.cfg = cfg
        self.lm = BertModel(bert_cfg, add_pooling_layer=False)
        self.n_frozen = bert_cfg.num_hidden_layers - cfg.finetune_layers
        self.proj = nn.Linear(bert_cfg.hidden_size, cfg.dim)
        for p in self.lm.embeddings.parameters():
            p.requires_grad_(False)
        for layer in self.lm.encoder.layer[: self.n_frozen]:
            for p in layer.parameters():
                p.requires_grad_(False)

    @staticmethod
    def _extended_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # (N, L) 1/0 -> (N, 1, 1, L) additive 0 / MASK_FILL
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_FILL

    def _layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers) -> torch.Tensor:
        ext = self._extended_mask(attention_mask, hidden.dtype)
        for layer in layers:
            hidden = layer(hidden, attention_mask=ext)[0]
        return hidden

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The frozen part: (N, L) -> (N, L, H) hidden states, or (N, H) pooled when nothing is fine-tuned."""
        hidden = self.lm.embeddings(input_ids=input_ids)                          # (N, L, H)
        hidden = self._layers(hidden, attention_mask, self.lm.encoder.layer[: self.n_frozen])
        if self.n_frozen == len(self.lm.encoder.layer):
            return self.pool(hidden, attention_mask)                              # (N, H)
        return hidden

    def upper(self, lower_out: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The trainable part: output of ``lower`` -> (N, D) item vectors."""
        if lower_out.dim() == 3:
            hidden = self._layers(lower_out, attention_mask, self.lm.encoder.layer[self.n_frozen:])
            pooled = self.pool(hidden, attention_mask)                            # (N, H)
        else:
            pooled = lower_out                                                    # (N, H)
        return self.proj(pooled)                                                  # (N, D)

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean pooling + L2 norm, as sentence-transformers does for all-MiniLM-L6-v2."""
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)                         # (N, L, 1)
        summed = (hidden * m).sum(1)                                              # (N, H)
        pooled = summed / m.sum(1).clamp(min=1e-9)                                # (N, H)
        return F.normalize(pooled, p=2.0, dim=-1, eps=1e-12)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.upper(self.lower(input_ids, attention_mask), attention_mask)  # (N, D)

    def upper_rows(self, cache: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor,
                   batch_size: int = 256) -> torch.Tensor:
        """The trainable part for cache ``rows`` (outputs of ``lower``) -> (len(rows), D), with gradients.

        With fine-tuned layers the cache holds (N, max_length, H) hidden states; running the top layers
        over all max_length positions would spend ~3x the work on padding (ml-100k titles: median 8 of
        32 tokens), so the rows run in length-sorted chunks, each cut to its own longest text (the one
        length-sorted batching of genrec.core.text). Padding is masked out of attention and pooling, so the
        vectors are those of the full width.
        """
        from genrec.core.text import length_sorted_batches

        if mask is None:
            return self.upper(cache[rows].float(), None)                          # (R, D) pooled cache
        row_mask = mask[rows]                                                     # (R, L)
        out = None
        for idx, width in length_sorted_batches(row_mask.numpy(), batch_size):
            sel = torch.from_numpy(idx)
            vec = self.upper(cache[:, :width][rows[sel]].float(), row_mask[sel, :width])   # (b, D)
            if out is None:
                out = vec.new_zeros(len(rows), vec.shape[1])
            out = out.index_copy(0, sel, vec)
        return out if out is not None else torch.zeros(0, self.cfg.dim)


class AdditiveAttention(nn.Module):
    """PLM-NR / NRMS additive attention: a_h = softmax_h(q . tanh(W x_h + b)), masked."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.query = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x (B, H, D), mask (B, H) bool -> weights (B, H), rows sum to 1 over valid positions
        scores = self.query(torch.tanh(self.proj(x))).squeeze(-1)                 # (B, H)
        scores = scores.masked_fill(~mask, MASK_FILL)
        return torch.softmax(scores, dim=-1)


class RecommenderHeads(nn.Module):
    """Item vectors + categories of one or more users -> click logits, auxiliary outputs, explanations.

    A learned *sentinel* history slot is prepended to every history: it keeps attention and reductions
    well defined when H = 0 (a cold user then gets the sentinel as its user vector) and carries the
    prior part of the match score. Explanations cover the real history items only.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.cfg = cfg
        self.cat_emb = nn.Embedding(cfg.n_categories, d)
        self.sub_emb = nn.Embedding(cfg.n_subcategories, d)
        self.item_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.sentinel = nn.Parameter(torch.randn(d) * 0.02)
        self.attention = AdditiveAttention(d, cfg.attention_hidden)
        self.feature_mlp = nn.Sequential(nn.Linear(len(FEATURE_NAMES), cfg.feature_hidden), nn.GELU(),
                                         nn.Linear(cfg.feature_hidden, 1))
        # Wide term (as in Wide & Deep): linear in the same features. With ModelConfig.baseline_init it starts
        # as the strongest simple baseline (set_stats_transform) and the deep feature MLP starts at zero.
        self.wide = nn.Linear(len(FEATURE_NAMES), 1, bias=False)
        # The match term's scale (ReZero-style): ModelConfig.match_init, 0 by default, so that with baseline_init the
        # click logit starts exactly at the baseline and the user-item match earns its weight from the data
        self.match_scale = nn.Parameter(torch.tensor(float(cfg.match_init)))
        nn.init.zeros_(self.wide.weight)
        if cfg.baseline_init:
            nn.init.zeros_(self.feature_mlp[-1].weight)
            nn.init.zeros_(self.feature_mlp[-1].bias)
        self.category_head = nn.Linear(d, cfg.n_categories)   # aux: item category from its text vector
        self.topic_head = nn.Linear(d, cfg.n_categories)      # aux: category of the user's next click
        nn.init.normal_(self.cat_emb.weight, std=0.02)
        nn.init.normal_(self.sub_emb.weight, std=0.02)
        # Item-statistics transform, fitted on the training log (set_stats_transform) and saved with the
        # weights: the Beta prior of CTR, and mean/std that standardize the item features.
        self.register_buffer("stats_prior", torch.tensor([1.0, 1.0]))
        self.register_buffer("stats_mean", torch.zeros(N_ITEM_FEATURES))
        self.register_buffer("stats_std", torch.ones(N_ITEM_FEATURES))
        # the ctr_popularity baseline as a logit over the standardized item features (baseline_logit): the wide
        # term's start, one logit per standard deviation of CTR
        self.register_buffer("baseline_weight", torch.zeros(N_ITEM_FEATURES))

    @torch.no_grad()
    def set_stats_transform(self, alpha: float, beta: float, sample_stats: torch.Tensor) -> None:
        """Fit the item-feature transform: CTR prior Beta(alpha, beta), standardization over ``sample_stats``
        (M, S) raw counts as the model will see them in training."""
        self.stats_prior.copy_(torch.tensor([alpha, beta], dtype=self.stats_prior.dtype))
        raw = self._raw_item_features(sample_stats.reshape(-1, N_STATS).float())     # (M, 3)
        self.stats_mean.copy_(raw.mean(0))
        self.stats_std.copy_(raw.std(0).clamp(min=1e-3))
        # the wide term's start: smoothed CTR + CTR_POPULARITY_WEIGHT * log(1 + popularity) (the ctr_popularity
        # baseline of `genrec evaluate`), baseline_init logits per standard deviation of CTR
        self.wide.weight.zero_()
        self.baseline_weight.zero_()
        self.baseline_weight[RAW_CTR] = 1.0
        self.baseline_weight[RAW_POPULARITY] = (CTR_POPULARITY_WEIGHT * self.stats_std[RAW_POPULARITY]
                                                / self.stats_std[RAW_CTR])
        if self.cfg.baseline_init and self.cfg.item_stats:
            t = self.cfg.baseline_init
            self.wide.weight[0, FEATURE_NAMES.index("item_ctr")] = t * self.baseline_weight[RAW_CTR]
            self.wide.weight[0, FEATURE_NAMES.index("item_log_popularity")] = t * self.baseline_weight[RAW_POPULARITY]
        if self.cfg.baseline_init:          # ModelConfig.overlap_init: new items start ranked by category overlap
            self.wide.weight[0, FEATURE_NAMES.index("category_overlap")] = self.cfg.overlap_init

    def _raw_item_features(self, stats: torch.Tensor) -> torch.Tensor:
        # (..., S) raw counts -> (..., 3): log1p(exposures), log1p(clicks + history users), smoothed CTR
        exposures, clicks, history_users = stats[..., :N_COUNTS].unbind(-1)
        a, b = self.stats_prior[0], self.stats_prior[1]
        ctr = (clicks + a) / (exposures + a + b)
        return torch.stack([torch.log1p(exposures), torch.log1p(clicks + history_users), ctr], dim=-1)

    def item_features(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., S) raw counts -> ((..., 3) standardized item features, (...,) 1.0 where the item has counts)."""
        known = (stats[..., :N_COUNTS].sum(-1) > 0).to(stats.dtype)
        feats = (self._raw_item_features(stats) - self.stats_mean) / self.stats_std
        if not self.cfg.item_stats:                 # ablation: the model is blind to item statistics
            return torch.zeros_like(feats), torch.zeros_like(known)
        return feats, known

    def baseline_logit(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., S) raw counts -> ((...,) the ctr_popularity baseline as a logit, (...,) 1.0 where known)."""
        feats, known = self.item_features(stats)
        return feats @ self.baseline_weight.to(feats.dtype), known

    def item_repr(self, vec: torch.Tensor, cat: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
        # vec (B, N, D), cat/sub (B, N) -> (B, N, D)
        return self.item_norm(self.dropout(vec) + self.cat_emb(cat) + self.sub_emb(sub))

    def user_encoder(self, hist_vec: torch.Tensor, hist_mask: torch.Tensor, hist_cat: torch.Tensor,
                     hist_sub: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hist_* (B, H[, D]) with hist_mask (B, H) bool -> (user (B, D), attention weights (B, 1+H), history
        representations (B, 1+H, D)), the sentinel slot first. The user vector of the click logit's match term
        ``user . item_repr / sqrt(D)``: also what retrieval searches with (genrec.core.retrieval)."""
        b, _, d = hist_vec.shape
        # prepend the sentinel slot: index 0 of the history axis
        sentinel = self.sentinel.to(hist_vec.dtype).expand(b, 1, d)               # (B, 1, D)
        always = torch.ones_like(sentinel[..., 0], dtype=torch.bool)              # (B, 1); H may be 0
        attn_mask = torch.cat([always, hist_mask], 1)                             # (B, 1+H)
        hist = torch.cat([sentinel, self.item_repr(hist_vec, hist_cat, hist_sub)], dim=1)  # (B, 1+H, D)
        weights = self.attention(hist, attn_mask)                                 # (B, 1+H)
        return (weights.unsqueeze(-1) * hist).sum(1), weights, hist

    def retrieval(self, item_vectors: torch.Tensor, category: torch.Tensor,
                  subcategory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """item_vectors (N, D), category/subcategory (N,) -> (item_repr (N, D), user_vector (D,)): the retrieval
        vectors of the N items, and the user vector of a user whose history is these N items (N = 0: the
        sentinel, a cold user). The retrieval score ``user . item_repr / sqrt(D)`` is the click logit's match term."""
        v, c, s = item_vectors.unsqueeze(0), category.unsqueeze(0), subcategory.unsqueeze(0)
        user, _, hist = self.user_encoder(v, torch.ones_like(c, dtype=torch.bool), c, s)
        return hist[0, 1:], user[0] * self.match_scale

    def features(self, hist_vec: torch.Tensor, hist_mask: torch.Tensor, hist_cat: torch.Tensor,
                 hist_sub: torch.Tensor, cand_vec: torch.Tensor, cand_cat: torch.Tensor, cand_sub: torch.Tensor,
                 hist_stats: torch.Tensor, cand_stats: torch.Tensor, profile: torch.Tensor | None = None,
                 leave_one_out: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Engineered features (B, C, len(FEATURE_NAMES)); the single implementation, exported in heads.onnx.

        hist_* (B, H[, D|S]) with hist_mask (B, H) bool (H may be 0); cand_* (B, C[, D|S]); profile (B, K)
        topic weights over the categories (zeros or None = no profile).
        Every history feature is a function of sums over the history (and maxima), so with ``leave_one_out``
        the features each candidate would get *without* history item h come out exactly, in closed form:
        (B, C, H, F), the second return value (None otherwise).
        """
        if profile is None:
            profile = cand_vec.new_zeros(cand_vec.shape[0], self.cfg.n_categories)
        vf = hist_mask.unsqueeze(1).to(cand_vec.dtype)                            # (B, 1, H)
        sim = F.normalize(cand_vec, dim=-1) @ F.normalize(hist_vec, dim=-1).transpose(1, 2)  # (B, C, H)
        same_cat = ((cand_cat.unsqueeze(-1) == hist_cat.unsqueeze(1)) & (cand_cat.unsqueeze(-1) > 0)).to(vf.dtype)
        same_sub = ((cand_sub.unsqueeze(-1) == hist_sub.unsqueeze(1)) & (cand_sub.unsqueeze(-1) > 0)).to(vf.dtype)
        cand_item, cand_known = self.item_features(cand_stats)                    # (B, C, 3), (B, C)
        hist_item, _ = self.item_features(hist_stats)                             # (B, H, 3)
        hist_item = hist_item * vf.transpose(1, 2)                                # (B, H, 3), 0 on padding
        # collaborative vectors: cosine of the candidate's with each history item's, where both have one
        cand_cf, cand_cf_known = self.cf_vectors(cand_stats)                      # (B, C, R), (B, C)
        hist_cf, hist_cf_known = self.cf_vectors(hist_stats)                      # (B, H, R), (B, H)
        cf_pair = cand_cf_known.unsqueeze(-1) * hist_cf_known.unsqueeze(1) * vf   # (B, C, H) 1 = comparable
        cf_sim = (cand_cf @ hist_cf.transpose(1, 2)) * cf_pair                    # (B, C, H)

        # per history item terms (B, C, H) and their sums over the history
        terms = {"n": vf.expand_as(sim), "sim": sim * vf, "cat": same_cat * vf, "sub": same_sub * vf,
                 "cf_n": cf_pair, "cf_sim": cf_sim}
        sums = {k: v.sum(-1) for k, v in terms.items()}                           # (B, C)
        item_sum = hist_item.sum(1, keepdim=True)                                 # (B, 1, 3)
        # maxima (and the runners-up, for leave-one-out); two -1 floors keep H = 0 and 1 defined
        floor = -torch.ones_like(cand_vec[..., :2])                               # (B, C, 2) (D >= 2)
        top2 = {}
        for key, valid, val in (("sim", vf, sim), ("cf_sim", cf_pair, cf_sim)):
            masked = torch.cat([val.masked_fill(valid == 0, -1.0), floor], -1)    # (B, C, H + 2)
            top2[key] = torch.topk(masked, 2, dim=-1)                             # values, indices (B, C, 2)

        maxima = {k: v.values[..., 0] for k, v in top2.items()}
        prof = self.profile_features(profile, cand_cat)                           # (B, C, 2)
        full = torch.cat([self._assemble(sums, maxima, item_sum, cand_item, cand_known, cand_cf_known), prof],
                         -1)                                                      # (B, C, F)
        if not leave_one_out:
            return full, None
        h = sim.shape[-1]
        loo_max = {}
        for key, (val, idx) in top2.items():
            is_top = (torch.arange(h, device=sim.device) == idx[..., :1]).to(sim.dtype)  # (B, C, H) h is the max
            loo_max[key] = is_top * val[..., 1:] + (1 - is_top) * val[..., :1]   # (B, C, H)
        loo = self._assemble({k: sums[k].unsqueeze(-1) - terms[k] for k in terms}, loo_max,
                             item_sum.unsqueeze(2) - hist_item.unsqueeze(1),      # (B, 1, H, 3)
                             cand_item.unsqueeze(2), cand_known.unsqueeze(-1), cand_cf_known.unsqueeze(-1))
        loo = torch.cat([loo, prof.unsqueeze(2).expand(*loo.shape[:-1], prof.shape[-1])], -1)   # profile: no history
        return full, loo                                                          # (B, C, H, F)

    def feature_term(self, feats: torch.Tensor) -> torch.Tensor:
        """Features (..., F) -> their part of the click logit (...,): deep MLP + wide linear term."""
        return (self.feature_mlp(feats) + self.wide(feats)).squeeze(-1)

    def profile_features(self, profile: torch.Tensor, cand_cat: torch.Tensor) -> torch.Tensor:
        """profile (B, K) topic weights in [0, 1] (zeros = no profile), cand_cat (B, C) -> (B, C, 2): the weight of
        each candidate's category in the profile, and 1.0 where the user has a profile. Zeros when the model is
        blind to profiles (ModelConfig.profiles off)."""
        match = torch.gather(profile, 1, cand_cat)                                # (B, C)
        known = (profile.sum(-1, keepdim=True) > 0).to(profile.dtype).expand_as(match)
        out = torch.stack([match, known], -1)
        return out if self.cfg.profiles else torch.zeros_like(out)

    @staticmethod
    def cf_vectors(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., S) -> ((..., R) unit collaborative vectors, (...,) 1.0 where the item has one)."""
        raw = stats[..., N_COUNTS:]
        known = (raw.abs().sum(-1) > 0).to(stats.dtype)
        return F.normalize(raw, dim=-1, eps=1e-6), known

    def _assemble(self, sums: dict[str, torch.Tensor], maxima: dict[str, torch.Tensor], item_sum: torch.Tensor,
                  cand_item: torch.Tensor, cand_known: torch.Tensor, cand_cf_known: torch.Tensor) -> torch.Tensor:
        """History sums and maxima (shape X) -> features (X, F); item_sum/cand_item (X', 3) broadcast against X."""
        n = sums["n"]
        denom = n.clamp(min=1.0)
        has_hist = (n > 0).to(n.dtype)
        has_cf = (sums["cf_n"] > 0).to(n.dtype)
        log_len = torch.log1p(n) / math.log1p(self.cfg.max_history)
        hist_mean = item_sum / denom.unsqueeze(-1)                                # (X, 3)
        vs_hist = (cand_item[..., 1:] - hist_mean[..., 1:]) * has_hist.unsqueeze(-1)  # (X, 2) popularity, CTR
        history = torch.stack([maxima["sim"] * has_hist, sums["sim"] / denom, sums["cat"] / denom,
                               sums["sub"] / denom, log_len, 1.0 - has_hist], dim=-1)  # (X, 6)
        shape = history.shape[:-1]
        collaborative = torch.stack([maxima["cf_sim"] * has_cf, sums["cf_sim"] / sums["cf_n"].clamp(min=1.0),
                                     cand_cf_known.expand(shape)], dim=-1)        # (X, 3)
        if not (self.cfg.item_stats and self.cfg.collaborative):   # ablations: blind to collaborative vectors
            collaborative = torch.zeros_like(collaborative)
        return torch.cat([history, cand_item.expand(*shape, cand_item.shape[-1]),
                          cand_known.unsqueeze(-1).expand(*shape, 1), vs_hist, collaborative], dim=-1)

    def forward(self, hist_vec: torch.Tensor, hist_mask: torch.Tensor, hist_cat: torch.Tensor,
                hist_sub: torch.Tensor, cand_vec: torch.Tensor, cand_cat: torch.Tensor,
                cand_sub: torch.Tensor, hist_stats: torch.Tensor, cand_stats: torch.Tensor,
                profile: torch.Tensor | None = None, explain: bool = True) -> dict[str, torch.Tensor]:
        """hist_vec (B, H, D), hist_mask (B, H) bool, hist_cat/sub (B, H) int64, hist_stats (B, H, S),
        cand_vec (B, C, D), cand_cat/sub (B, C) int64, cand_stats (B, C, S), profile (B, K) (None = no profile)
        -> dict of outputs (see keys below).

        ``explanation`` (B, C, H): how much candidate c's click logit would fall if history item h were not
        in the history (exact leave-one-out, not an approximation); ``explain=False`` skips it (training).
        """
        d = cand_vec.shape[-1]
        user, weights, hist = self.user_encoder(hist_vec, hist_mask, hist_cat, hist_sub)  # (B, D), (B, 1+H), ..
        cand = self.item_repr(cand_vec, cand_cat, cand_sub)                       # (B, C, D)
        pair = cand @ hist.transpose(1, 2) / math.sqrt(d)                         # (B, C, 1+H)
        contrib = pair * (weights * self.match_scale).unsqueeze(1)                # (B, C, 1+H)
        match = contrib.sum(-1)                                 # (B, C) == match_scale user . cand / sqrt(D)

        feats, loo_feats = self.features(hist_vec, hist_mask, hist_cat, hist_sub, cand_vec, cand_cat, cand_sub,
                                         hist_stats, cand_stats, profile, leave_one_out=explain)
        click_logit = match + self.feature_term(feats)                            # (B, C)
        out = {"click_logit": click_logit}                # (B, C) primary score, ranked on
        if explain:
            # Exact leave-one-out: the click logit each candidate would get without history item h. Attention
            # renormalizes over the rest (w_j / (1 - w_h)), the features come from features(leave_one_out).
            w_h = weights[:, 1:].unsqueeze(1)                                     # (B, 1, H)
            loo_match = (match.unsqueeze(-1) - contrib[:, :, 1:]) / (1.0 - w_h)   # (B, C, H)
            loo_logit = loo_match + self.feature_term(loo_feats)                  # (B, C, H)
            mask = hist_mask.unsqueeze(1).to(click_logit.dtype)
            out["explanation"] = (click_logit.unsqueeze(-1) - loo_logit) * mask   # (B, C, H)

        topic_logits = self.topic_head(user)                                      # (B, K)
        topic_prob = torch.softmax(topic_logits, -1)
        out["topic_affinity"] = torch.gather(topic_prob, 1, cand_cat)             # (B, C) P(next click's cat)
        cand_cat_prob = torch.softmax(self.category_head(cand_vec), -1)           # (B, C, K)
        out["category_confidence"] = torch.gather(cand_cat_prob, 2, cand_cat.unsqueeze(-1)).squeeze(-1)  # (B, C)
        out["topic_logits"] = topic_logits                # (B, K) for the topic loss
        out["user"] = user * self.match_scale             # (B, D) the retrieval user vector: out . item_repr = match
        return out


    def one_user(self, item_vectors: torch.Tensor, history_category: torch.Tensor,
                 history_subcategory: torch.Tensor, candidate_category: torch.Tensor,
                 candidate_subcategory: torch.Tensor, history_stats: torch.Tensor,
                 candidate_stats: torch.Tensor, user_profile: torch.Tensor) -> dict[str, torch.Tensor]:
        """One user as served: item_vectors (H + C, D) with history rows first, category ids (H,)/(C,), item
        statistics (H, S)/(C, S), profile topic weights (K,) -> {scores (C,), topic_affinity (C,),
        category_confidence (C,), explanation (C, H), user_topics (K,)}. H comes from ``history_category``'s
        length, so H = 0 needs no special input."""
        h = history_category.shape[0]
        mask = torch.ones_like(history_category, dtype=torch.bool).unsqueeze(0)  # (1, H) no padding
        out = self(item_vectors[:h].unsqueeze(0), mask, history_category.unsqueeze(0),
                   history_subcategory.unsqueeze(0), item_vectors[h:].unsqueeze(0),
                   candidate_category.unsqueeze(0), candidate_subcategory.unsqueeze(0),
                   history_stats.unsqueeze(0), candidate_stats.unsqueeze(0), user_profile.unsqueeze(0))
        return {"scores": out["click_logit"][0], "topic_affinity": out["topic_affinity"][0],
                "category_confidence": out["category_confidence"][0], "explanation": out["explanation"][0],
                "user_topics": torch.softmax(out["topic_logits"][0], dim=-1)}


@dataclasses.dataclass
class HeadsBatch:
    """B users over precomputed item vectors, padded: the inputs of ``RecommenderHeads.forward`` (shapes: the module
    docstring). Built from an item table's rows by :meth:`from_rows`; every caller that scores users in batches
    (training, validation, evaluation, full ranking, the explanation check) scores one with ``GenRec.score``."""

    hist_vec: torch.Tensor                     # (B, H, D) history item vectors
    hist_mask: torch.Tensor                    # (B, H) bool: a real history item (not padding)
    hist_cat: torch.Tensor                     # (B, H) int64 category ids (0 = unknown)
    hist_sub: torch.Tensor                     # (B, H) int64 subcategory ids
    cand_vec: torch.Tensor                     # (B, C, D) candidate item vectors
    cand_cat: torch.Tensor                     # (B, C) int64
    cand_sub: torch.Tensor                     # (B, C) int64
    hist_stats: torch.Tensor                   # (B, H, S) raw item statistics (ITEM_STATS; zeros = none)
    cand_stats: torch.Tensor                   # (B, C, S)
    profile: torch.Tensor | None = None        # (B, K) profile topic weights (None = no profile)

    @classmethod
    def from_rows(cls, vectors: torch.Tensor, category: torch.Tensor, subcategory: torch.Tensor,
                  history: torch.Tensor, candidates: torch.Tensor, history_stats: torch.Tensor,
                  candidate_stats: torch.Tensor, profile: torch.Tensor | None = None,
                  history_mask: torch.Tensor | None = None) -> HeadsBatch:
        """``vectors`` (N, D) and ``category``/``subcategory`` (N,) per item row; ``history`` (B, H) and
        ``candidates`` (B, C) rows into them. ``history_mask`` defaults to ``history > 0`` (row 0 of an item table
        is the padding item)."""
        mask = history > 0 if history_mask is None else history_mask
        return cls(vectors[history], mask, category[history], subcategory[history], vectors[candidates],
                   category[candidates], subcategory[candidates], history_stats, candidate_stats, profile)


class GenRec(nn.Module):
    """Item encoder + heads: the whole model as trained and checkpointed, and the one place that composes them.

    ``forward`` is the model as served for one user (the contract's order): tokenized history then candidate
    texts -> ``item_vectors`` -> ``score_user``. The export writes its parts as graphs (encoder: ``item_vectors``;
    heads: ``score_user``; retrieval: ``retrieval``), the parity gates replay them in PyTorch through these
    methods, training runs ``cached_item_vectors`` (the trainable top over cached LM outputs) and ``score`` over
    batches, evaluation ``score`` over precomputed vectors, the benchmarks' PyTorch anchor ``forward``.
    """

    def __init__(self, cfg: ModelConfig, lm_config: dict):
        super().__init__()
        self.cfg = cfg
        self.encoder = ItemEncoder(cfg, lm_config)
        self.heads = RecommenderHeads(cfg)

    # ---- the encoder side: item texts -> item vectors

    def item_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Tokenized item texts (N, L) -> item vectors (N, D): the encoder graph."""
        return self.encoder(input_ids, attention_mask)

    def cached_item_vectors(self, cache: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None = None,
                            batch_size: int = 256) -> torch.Tensor:
        """Item vectors (R, D) of cache ``rows`` (all rows when None) from cached outputs of the frozen LM
        (``genrec.scoring.encode_lower``), with gradients through the trainable part."""
        rows = torch.arange(len(cache)) if rows is None else rows
        return self.encoder.upper_rows(cache, mask, rows, batch_size)

    # ---- the heads side, over precomputed item vectors

    def score(self, batch: HeadsBatch, explain: bool = True) -> dict[str, torch.Tensor]:
        """B users -> ``RecommenderHeads.forward`` outputs (click_logit, explanation, topic_affinity,
        category_confidence, topic_logits, user); ``explain=False`` skips the explanations (training)."""
        return self.heads(batch.hist_vec, batch.hist_mask, batch.hist_cat, batch.hist_sub, batch.cand_vec,
                          batch.cand_cat, batch.cand_sub, batch.hist_stats, batch.cand_stats, batch.profile,
                          explain=explain)

    def score_user(self, item_vectors: torch.Tensor, history_category: torch.Tensor,
                   history_subcategory: torch.Tensor, candidate_category: torch.Tensor,
                   candidate_subcategory: torch.Tensor, history_stats: torch.Tensor, candidate_stats: torch.Tensor,
                   user_profile: torch.Tensor) -> dict[str, torch.Tensor]:
        """One user as served over precomputed vectors (H + C, D), history rows first: the heads graph's contract
        (``genrec.core.contract.HEADS``), outputs keyed by its output names."""
        return self.heads.one_user(item_vectors, history_category, history_subcategory, candidate_category,
                                   candidate_subcategory, history_stats, candidate_stats, user_profile)

    def retrieval(self, item_vectors: torch.Tensor, category: torch.Tensor,
                  subcategory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) item vectors -> (their retrieval vectors (N, D), the user vector (D,) of a user with that
        history): the retrieval graph."""
        return self.heads.retrieval(item_vectors, category, subcategory)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, history_category: torch.Tensor,
                history_subcategory: torch.Tensor, candidate_category: torch.Tensor,
                candidate_subcategory: torch.Tensor, history_stats: torch.Tensor,
                candidate_stats: torch.Tensor, user_profile: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """input_ids/attention_mask (H + C, L), history rows first -> ``score_user`` outputs (``user_profile``
        None = no profile)."""
        if user_profile is None:
            user_profile = history_stats.new_zeros(self.cfg.n_categories)
        return self.score_user(self.item_vectors(input_ids, attention_mask), history_category, history_subcategory,
                               candidate_category, candidate_subcategory, history_stats, candidate_stats,
                               user_profile)


def load_pretrained_lm(encoder: ItemEncoder) -> None:
    """Copy the packaged MiniLM weights into ``encoder.lm`` (offline, from site-packages)."""
    from safetensors.torch import load_file

    from genrec.core.text import minilm_dir

    state = load_file(str(minilm_dir() / "model.safetensors"))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    missing, unexpected = encoder.lm.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    unexpected = [k for k in unexpected if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"MiniLM weights do not match the model: missing={missing} unexpected={unexpected}")
