"""Probe (2026-12-04, issue 26): does a new item's neighbourhood of known items in the item-vector space carry
its click rate? On the validation split of a training log, the statistics of a random 30 % of the validation
items are hidden (a launch wave); each hidden item's smoothed CTR and log popularity are imputed as the mean of
its k nearest known items (cosine of a trained default checkpoint's item vectors), and the ctr_popularity
baseline is scored with new items at the prior (what the model's start sees) vs imputed, beside category
overlap. Validation only: nothing here looks at a test split. Usage, after `genrec bench quality`:

    python benchmarks/results/quality-knn-prior-probe/probe.py WORKDIR DATASET RUN_DIR
"""
import sys

import numpy as np
import torch

import genrec.train as T
from genrec.checkpoint import Checkpoint
from genrec.config import ModelConfig, TrainConfig
from genrec.core.stats import CTR_POPULARITY_WEIGHT
from genrec.metrics import pair_group_auc, ranking_metrics
from genrec.scoring import encode_items

workdir, ds, run = sys.argv[1], sys.argv[2], sys.argv[3]
data = T.load_data(f"{workdir}/data/{ds}/train", ModelConfig(), TrainConfig(), log=lambda s: None)
ck = Checkpoint.load(run + "/checkpoint.pt")
model = ck.build_model().eval()
with torch.no_grad():
    vecs, _ = encode_items(model, ck.tokenizer(), data.table.texts)
v = torch.nn.functional.normalize(vecs, dim=-1).numpy()
n = len(data.table)
st = np.zeros((n, 3))
st[1:] = data.train_stats.lookup(data.table.ids[1:])[:, :3]          # exposures, clicks, history users
prior = data.train_stats.prior
known = st[:, :2].sum(1) > 0
rng = np.random.default_rng(123)
val_items = np.unique(np.concatenate(data.val.candidates))
hidden = np.zeros(n, bool)
cand = val_items[known[val_items]]
hidden[cand[rng.random(len(cand)) < 0.3]] = True
donors = np.where(known & ~hidden)[0]
donors = donors[donors > 0]
ctr = (st[:, 1] + prior.alpha) / (st[:, 0] + prior.alpha + prior.beta)
lpop = np.log1p(st[:, 1] + st[:, 2])
hid = np.where(hidden)[0]
sims = v[hid] @ v[donors].T
imputed = {}
for k in (5, 20, 50):
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    c_, p_ = ctr.copy(), lpop.copy()
    c_[hid], p_[hid] = ctr[donors][top].mean(1), lpop[donors][top].mean(1)
    imputed[k] = c_ + CTR_POPULARITY_WEIGHT * p_
at_prior = (np.where(hidden, prior.alpha / (prior.alpha + prior.beta), ctr)
            + CTR_POPULARITY_WEIGHT * np.where(hidden, 0.0, lpop))


def cat_overlap(i, c):
    h = data.val.history[i][data.val.history[i] > 0]
    return (data.table.category[c][:, None] == data.table.category[h][None, :]).sum(1) / max(1, len(h))


def pairs(score):
    """group-AUC over the impressions, and over their new/new and new/known (mixed) pairs (new = hidden)."""
    scores = [score(i, c) for i, c in enumerate(data.val.candidates)]
    split = pair_group_auc(zip(data.val.labels, scores, (hidden[c] for c in data.val.candidates)))
    return {"all": round(ranking_metrics(zip(data.val.labels, scores)).group_auc, 4),
            **{name: round(split[kind]["group_auc"], 4) for name, kind in (("new/new", "new"), ("mixed", "mixed"))}}


print(f"{ds}: {hidden[val_items].mean():.2f} of the validation items hidden")
print("  ctr_popularity, new items at the prior:", pairs(lambda i, c: at_prior[c]))
for k, s in imputed.items():
    print(f"  ctr_popularity, new items from {k} neighbours:", pairs(lambda i, c, s=s: s[c]))
print("  category overlap:", pairs(cat_overlap))
