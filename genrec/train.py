"""Training: negative sampling (K per click), temporal validation split, early stopping on group-AUC.

Entry point: ``train(data_dir, out_dir, ModelConfig, TrainConfig) -> TrainResult``.
Loss L = sum_t alpha_t * L_t over TASKS:
  click    -- softmax cross-entropy over 1 clicked + K sampled non-clicked candidates (MIND/NRMS)
  category -- cross-entropy of an item's category from its text vector (every item in the batch)
  topic    -- cross-entropy of the clicked item's category from the user vector
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from genrec.checkpoint import Checkpoint, provenance
from genrec.config import (
    TASKS,
    ModelConfig,
    TrainConfig,  # noqa: F401  (re-exported)
)
from genrec.core.contract import N_COUNTS
from genrec.core.mind import load_split
from genrec.core.stats import N_STATS, ItemStats
from genrec.core.text import LM_PACKAGE, minilm_dir
from genrec.core.vocab import Vocab
from genrec.metrics import auc, ranking_metrics
from genrec.model import GenRec, HeadsBatch, load_pretrained_lm
from genrec.scoring import encode_lower, score_impressions
from genrec.tables import ImpressionArrays, ItemTable


@dataclasses.dataclass
class TrainResult:
    checkpoint_path: Path
    best_epoch: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


# TrainConfig.stats_dropout's cap when it follows validation (auto): the highest rate measured (synthetic, a third of
# its candidates new: 0.5 gained); a validation split of mostly new items still trains on some statistics
NEW_ITEM_CAP = 0.5


def _set_seed(seed: int, threads: int) -> np.random.Generator:
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    return np.random.default_rng(seed)


def _sample_clicks(imps: ImpressionArrays, k: int, rng: np.random.Generator,
                   first: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch of training samples: (T,) impression index, (T, 1+K) item rows, clicked first, and their
    (T, 1+K, S) item statistics as that impression saw them."""
    imp_idx, cols = [], []
    for i, labels in enumerate(imps.labels):
        if i < first:
            continue
        pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        if len(neg) == 0:
            continue
        for p in pos:
            imp_idx.append(i)
            cols.append(np.concatenate([[p], rng.choice(neg, size=k, replace=len(neg) < k)]))
    rows = np.asarray([imps.candidates[i][c] for i, c in zip(imp_idx, cols)], dtype=np.int64).reshape(-1, k + 1)
    stats = np.asarray([imps.candidate_stats[i][c] for i, c in zip(imp_idx, cols)],
                       dtype=np.float32).reshape(-1, k + 1, N_STATS)
    return np.asarray(imp_idx, dtype=np.int64), rows, stats


def drop_stats(stats: torch.Tensor, rate: float, rng: np.random.Generator) -> torch.Tensor:
    """(B, N, S) candidate statistics with each row zeroed (= no statistics, a new item) with probability
    ``rate``: the model then learns to rank items it has no counts for from their text (DropoutNet)."""
    if not rate:
        return stats
    cold = torch.from_numpy(rng.random(stats.shape[:-1]) < rate)
    return stats.masked_fill(cold.unsqueeze(-1), 0.0)


def _parity_set(imps, table: ItemTable, cat_vocab: Vocab, sub_vocab: Vocab, n: int,
                rng: np.random.Generator) -> list[dict[str, Any]]:
    """Small held-out set the export parity gate replays through PyTorch and ONNX."""
    ok = [i for i, lab in enumerate(imps.labels) if 0 < lab.sum() < len(lab)]
    chosen = sorted(rng.choice(ok, size=min(n, len(ok)), replace=False).tolist()) if ok else []
    cats, subs = ["", *cat_vocab.to_list()], ["", *sub_vocab.to_list()]

    def items(rows):
        return {"text": [table.texts[r] for r in rows], "category": [cats[table.category[r]] for r in rows],
                "subcategory": [subs[table.subcategory[r]] for r in rows]}

    out = []
    for i in chosen:
        n_hist = int((imps.history[i] > 0).sum())
        hist = imps.history[i][:n_hist]
        cand, lab = imps.candidates[i][:60], imps.labels[i][:60]
        if lab.min() == lab.max():
            continue
        out.append({"history": {**items(hist), "stats": imps.history_stats[i][:n_hist].tolist()},
                    "candidates": {**items(cand), "stats": imps.candidate_stats[i][:60].tolist()},
                    "labels": lab.astype(int).tolist(), "profile": imps.profile[i].tolist()})
    return out


