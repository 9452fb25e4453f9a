"""Evaluation on a labelled MIND folder: ranking metrics, per-task metrics and a popularity baseline.

Entry point: ``evaluate(checkpoint, data_dir, EvalConfig) -> dict``. Items are encoded with the full
PyTorch model from the checkpoint (items unseen in training included), then every impression is
scored with its whole candidate list.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.checkpoint import Checkpoint
from genrec.config import EvalConfig  # noqa: F401  (re-exported)
from genrec.data.mind import MAX_HISTORY, load_split
from genrec.items import ImpressionArrays, ItemTable, encode_items, score_impressions
from genrec.metrics import ranking_metrics


def evaluate(checkpoint: str | Path | Checkpoint, data_dir: str | Path, cfg: EvalConfig = EvalConfig(),
             *, progress: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.load(checkpoint)
    model = ckpt.build_model()
    split = load_split(data_dir, skip_bad_lines=cfg.skip_bad_lines)
    if not split.has_labels:
        raise ValueError(f"{data_dir}/behaviors.tsv has no click labels: nothing to evaluate against")
    imps_raw = split.impressions[: cfg.max_impressions] if cfg.max_impressions else split.impressions
    table = ItemTable.from_news(split.news, ckpt.category_vocab, ckpt.subcategory_vocab,
                                ckpt.model_config.use_abstract)
    imps = ImpressionArrays.build(imps_raw, table, MAX_HISTORY)
    vectors, n_trunc = encode_items(model.encoder, ckpt.tokenizer(), table.texts, progress=progress)
    out = score_impressions(model.heads, vectors, table, imps, cfg.batch_size,
                            keys=("click_logit", "topic_logits"))
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

    # popularity baseline: training clicks per item (ties, e.g. unseen items, count 1/2 in AUC)
    pop = [np.array([ckpt.popularity.get(table.ids[r], 0) for r in c], dtype=np.float64) for c in imps.candidates]
    result["popularity_group_auc"] = ranking_metrics(zip(imps.labels, pop)).group_auc
    result.update({"truncated_texts": n_trunc, "missing_history_ids": imps.missing_history,
                   "missing_candidate_ids": imps.missing_candidates,
                   "seconds": round(time.perf_counter() - t0, 1)})
    return result
