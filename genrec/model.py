"""The genrec model: pretrained-LM item encoder, engineered features, attention user encoder and
multi-task fusion heads (GENRE / ONCE-style, PLM-NR user encoder).

Two modules, exported separately (see ``genrec.export``):

* :class:`ItemEncoder` -- MiniLM (all-MiniLM-L6-v2) -> masked mean pooling -> L2 norm -> trainable
  projection to D. With ``finetune_layers = k`` only the top k transformer layers train; the output of
  the frozen part is cached once (``lower``), so CPU training stays fast.
* :class:`RecommenderHeads` -- everything after item text vectors: category/subcategory embeddings,
  engineered features, additive-attention user encoder, click head and auxiliary task heads.

Tensor shapes: B users, H history items, C candidates, D vector size, L tokens, K categories.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import ModelConfig  # noqa: F401  (re-exported)

MASK_FILL = -1e4   # additive-mask value; finite so the FP16 graph cannot produce inf - inf = NaN

# Engineered per-candidate features, in the order of the last axis of RecommenderHeads.features().
FEATURE_NAMES = ("max_similarity", "mean_similarity", "category_overlap", "subcategory_overlap",
                 "log_history_length", "cold_user")

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
        self.category_head = nn.Linear(d, cfg.n_categories)   # aux: item category from its text vector
        self.topic_head = nn.Linear(d, cfg.n_categories)      # aux: category of the user's next click
        nn.init.normal_(self.cat_emb.weight, std=0.02)
        nn.init.normal_(self.sub_emb.weight, std=0.02)

    def item_repr(self, vec: torch.Tensor, cat: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
        # vec (B, N, D), cat/sub (B, N) -> (B, N, D)
        return self.item_norm(self.dropout(vec) + self.cat_emb(cat) + self.sub_emb(sub))

    @staticmethod
    def features(hist_vec: torch.Tensor, hist_mask: torch.Tensor, hist_cat: torch.Tensor, hist_sub: torch.Tensor,
                 cand_vec: torch.Tensor, cand_cat: torch.Tensor, cand_sub: torch.Tensor) -> torch.Tensor:
        """Engineered features (B, C, len(FEATURE_NAMES)); the single implementation, exported in heads.onnx.

        hist_* (B, H[, D]) with hist_mask (B, H) bool (H may be 0); cand_* (B, C[, D]).
        """
        valid = hist_mask.unsqueeze(1)                                            # (B, 1, H)
        vf = valid.to(cand_vec.dtype)
        n_hist = vf.sum(-1)                                                       # (B, 1)
        denom = n_hist.clamp(min=1.0)
        has_hist = (n_hist > 0).to(cand_vec.dtype)                                # (B, 1)
        sim = F.normalize(cand_vec, dim=-1) @ F.normalize(hist_vec, dim=-1).transpose(1, 2)  # (B, C, H)
        floor = -torch.ones_like(cand_vec[..., :1])                               # (B, C, 1): keeps H = 0 defined
        max_sim = torch.cat([sim.masked_fill(~valid, -1.0), floor], -1).amax(-1) * has_hist  # (B, C)
        mean_sim = (sim * vf).sum(-1) / denom                                     # (B, C)
        same_cat = (cand_cat.unsqueeze(-1) == hist_cat.unsqueeze(1)) & (cand_cat.unsqueeze(-1) > 0)  # (B, C, H)
        same_sub = (cand_sub.unsqueeze(-1) == hist_sub.unsqueeze(1)) & (cand_sub.unsqueeze(-1) > 0)
        cat_overlap = (same_cat.to(vf.dtype) * vf).sum(-1) / denom                # (B, C)
        sub_overlap = (same_sub.to(vf.dtype) * vf).sum(-1) / denom                # (B, C)
        log_len = (torch.log1p(n_hist) / math.log1p(50.0)).expand_as(max_sim)     # (B, C)
        cold = (1.0 - has_hist).expand_as(max_sim)                                # (B, C)
        return torch.stack([max_sim, mean_sim, cat_overlap, sub_overlap, log_len, cold], dim=-1)

    def forward(self, hist_vec: torch.Tensor, hist_mask: torch.Tensor, hist_cat: torch.Tensor,
                hist_sub: torch.Tensor, cand_vec: torch.Tensor, cand_cat: torch.Tensor,
                cand_sub: torch.Tensor) -> dict[str, torch.Tensor]:
        """hist_vec (B, H, D), hist_mask (B, H) bool, hist_cat/sub (B, H) int64,
        cand_vec (B, C, D), cand_cat/sub (B, C) int64 -> dict of outputs (see keys below)."""
        b, _, d = cand_vec.shape
        # prepend the sentinel slot: index 0 of the history axis
        sentinel = self.sentinel.to(cand_vec.dtype).expand(b, 1, d)               # (B, 1, D)
        always = torch.ones_like(cand_cat[:, :1], dtype=torch.bool)               # (B, 1); C >= 1, H may be 0
        attn_mask = torch.cat([always, hist_mask], 1)                             # (B, 1+H)

        hist = torch.cat([sentinel, self.item_repr(hist_vec, hist_cat, hist_sub)], dim=1)  # (B, 1+H, D)
        cand = self.item_repr(cand_vec, cand_cat, cand_sub)                       # (B, C, D)

        weights = self.attention(hist, attn_mask)                                 # (B, 1+H)
        user = (weights.unsqueeze(-1) * hist).sum(1)                              # (B, D)
        pair = cand @ hist.transpose(1, 2) / math.sqrt(d)                         # (B, C, 1+H)
        contrib = pair * weights.unsqueeze(1)                                     # (B, C, 1+H)
        match = contrib.sum(-1)                                                   # (B, C) == user . cand / sqrt(D)

        feats = self.features(hist_vec, hist_mask, hist_cat, hist_sub, cand_vec, cand_cat, cand_sub)  # (B, C, F)
        click_logit = match + self.feature_mlp(feats).squeeze(-1)                 # (B, C)

        topic_logits = self.topic_head(user)                                      # (B, K)
        topic_prob = torch.softmax(topic_logits, -1)
        topic_affinity = torch.gather(topic_prob, 1, cand_cat)                    # (B, C)
        cand_cat_prob = torch.softmax(self.category_head(cand_vec), -1)           # (B, C, K)
        category_confidence = torch.gather(cand_cat_prob, 2, cand_cat.unsqueeze(-1)).squeeze(-1)  # (B, C)
        return {
            "click_logit": click_logit,                 # (B, C) primary score, ranked on
            "topic_affinity": topic_affinity,           # (B, C) P(next click's category = candidate's)
            "category_confidence": category_confidence, # (B, C) P(candidate's stated category | its text)
            "explanation": contrib[:, :, 1:],           # (B, C, H) history item h's share of the match logit
            "topic_logits": topic_logits,               # (B, K) for the topic loss
            "user": user,                               # (B, D)
        }


class GenRec(nn.Module):
    """Item encoder + heads; the whole model as trained and checkpointed."""

    def __init__(self, cfg: ModelConfig, lm_config: dict):
        super().__init__()
        self.cfg = cfg
        self.encoder = ItemEncoder(cfg, lm_config)
        self.heads = RecommenderHeads(cfg)


def load_pretrained_lm(encoder: ItemEncoder) -> None:
    """Copy the packaged MiniLM weights into ``encoder.lm`` (offline, from site-packages)."""
    from safetensors.torch import load_file

    from genrec.text import minilm_dir

    state = load_file(str(minilm_dir() / "model.safetensors"))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    missing, unexpected = encoder.lm.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    unexpected = [k for k in unexpected if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"MiniLM weights do not match the model: missing={missing} unexpected={unexpected}")