@dataclasses.dataclass
class TrainData:
    """The training log as the model sees it: item table, training and validation impressions with the item
    statistics each may see (no leakage), and the vocabularies (``model_cfg`` carries their sizes)."""

    model_cfg: ModelConfig              # the caller's, with n_categories / n_subcategories from the vocabularies
    used_cfg: TrainConfig               # the caller's, with the statistics staleness actually used
    impressions: list                   # every impression used, in time order (train then validation)
    n_train: int                        # the first n_train of them train, the rest validate
    cat_vocab: Vocab
    sub_vocab: Vocab
    table: ItemTable
    train: ImpressionArrays             # statistics as of each impression's time (minus a random staleness)
    val: ImpressionArrays               # statistics of the training part, frozen
    train_stats: ItemStats              # counted on the training part


def load_data(data_dir: str | Path, model_cfg: ModelConfig, cfg: TrainConfig,
              log: Callable[[str], None] = print) -> TrainData:
    """Read, split (temporal: the latest ``val_fraction`` validates) and index the training log, and attach the item
    statistics each impression may see."""
    split = load_split(data_dir, skip_bad_lines=cfg.skip_bad_lines, max_history=model_cfg.max_history)
    for rep in split.reports:
        if rep.skipped:
            log(f"warning: {rep.summary()}")
    if not split.has_labels:
        raise ValueError(f"{data_dir}/behaviors.tsv has no click labels: cannot train on it")
    impressions = sorted(split.impressions, key=lambda imp: imp.time)
    if cfg.max_impressions:
        impressions = impressions[: cfg.max_impressions]
    n_val = max(1, int(round(len(impressions) * cfg.val_fraction)))
    train_imps, val_imps = impressions[:-n_val], impressions[-n_val:]

    cat_vocab = Vocab.build(n.category for n in split.news.values())
    sub_vocab = Vocab.build(n.subcategory for n in split.news.values())
    model_cfg = dataclasses.replace(model_cfg, n_categories=len(cat_vocab), n_subcategories=len(sub_vocab))
    gen = model_cfg.cold_user_items             # LLM-written items extend short histories (genrec enrich cold-users)
    table = ItemTable.from_news(split.news, cat_vocab, sub_vocab, model_cfg.use_abstract,
                                generated=impressions if gen else ())
    categories = ["", *cat_vocab.to_list()]
    tr = ImpressionArrays.build(train_imps, table, model_cfg.max_history, categories=categories, generated=gen)
    va = ImpressionArrays.build(val_imps, table, model_cfg.max_history, categories=categories, generated=gen)
    log(f"LLM user data: {sum(bool(i.profile) for i in impressions)} of {len(impressions)} impressions with a "
        f"profile ({'used' if model_cfg.profiles else 'not used'}), {sum(bool(i.generated) for i in impressions)} "
        f"with LLM-written history items ({'used' if gen else 'not used'})")
    # Item statistics without leakage: a training impression sees only events before its own time;
    # validation sees the counts of the training part frozen, as the test set sees the whole training log.
    # Served statistics are as old as the time since the last stats build: train with that staleness.
    stale_h = cfg.stats_staleness_hours
    if stale_h is None:
        stale_h = (val_imps[-1].time - val_imps[0].time).total_seconds() / 3600 if val_imps else 0.0
    if stale_h < 0:
        raise ValueError(f"stats_staleness_hours = {stale_h}: must be >= 0")
    staleness = np.random.default_rng([cfg.seed, 1]).uniform(0.0, stale_h * 3600.0, len(train_imps))   # (I,) s
    tr.attach_stats_as_of(train_imps, train_imps, table, staleness=staleness)
    train_stats = ItemStats.from_impressions(train_imps)
    va.attach_stats(train_stats, table)
    # new items as serving sees them: validation candidates without statistics from the training part
    slots = np.concatenate(va.candidate_stats) if len(va.candidate_stats) else np.zeros((0, N_STATS), np.float32)
    val_new = float((slots[:, :N_COUNTS].sum(-1) == 0).mean()) if len(slots) else 0.0
    dropout = cfg.stats_dropout if cfg.stats_dropout is not None else min(NEW_ITEM_CAP, val_new)
    # the model card records both values used
    used_cfg = dataclasses.replace(cfg, stats_staleness_hours=stale_h, stats_dropout=dropout)
    if tr.missing_history or tr.missing_candidates:
        log(f"warning: {tr.missing_history} history and {tr.missing_candidates} candidate ids are not in news.tsv "
            "and were dropped")
    log(f"data: {len(table) - 1} items, {len(cat_vocab)} categories, {len(sub_vocab)} subcategories, "
        f"{len(train_imps)} train / {len(val_imps)} validation impressions; item statistics up to "
        f"{stale_h:.1f} h stale in training; {100 * val_new:.1f} % of validation candidates new, "
        f"{100 * dropout:.1f} % of training candidates shown as new")
    return TrainData(model_cfg, used_cfg, impressions, len(train_imps), cat_vocab, sub_vocab, table, tr, va,
                     train_stats)


