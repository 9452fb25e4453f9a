"""Evaluation on a labelled MIND folder: ranking metrics, per-task metrics and a popularity baseline.

Entry point: ``evaluate(checkpoint, data_dir, EvalConfig) -> dict``. Items are encoded with the full
PyTorch model from the checkpoint (items unseen in training included), then every impression is
scored with its whole candidate list. With ``full_ranking`` every impression with clicks is also ranked
against the whole catalog (:func:`full_ranking`): the retrieval use-case, where no candidate list exists.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.checkpoint import Checkpoint
from genrec.config import EvalConfig  # noqa: F401  (re-exported)
from genrec.core.contract import N_COUNTS
from genrec.core.mind import load_split
from genrec.core.stats import CLICKS, CTR_POPULARITY_WEIGHT, EXPOSURES, HISTORY_USERS, BetaPrior, ItemStats
from genrec.metrics import pair_group_auc, ranking_metrics, topk_metrics
from genrec.model import GenRec, HeadsBatch
from genrec.scoring import encode_items, score_impressions
from genrec.tables import ImpressionArrays, ItemTable


def baseline_scores(imps: ImpressionArrays, table: ItemTable, prior: BetaPrior,
                    seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Simple baselines' scores on the very impressions the model is scored on (ties count 1/2 in AUC).

    random: seeded uniform; popularity: training clicks + history users; smoothed_ctr: (clicks + alpha) /
    (exposures + alpha + beta) with the Beta prior fitted on the training log; ctr_popularity: smoothed_ctr +
    CTR_POPULARITY_WEIGHT (0.05) log(1 + popularity), the strongest simple combination of the ml-100k data
    README; category_overlap: share of the user's history in the candidate's category, subcategory share as
    the tie-breaker.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {"random": [], "popularity": [], "smoothed_ctr": [], "ctr_popularity": [],
                                        "category_overlap": []}
    for i, cands in enumerate(imps.candidates):
        st = imps.candidate_stats[i].astype(np.float64)                           # (C, S)
        hist = imps.history[i][imps.history[i] > 0]
        out["random"].append(rng.random(len(cands)))
        out["popularity"].append(st[:, CLICKS] + st[:, HISTORY_USERS])
        out["smoothed_ctr"].append((st[:, CLICKS] + prior.alpha) / (st[:, EXPOSURES] + prior.alpha + prior.beta))
        out["ctr_popularity"].append(out["smoothed_ctr"][-1] + CTR_POPULARITY_WEIGHT * np.log1p(out["popularity"][-1]))
        n = max(1, len(hist))
        same_cat = (table.category[cands][:, None] == table.category[hist][None, :]).sum(1) / n
        same_sub = (table.subcategory[cands][:, None] == table.subcategory[hist][None, :]).sum(1) / n
        out["category_overlap"].append(same_cat + 1e-3 * same_sub)
    return out


@torch.no_grad()
def explanation_metrics(model: GenRec, vectors: torch.Tensor, table: ItemTable, imps: ImpressionArrays,
                        explanations: list[np.ndarray], n_impressions: int, seed: int = 0) -> dict[str, Any]:
    """Are explanations faithful, and do they make sense? Measured by re-scoring, not by trusting them.

    For every candidate of up to ``n_impressions`` impressions with >= 2 history items: remove the top-explained
    history item and, separately, a random one, and re-score through the model.
    faithfulness = mean score drop (top-explained) / mean |drop| (random): > 1 means the explanation names
    what the model really used. (|drop| for the random item: its signed mean is often ~0 or negative, since
    removing an average item moves a score either way, and a ratio over ~0 says nothing.)
    category_match = share of top-explained items in the candidate's category, against the same share for the
    random item (chance).
    """
    rng = np.random.default_rng(seed)
    chosen = [i for i in range(len(imps.candidates))
              if (imps.history[i] > 0).sum() >= 2 and len(imps.candidates[i])][:n_impressions]
    if not chosen:
        return {"explanation_impressions": 0}
    cat, sub = torch.from_numpy(table.category), torch.from_numpy(table.subcategory)
    drops_top, drops_rand, match_top, match_rand = [], [], [], []
    for i in chosen:
        n_h = int((imps.history[i] > 0).sum())
        hist = torch.from_numpy(imps.history[i][:n_h])[None]                          # (1, H)
        cands = torch.from_numpy(imps.candidates[i])[None]                            # (1, C)
        c = cands.shape[1]
        top = explanations[i][:, :n_h].argmax(-1)                                     # (C,)
        rand = rng.integers(0, n_h, size=c)                                           # (C,)
        # one row per (candidate, removed item): B = 2C users of one candidate each
        drop_at = np.concatenate([top, rand])
        mask = torch.ones(2 * c, n_h, dtype=torch.bool)
        mask[torch.arange(2 * c), torch.from_numpy(drop_at)] = False
        hist_b, cand_b = hist.expand(2 * c, n_h), cands[0].repeat(2)[:, None]        # (2C, H), (2C, 1)
        h_stats = torch.from_numpy(imps.history_stats[i][:n_h])[None].expand(2 * c, n_h, -1)
        c_stats = torch.from_numpy(imps.candidate_stats[i]).repeat(2, 1)[:, None]     # (2C, 1, S)
        prof = torch.from_numpy(imps.profile[i])[None].expand(2 * c, -1) if imps.profile is not None else None
        batch = HeadsBatch.from_rows(vectors, cat, sub, hist_b, cand_b, h_stats, c_stats, prof,
                                     history_mask=torch.ones_like(mask))
        full = model.score(batch, explain=False)["click_logit"]
        less = model.score(dataclasses.replace(batch, hist_mask=mask), explain=False)["click_logit"]
        drop = (full - less)[:, 0].numpy()                                            # (2C,)
        drops_top.append(drop[:c]), drops_rand.append(drop[c:])
        cand_cat = table.category[imps.candidates[i]]
        hist_cat = table.category[imps.history[i][:n_h]]
        match_top.append((hist_cat[top] == cand_cat) & (cand_cat > 0))
        match_rand.append((hist_cat[rand] == cand_cat) & (cand_cat > 0))
    top_mean, rand_mean = float(np.concatenate(drops_top).mean()), float(np.concatenate(drops_rand).mean())
    rand_abs = float(np.abs(np.concatenate(drops_rand)).mean())
    return {"explanation_faithfulness": top_mean / rand_abs if rand_abs > 0 else None,
            "explanation_drop_top": top_mean, "explanation_drop_random": rand_mean,
            "explanation_category_match": float(np.concatenate(match_top).mean()),
            "explanation_category_match_random": float(np.concatenate(match_rand).mean()),
            "explanation_impressions": len(chosen)}


@torch.no_grad()
def full_ranking(model: GenRec, vectors: torch.Tensor, table: ItemTable, imps: ImpressionArrays, stats: ItemStats,
                 ks: tuple[int, ...] = (10, 50), retrieval_m: int = 200, popular_m: int = 0) -> dict[str, Any]:
    """Rank the *whole catalog* for every impression with clicks, exactly, in process; history items excluded.

    Targets: the impression's clicked candidates that are not in the user's history. Systems, all on the same
    users and catalog:

    * ``model``: the full heads score (match + features) of every catalog item -- the exact full ranking;
    * ``retrieve_then_rank``: what the served two-stage path computes, done exactly: the top ``retrieval_m``
      items by the retrieval score ``user . item_repr`` (the heads' match term; an ANN index approximates this
      top M) and the ``popular_m`` most popular items, re-ranked by the full heads score. A candidate's heads
      score does not depend on the other candidates, so this re-ranks the very scores of ``model``;
    * ``retrieval_only``: the retrieval score alone;
    * ``popularity``: training clicks + history users (``stats``), the same for every user.

    ``heads_top10_in_retrieval_top_m`` = share of the exact full ranking's top 10 found in the retrieval top M:
    what the first stage loses, independent of the clicks.
    """
    model.eval()
    n_items = len(table)
    rows = torch.arange(1, n_items)                                               # catalog rows (0 is padding)
    cat, sub = torch.from_numpy(table.category), torch.from_numpy(table.subcategory)
    per_row = torch.from_numpy(stats.lookup(table.ids))                           # (N, S); row 0: zeros
    per_row[0] = 0
    item_repr = model.retrieval(vectors[rows], cat[rows], sub[rows])[0]            # (N-1, D) retrieval vectors
    counts = per_row[rows].double()
    popularity = (counts[:, CLICKS] + counts[:, HISTORY_USERS]).numpy()           # (N-1,)

    users = []
    skipped = 0
    for i, cands in enumerate(imps.candidates):
        hist = imps.history[i][imps.history[i] > 0]
        targets = set(cands[imps.labels[i] == 1].tolist()) - set(hist.tolist())
        if targets:
            users.append((i, hist, targets))
        else:
            skipped += 1
    k_max = max(ks)
    m = min(retrieval_m, n_items - 1)
    ranked: dict[str, list[np.ndarray]] = {s: [] for s in ("model", "retrieve_then_rank", "retrieval_only",
                                                           "popularity")}
    covered = []
    width = imps.history.shape[1]
    batch = max(1, 2_000_000 // ((n_items - 1) * (width + 2)))                   # bounds the (B, N, H) features
    for start in range(0, len(users), batch):
        part = users[start: start + batch]
        b = len(part)
        hist = torch.from_numpy(imps.history[[i for i, _, _ in part]])            # (B, Hmax)
        h = max(1, int((hist > 0).sum(1).max()))
        hist = hist[:, :h]
        hist_stats = per_row[hist]                                                # (B, H, S)
        cand = rows.expand(b, -1)                                                 # (B, N-1)
        profile = (torch.from_numpy(imps.profile[[i for i, _, _ in part]]) if imps.profile is not None
                   else None)                                                     # (B, K)
        out = model.score(HeadsBatch.from_rows(vectors, cat, sub, hist, cand, hist_stats, per_row[cand], profile),
                          explain=False)
        score = out["click_logit"].double().numpy()                              # (B, N-1)
        retrieval = (out["user"] @ item_repr.T).double().numpy()                 # (B, N-1)
        for j, (_, hrows, _) in enumerate(part):
            seen = hrows - 1                                                      # history rows -> catalog cols
            pop = popularity.copy()
            for arr in (score[j], retrieval[j], pop):
                arr[seen] = -np.inf
            full = np.argsort(-score[j], kind="stable")
            top_m = np.argsort(-retrieval[j], kind="stable")[:m]
            by_pop = np.argsort(-pop, kind="stable")
            pool = np.union1d(top_m, by_pop[:popular_m]) if popular_m else top_m
            rerank = pool[np.argsort(-score[j][pool], kind="stable")]
            ranked["model"].append(full[:k_max] + 1)
            ranked["retrieve_then_rank"].append(rerank[:k_max] + 1)
            ranked["retrieval_only"].append(top_m[:k_max] + 1)
            ranked["popularity"].append(by_pop[:k_max] + 1)
            covered.append(np.isin(full[:10], pool).mean())
    targets = [t for _, _, t in users]
    result: dict[str, Any] = {"users": len(users), "impressions_without_new_clicks": skipped,
                              "catalog_items": n_items - 1, "retrieval_m": m, "retrieval_popular": popular_m}
    for name, lists in ranked.items():
        metrics = topk_metrics(lists, targets, ks)
        metrics.pop("users")
        result[name] = metrics
    result["heads_top10_in_retrieval_top_m"] = float(np.mean(covered)) if covered else None
    return result


def new_item_report(imps: ImpressionArrays, scores: list[np.ndarray],
                    baselines: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """The regime split: which candidates are new (no item statistics: in no impression of the statistics' log),
    their share of candidates and of clicks, and group-AUC over known/known, new/new and mixed pairs for the model
    and every baseline on the same impressions (``genrec.metrics.pair_group_auc``)."""
    new = [imps.candidate_stats[i][:, :N_COUNTS].sum(-1) == 0 for i in range(len(imps.candidates))]
    n_cand = sum(len(x) for x in new)
    n_click = sum(int(lab.sum()) for lab in imps.labels)
    out: dict[str, Any] = {
        "candidate_share": sum(int(x.sum()) for x in new) / n_cand if n_cand else 0.0,
        "click_share": sum(int(x[lab == 1].sum()) for x, lab in zip(new, imps.labels)) / n_click if n_click else 0.0,
        "model": pair_group_auc(zip(imps.labels, scores, new)),
        "baselines": {name: pair_group_auc(zip(imps.labels, s, new)) for name, s in baselines.items()},
    }
    return out


def evaluate(checkpoint: str | Path | Checkpoint, data_dir: str | Path, cfg: EvalConfig = EvalConfig(),
             *, progress: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.load(checkpoint)
    model = ckpt.build_model()
    split = load_split(data_dir, skip_bad_lines=cfg.skip_bad_lines, max_history=ckpt.model_config.max_history)
    if not split.has_labels:
        raise ValueError(f"{data_dir}/behaviors.tsv has no click labels: nothing to evaluate against")
    imps_raw = split.impressions[: cfg.max_impressions] if cfg.max_impressions else split.impressions
    gen = ckpt.model_config.cold_user_items     # the history the model was trained with: LLM items extend it
    table = ItemTable.from_news(split.news, ckpt.category_vocab, ckpt.subcategory_vocab,
                                ckpt.model_config.use_abstract, generated=imps_raw if gen else ())
    imps = ImpressionArrays.build(imps_raw, table, ckpt.model_config.max_history,
                                  categories=["", *ckpt.category_vocab.to_list()], generated=gen)
    stats = ckpt.item_stats if cfg.stats is None else ItemStats.load(cfg.stats)
    imps.attach_stats(stats, table)
    vectors, n_trunc = encode_items(model, ckpt.tokenizer(), table.texts, progress=progress)
    out = score_impressions(model, vectors, table, imps, cfg.batch_size,
                            keys=("click_logit", "topic_logits", "explanation"))
    scores = out["click_logit"]
    result: dict[str, Any] = ranking_metrics(zip(imps.labels, scores)).as_dict()

    # cold users: impressions whose history is empty
    cold = [i for i in range(len(scores)) if imps.history[i, 0] == 0]
    if cold:
        try:
            result["cold_user_group_auc"] = ranking_metrics((imps.labels[i], scores[i]) for i in cold).group_auc
        except ValueError:
            pass
    result["cold_user_impressions"] = len(cold)
    result["profile_impressions"] = sum(bool(imp.profile) for imp in imps_raw)
    result["generated_history_impressions"] = sum(bool(imp.generated) for imp in imps_raw) if gen else 0

    # auxiliary tasks
    with torch.no_grad():
        cat_pred = model.heads.category_head(vectors[1:]).argmax(-1).numpy()
    known = table.category[1:] > 0
    result["task_category_accuracy"] = (float((cat_pred[known] == table.category[1:][known]).mean())
                                        if known.any() else None)
    hits, total = 0, 0
    for i, logits in enumerate(out["topic_logits"]):
        top3 = set(np.argsort(-logits)[:3].tolist())
        clicked = table.category[imps.candidates[i][imps.labels[i] == 1]]
        hits += sum(int(c in top3) for c in clicked if c > 0)
        total += int((clicked > 0).sum())
    result["task_topic_hit@3"] = hits / total if total else None

    result.update(explanation_metrics(model, vectors, table, imps, out["explanation"], cfg.explain_impressions))

    baselines = baseline_scores(imps, table, stats.prior)
    result["baselines"] = {name: ranking_metrics(zip(imps.labels, s)).group_auc for name, s in baselines.items()}
    best = max(result["baselines"], key=result["baselines"].get)
    result["strongest_baseline"] = best
    result["margin_over_strongest_baseline"] = result["group_auc"] - result["baselines"][best]
    result["new_items"] = new_item_report(imps, scores, baselines)
    if cfg.full_ranking:
        result["full_ranking"] = full_ranking(model, vectors, table, imps, stats, cfg.full_ranking_k,
                                              cfg.retrieval_m, cfg.retrieval_popular)
    result.update({"truncated_texts": n_trunc, "missing_history_ids": imps.missing_history,
                   "missing_candidate_ids": imps.missing_candidates,
                   "seconds": round(time.perf_counter() - t0, 1)})
    return result