class EmaWeights:
    """Exponential moving average of the trainable weights (``TrainConfig.ema``): validated and saved instead of the
    raw weights, so one noisy step on a small dataset does not decide the model; training continues from the raw
    weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.avg = {n: p.detach().clone() for n, p in self.trainable.items()} if decay > 0 else None

    @torch.no_grad()
    def update(self) -> None:
        if self.avg is not None:
            for n, p in self.trainable.items():
                self.avg[n].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def swap_in(self) -> dict[str, torch.Tensor] | None:
        """Put the averages in the model; returns the raw weights for ``restore`` (None when off)."""
        if self.avg is None:
            return None
        raw = {n: p.detach().clone() for n, p in self.trainable.items()}
        for n, p in self.trainable.items():
            p.copy_(self.avg[n])
        return raw

    @torch.no_grad()
    def restore(self, raw: dict[str, torch.Tensor] | None) -> None:
        if raw is not None:
            for n, p in self.trainable.items():
                p.copy_(raw[n])


def _optimizer(model: GenRec, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW: projection and heads at ``lr``, fine-tuned LM layers (if any) at ``lm_lr``."""
    lm_params = [p for p in model.encoder.lm.parameters() if p.requires_grad]
    other = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.lm.")]
    groups = [{"params": other, "lr": cfg.lr}]
    if lm_params:
        groups.append({"params": lm_params, "lr": cfg.lm_lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def _batch_losses(model: GenRec, data: TrainData, cache: torch.Tensor, cache_mask: torch.Tensor | None,
                  imp_idx: np.ndarray, rows: np.ndarray, cand_stats: np.ndarray, alpha: dict[str, float],
                  cfg: TrainConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One step's task losses L_t (click, and the auxiliary tasks whose alpha is set) for the sampled clicks:
    impressions ``imp_idx`` (B,), candidate rows (B, 1+K) with the clicked item first, their statistics."""
    item_cat = torch.from_numpy(data.table.category)
    item_sub = torch.from_numpy(data.table.subcategory)
    tr = data.train
    hist = torch.from_numpy(tr.history[imp_idx])                                   # (B, Hmax)
    hist = hist[:, : max(1, int((hist > 0).sum(1).max()))]                         # (B, H)
    cands = torch.from_numpy(rows)                                                 # (B, 1+K)
    b, h = hist.shape
    uniq, inv = torch.unique(torch.cat([hist.reshape(-1), cands.reshape(-1)]), return_inverse=True)
    vec = model.cached_item_vectors(cache, cache_mask, uniq)                       # (U, D)
    hist_stats = torch.from_numpy(tr.history_stats[imp_idx, :h])                    # (B, H, S)
    stats = drop_stats(torch.from_numpy(cand_stats), cfg.stats_dropout, rng)       # (B, 1+K, S)
    profile = torch.from_numpy(tr.profile[imp_idx])                                 # (B, K)
    # the batch's unique rows are its item table: vectors, categories and positions into them
    batch = HeadsBatch.from_rows(vec, item_cat[uniq], item_sub[uniq], inv[: b * h].view(b, h),
                                 inv[b * h:].view(b, cands.shape[1]), hist_stats, stats, profile,
                                 history_mask=hist > 0)
    out = model.score(batch, explain=False)
    target = torch.zeros(b, dtype=torch.long)                                      # clicked item is column 0
    task_loss = {"click": F.cross_entropy(out["click_logit"], target)}
    real = uniq > 0
    if alpha["category"] and bool((item_cat[uniq][real] > 0).any()):
        task_loss["category"] = F.cross_entropy(model.heads.category_head(vec[real]), item_cat[uniq][real],
                                                ignore_index=0)
    clicked_cat = item_cat[cands[:, 0]]
    if alpha["topic"] and bool((clicked_cat > 0).any()):
        task_loss["topic"] = F.cross_entropy(out["topic_logits"], clicked_cat, ignore_index=0)
    return task_loss


def _train_epoch(model: GenRec, data: TrainData, cache: torch.Tensor, cache_mask: torch.Tensor | None,
                 optim: torch.optim.Optimizer, ema: EmaWeights, cfg: TrainConfig, rng: np.random.Generator,
                 desc: str, progress: bool) -> tuple[Counter, int]:
    """One epoch over freshly sampled clicks (K negatives each) -> (summed losses per task and in all, steps)."""
    model.train()
    model.encoder.lm.eval()   # LM dropout off: the cached lower part was computed without it
    alpha = {t: float(cfg.alpha.get(t, 0.0)) for t in TASKS}
    imp_idx, rows, cand_stats_rows = _sample_clicks(data.train, cfg.negatives, rng,
                                                    first=int(data.n_train * cfg.stats_warmup))
    order = rng.permutation(len(rows))
    steps = range(0, len(order), cfg.batch_size)
    bar = steps
    if progress:
        from genrec.core.progress import progress as progress_bar
        bar = progress_bar(steps, desc=desc, unit="step", leave=False)
    losses, n_steps = Counter(), 0
    for start in bar:
        sel = order[start: start + cfg.batch_size]
        task_loss = _batch_losses(model, data, cache, cache_mask, imp_idx[sel], rows[sel], cand_stats_rows[sel],
                                  alpha, cfg, rng)
        loss = sum(alpha[t] * v for t, v in task_loss.items())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optim.step()
        ema.update()
        n_steps += 1
        losses["loss"] += float(loss.detach())
        for t, v in task_loss.items():
            losses[t] += float(v.detach())
        if progress:
            bar.set_postfix(loss=f"{losses['loss'] / n_steps:.4f}")
    return losses, n_steps


def _validate(model: GenRec, data: TrainData, cache: torch.Tensor, cache_mask: torch.Tensor | None) -> dict[str, Any]:
    """Ranking metrics of the validation impressions (``group_auc`` decides early stopping), and ``per_impression``:
    each impression's AUC (NaN where it has no pair), for the paired comparison with the start."""
    model.eval()
    with torch.no_grad():
        vecs = model.cached_item_vectors(cache, cache_mask)
    scores = score_impressions(model, vecs, data.table, data.val)["click_logit"]
    per = np.array([auc(lab, s) if 0 < lab.sum() < len(lab) else np.nan for lab, s in zip(data.val.labels, scores)])
    return {**ranking_metrics(zip(data.val.labels, scores)).as_dict(), "per_impression": per}


def keep_start(trained: np.ndarray, start: np.ndarray) -> tuple[bool, float, float]:
    """Is the trained model worse than its start (the baseline) on validation, beyond the noise? Paired over the
    validation impressions: mean AUC difference d and its standard error; the start is kept when d < -SE (the
    model is worse with about 84 %% confidence). Small validation sets have a large SE: the model is kept
    unless it is clearly worse. -> (keep the start, d, SE)."""
    ok = ~(np.isnan(trained) | np.isnan(start))
    diff = trained[ok] - start[ok]
    if len(diff) < 2:
        return False, 0.0, 0.0
    d, se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
    return d < -se, d, se


@dataclasses.dataclass
class Fit:
    """One training run over the loaded data (one stats-dropout rate): the weights validation chose and how."""

    stats_dropout: float
    state: dict[str, torch.Tensor]
    best_epoch: int
    best_auc: float
    history: list[dict[str, Any]]
    kept_start: bool
    vs_start: tuple[float, float]            # (validation AUC difference trained - start, its paired SE)
    rng: np.random.Generator


def fit(model: GenRec, data: TrainData, cfg: TrainConfig, cache: torch.Tensor, cache_mask: torch.Tensor | None,
        rng: np.random.Generator, progress: bool = True, log: Callable[[str], None] = print) -> Fit:
    """Train ``model`` (freshly built) with early stopping on validation group-AUC; epoch 0 is the reference."""
    model_cfg = data.model_cfg
    optim = _optimizer(model, cfg)
    ema = EmaWeights(model, cfg.ema)
    # epoch 0, the reference: the model as initialized with the match term's scale at 0 (with baseline_init: exactly
    # the ctr_popularity baseline); training starts from match_init; after early stopping the trained model must not
    # be clearly below the reference on validation (keep_start)
    t_epoch = time.perf_counter()
    with torch.no_grad():
        model.heads.match_scale.zero_()
    val = _validate(model, data, cache, cache_mask)
    start_per = val.pop("per_impression")
    history = [{"epoch": 0, "seconds": round(time.perf_counter() - t_epoch, 1),
                **{f"val_{k}": v for k, v in val.items()}}]
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.heads.match_scale.fill_(model_cfg.match_init)
    log(f"epoch 0 (the baseline start): val group-AUC {val['group_auc']:.4f}  MRR {val['mrr']:.4f}")
    best_auc, best_epoch, best_state, best_per, bad_epochs = -1.0, 0, None, start_per, 0
    snapshots: list[tuple[float, int, dict[str, torch.Tensor]]] = []     # (val AUC, epoch, trainable weights)
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        losses, n_steps = _train_epoch(model, data, cache, cache_mask, optim, ema, cfg, rng,
                                       f"epoch {epoch}/{cfg.epochs}", progress)
        raw_weights = ema.swap_in()
        val = _validate(model, data, cache, cache_mask)
        per = val.pop("per_impression")
        record = {"epoch": epoch, "seconds": round(time.perf_counter() - t_epoch, 1),
                  **{f"train_{k}": round(v / max(1, n_steps), 4) for k, v in losses.items()},
                  **{f"val_{k}": v for k, v in val.items()}}
        history.append(record)
        improved = val["group_auc"] > best_auc + 1e-4
        if cfg.average_epochs > 1:
            snapshots.append((val["group_auc"], epoch, {n: p.detach().clone() for n, p in model.named_parameters()
                                                        if p.requires_grad}))
        if improved:
            best_auc, best_epoch, best_per, bad_epochs = val["group_auc"], epoch, per, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}   # EMA weights if on
        else:
            bad_epochs += 1
        ema.restore(raw_weights)                      # training continues from the raw weights
        log(f"epoch {epoch}/{cfg.epochs}: loss {record['train_loss']:.4f}  val group-AUC {val['group_auc']:.4f}  "
            f"MRR {val['mrr']:.4f}  ({record['seconds']}s){'  *best' if improved else ''}")
        if bad_epochs >= cfg.patience:
            log(f"early stop: no validation gain for {cfg.patience} epochs")
            break

    averaged: list[int] = []
    if len(snapshots) > 1:          # TrainConfig.average_epochs: the mean of the epochs best on validation
        top = sorted(snapshots, key=lambda snap: -snap[0])[: cfg.average_epochs]
        averaged = sorted(e for _, e, _ in top)
        model.load_state_dict(best_state)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in top[0][2]:
                    p.copy_(torch.stack([w[n] for _, _, w in top]).mean(0))
        val = _validate(model, data, cache, cache_mask)
        best_per = val.pop("per_impression")
        best_auc = val["group_auc"]
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append({"epoch": best_epoch, "averaged_epochs": averaged, **{f"val_{k}": v for k, v in val.items()}})
        log(f"the mean of epochs {averaged}: val group-AUC {best_auc:.4f}")
    kept, diff, se = keep_start(best_per, start_per)
    kept = kept and model_cfg.baseline_init > 0 and model_cfg.item_stats
    if kept:
        log(f"the trained model (epoch {best_epoch}) is below its start on validation by {-diff:.4f} (SE {se:.4f}): "
            "keeping the start, the baseline")
        best_state, best_epoch, best_auc = start_state, 0, history[0]["val_group_auc"]
    return Fit(cfg.stats_dropout, best_state, best_epoch, best_auc, history, kept, (diff, se), rng)


@contextlib.contextmanager
def reproducible():
    """Torch's deterministic kernels while training: the same seed, data and threads give the same weights, bit for
    bit. Measured without them: two 2-thread runs of one ml-100k seed parted at epoch 5 and, choosing different
    epochs on validation, scored 0.642 and 0.673 on test. An op without a deterministic kernel warns, never fails."""
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


def soup_of(fits: Sequence[Fit]) -> dict[str, torch.Tensor]:
    """The mean of the fits' weights (every fit from one start, so their weights average: a model soup); tensors that
    are not floating point (counters, indices) are the first fit's."""
    first = fits[0].state
    return {k: torch.stack([f.state[k] for f in fits]).mean(0) if v.is_floating_point() else v.clone()
            for k, v in first.items()}


def stats_dropout_rates(cfg: TrainConfig, auto: float) -> list[float]:
    """The rates a run trains at: the one given, or (auto) the catalog's own rate, then the searched ones."""
    if cfg.stats_dropout is not None:
        return [cfg.stats_dropout]
    return [auto, *(r for r in dict.fromkeys(cfg.stats_dropout_search) if abs(r - auto) > 1e-9)]


def train(data_dir: str | Path, out_dir: str | Path, model_cfg: ModelConfig = ModelConfig(),
          cfg: TrainConfig = TrainConfig(), *, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    t_start = time.perf_counter()
    unknown = set(cfg.alpha) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) in alpha: {sorted(unknown)}; tasks are {list(TASKS)}")
    for name, rate in (("stats_dropout", cfg.stats_dropout), *(("stats_dropout_search", r)
                                                                for r in cfg.stats_dropout_search)):
        if rate is not None and not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} = {rate}: must be in [0, 1)")
    _set_seed(cfg.seed, cfg.threads)
    data = load_data(data_dir, model_cfg, cfg, log)
    model_cfg = data.model_cfg
    rates = stats_dropout_rates(cfg, data.used_cfg.stats_dropout)

    lm_dir = minilm_dir()
    lm_config = json.loads((lm_dir / "config.json").read_text())
    tokenizer_json = (lm_dir / "tokenizer.json").read_text(encoding="utf-8")
    from genrec.core.text import TextTokenizer
    tokenizer = TextTokenizer(tokenizer_json, max_length=model_cfg.max_length)

    def fresh_model() -> GenRec:
        model = GenRec(model_cfg, lm_config)
        load_pretrained_lm(model.encoder)
        model.heads.set_stats_transform(data.train_stats.prior.alpha, data.train_stats.prior.beta,
                                        torch.from_numpy(np.concatenate(data.train.candidate_stats)))
        return model

    fits: list[Fit] = []
    cache = cache_mask = torch_rng = None
    for rate in rates:              # every rate from the same start: the same seed, initial weights and draws
        rng = _set_seed(cfg.seed, cfg.threads)
        model = fresh_model()
        if cache is None:           # the frozen LM layers' outputs: the same for every rate's model
            t0 = time.perf_counter()
            cache, cache_mask, n_trunc = encode_lower(model.encoder, tokenizer, data.table.texts, progress=progress)
            log(f"cached frozen LM outputs for {len(data.table) - 1} items in {time.perf_counter() - t0:.1f}s "
                f"({n_trunc} texts cut to {model_cfg.max_length} tokens)")
            torch_rng = torch.get_rng_state()          # where training's torch draws start (after the encoding)
        else:
            torch.set_rng_state(torch_rng)
        if len(rates) > 1:
            log(f"stats dropout {rate:.3f} ({'auto' if not fits else 'searched'}):")
        with reproducible():
            fits.append(fit(model, data, dataclasses.replace(data.used_cfg, stats_dropout=rate), cache, cache_mask,
                            rng, progress, log))
    chosen = max(fits, key=lambda f: f.best_auc)          # the first (auto) on a tie
    if len(fits) > 1:
        log("stats dropout search on validation: " + ", ".join(f"{f.stats_dropout:.3f} -> {f.best_auc:.4f}"
                                                               for f in fits) + f"; keeping {chosen.stats_dropout:.3f}")
    used_cfg = dataclasses.replace(data.used_cfg, stats_dropout=chosen.stats_dropout)
    soup: dict[str, Any] | None = None
    if cfg.soup and len(fits) > 1:      # TrainConfig.soup: every rate's chosen weights averaged, if validation prefers
        weights = soup_of(fits)
        model.load_state_dict(weights)
        val = _validate(model, data, cache, cache_mask)
        val.pop("per_impression")
        soup = {"rates": [f.stats_dropout for f in fits], "val_group_auc": val["group_auc"],
                "kept": val["group_auc"] > chosen.best_auc + 1e-4}
        log(f"the soup of {len(fits)} rates: val group-AUC {val['group_auc']:.4f} vs {chosen.best_auc:.4f} "
            f"({'kept' if soup['kept'] else 'not kept'})")
        if soup["kept"]:
            chosen = dataclasses.replace(chosen, state=weights, best_auc=val["group_auc"], history=[
                *chosen.history, {"epoch": chosen.best_epoch, "soup": soup["rates"],
                                  **{f"val_{k}": v for k, v in val.items()}}])
    model.load_state_dict(chosen.state)
    best_epoch, best_auc, history = chosen.best_epoch, chosen.best_auc, chosen.history
    best = next(r for r in reversed(history) if r["epoch"] == best_epoch)      # the averaged weights if any
    metrics = {"best_epoch": best_epoch, **{k[4:]: v for k, v in best.items() if k.startswith("val_")},
               "vs_start": {"kept_start": chosen.kept_start, "val_auc_difference": chosen.vs_start[0],
                            "standard_error": chosen.vs_start[1]},
               "stats_dropout": chosen.stats_dropout,
               "stats_dropout_search": [{"stats_dropout": f.stats_dropout, "val_group_auc": f.best_auc,
                                         "best_epoch": f.best_epoch, "kept_start": f.kept_start} for f in fits],
               "soup": soup,
               "train_seconds": round(time.perf_counter() - t_start, 1), "truncated_texts": n_trunc}
    item_stats = ItemStats.from_impressions(data.impressions, info={"data": str(Path(data_dir).resolve())})
    ckpt = Checkpoint(
        model_config=model_cfg, lm_config=lm_config, state_dict=model.state_dict(),
        category_vocab=data.cat_vocab, subcategory_vocab=data.sub_vocab, tokenizer_json=tokenizer_json,
        tokenizer_source=f"{LM_PACKAGE}:model/tokenizer.json",
        train_config=_jsonable(dataclasses.asdict(used_cfg)), metrics=metrics,
        parity_set=_parity_set(data.val, data.table, data.cat_vocab, data.sub_vocab, cfg.parity_impressions,
                               chosen.rng),
        item_stats=item_stats, provenance={**provenance(), "data": str(Path(data_dir).resolve()),
                                                 "history": history},
    )
    path = ckpt.save(out_dir)
    (Path(out_dir) / "metrics.json").write_text(json.dumps(
        {"best": metrics, "history": history,
         "search": [{"stats_dropout": f.stats_dropout, "history": f.history} for f in fits]}, indent=2) + "\n")
    log(f"saved {path} (best epoch {best_epoch}, val group-AUC {best_auc:.4f})")
    return TrainResult(path, best_epoch, metrics, history)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
