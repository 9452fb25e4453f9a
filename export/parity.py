"""The parity gate: an exported precision must reproduce the PyTorch model, or the export fails.

Checks, on the checkpoint's held-out parity set (validation impressions with texts, labels and the item
statistics they were scored with; a few rows per impression get all-zero statistics, i.e. unknown items
that fall back to the prior, so both branches of the in-graph statistics transform are compared):
  encoder_cosine_min / encoder_cosine_mean -- cosine of ONNX vs PyTorch item vectors
  heads_max_abs_diff   -- max |ONNX - PyTorch| over every heads output, on identical inputs
  auc_drop             -- group-AUC(PyTorch) - group-AUC(ONNX end to end): the ranking quality the
                          conversion loses (negative when ONNX happens to rank better; random reorderings
                          in either direction are caught by kendall_tau_mean)
  kendall_tau_mean     -- mean over impressions of Kendall tau between ONNX and PyTorch scores
  batch_invariance_max_abs_diff -- max |vector of a text encoded alone - the same text's vector inside a
                          batch padded to the longest with long texts|: serving merges users' texts into
                          one batch (Triton's dynamic batcher), so a text's vector must not depend on them
Unlike optimum (which only warns), a check outside its bound raises :class:`ParityError`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from genrec.core.artifacts import ExportError
from genrec.core.contract import HEADS, N_STATS
from genrec.core.retrieval import OrtRetrieval
from genrec.core.runtime import OrtEncoder, OrtHeads
from genrec.core.text import TextTokenizer, encode_length_sorted
from genrec.core.vocab import Vocab
from genrec.metrics import kendall_tau, ranking_metrics

# check -> ("min" | "max", bound per precision). "min": value must be >= bound; "max": <= bound.
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"encoder_cosine_min": 0.99999, "heads_max_abs_diff": 1e-4, "auc_drop": 1e-4, "kendall_tau_mean": 0.999,
             "batch_invariance_max_abs_diff": 1e-6},
    "fp16": {"encoder_cosine_min": 0.999, "heads_max_abs_diff": 5e-2, "auc_drop": 5e-4, "kendall_tau_mean": 0.98,
             "batch_invariance_max_abs_diff": 1e-6},
    "int8": {"encoder_cosine_mean": 0.98, "heads_max_abs_diff": 1e-4, "auc_drop": 2e-3, "kendall_tau_mean": 0.9,
             "batch_invariance_max_abs_diff": 1e-6},
}
CHECK_KIND = {"encoder_cosine_min": "min", "encoder_cosine_mean": "min", "heads_max_abs_diff": "max",
              "auc_drop": "max", "kendall_tau_mean": "min", "batch_invariance_max_abs_diff": "max"}


class ParityError(ExportError):
    """An exported graph disagrees with PyTorch beyond a tolerance."""

    def __init__(self, precision: str, check: str, value: float, bound: float, kind: str):
        self.precision, self.check, self.value, self.bound = precision, check, value, bound
        rel = ">=" if kind == "min" else "<="
        super().__init__(f"{precision} parity check '{check}' failed: {value:.6g} is not {rel} {bound:.6g} "
                         f"(override with --tolerance {precision}.{check}=VALUE if this is expected)")


@dataclasses.dataclass
class CheckResult:
    name: str
    value: float
    bound: float
    kind: str

    @property
    def passed(self) -> bool:
        return self.value >= self.bound if self.kind == "min" else self.value <= self.bound


def resolve_tolerances(overrides: dict[str, float]) -> dict[str, dict[str, float]]:
    """Apply ``{"int8.auc_drop": 0.003}``-style overrides; unknown names are an error."""
    tol = {p: dict(c) for p, c in DEFAULT_TOLERANCES.items()}
    for key, value in overrides.items():
        prec, _, check = key.partition(".")
        if prec not in tol or check not in CHECK_KIND:
            raise ValueError(f"unknown tolerance {key!r}; use PRECISION.CHECK with precision in {list(tol)} "
                             f"and check in {list(CHECK_KIND)}")
        tol[prec][check] = float(value)
    return tol


@dataclasses.dataclass
class ParityInputs:
    """The parity set tokenized and id-mapped once, plus PyTorch reference outputs."""

    texts: list[str]
    impressions: list[dict[str, Any]]       # rows into texts, category ids, labels
    ref_vectors: np.ndarray                 # (N, D) PyTorch item vectors
    ref_outputs: list[dict[str, np.ndarray]]


def _encode_batches(fn, tokenizer: TextTokenizer, texts: list[str], batch: int = 64) -> np.ndarray:
    return encode_length_sorted(fn, tokenizer(texts, pad_to=tokenizer.max_length), batch)


def prepare(model, parity_set: list[dict[str, Any]], tokenizer: TextTokenizer, cat_vocab: Vocab,
            sub_vocab: Vocab) -> ParityInputs:
    """The PyTorch reference of ``model`` (a ``genrec.model.GenRec``): its ``item_vectors`` of every parity-set
    text and its ``score_user`` outputs of every impression, the very composition the graphs export."""
    model.eval()
    texts: list[str] = []
    index: dict[str, int] = {}

    def rows(items: list[str]) -> np.ndarray:
        for t in items:
            if t not in index:
                index[t] = len(texts)
                texts.append(t)
        return np.array([index[t] for t in items], dtype=np.int64)

    imps = []
    for i, imp in enumerate(parity_set):
        h, c = imp["history"], imp["candidates"]
        imps.append({"hist": rows(h["text"]), "cand": rows(c["text"]),
                     "hc": cat_vocab.lookup(h["category"]), "hs": sub_vocab.lookup(h["subcategory"]),
                     "cc": cat_vocab.lookup(c["category"]), "cs": sub_vocab.lookup(c["subcategory"]),
                     "hst": parity_stats(h, i), "cst": parity_stats(c, i + 1),
                     "prof": parity_profile(imp, len(cat_vocab), cat_vocab.lookup(c["category"]), i),
                     "labels": np.asarray(imp["labels"])})

    def torch_encode(ids, mask):
        with torch.no_grad():
            return model.item_vectors(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    ref_vectors = _encode_batches(torch_encode, tokenizer, texts)
    ref_outputs = []
    with torch.no_grad():
        for imp in imps:
            outs = model.score_user(*(torch.from_numpy(v) for v in _heads_feeds(ref_vectors, imp)))
            ref_outputs.append({k: outs[k].numpy() for k in HEADS.output_names})
    return ParityInputs(texts, imps, ref_vectors, ref_outputs)


UNKNOWN_EVERY = 5      # every 5th item row of the parity set (staggered per impression) replays as "no statistics"


def parity_stats(items: dict[str, Any], offset: int) -> np.ndarray:
    """(n, S) float32 statistics of a parity-set item list (zeros where it has none), with every
    UNKNOWN_EVERY-th row set to zeros: unknown items, which the heads give the prior."""
    n = len(items["text"])
    stats = np.asarray(items.get("stats") or np.zeros((n, N_STATS)), dtype=np.float32).reshape(n, N_STATS).copy()
    stats[(np.arange(n) + offset) % UNKNOWN_EVERY == 0] = 0.0
    return stats


def parity_profile(imp: dict[str, Any], n_categories: int, cand_cat: np.ndarray, i: int) -> np.ndarray:
    """(K,) float32 profile of a parity-set impression: the stored one (genrec enrich users), and where it has
    none, every other impression gets its first candidate's category, so the profile path is always replayed;
    the rest stay zeros (no profile)."""
    prof = np.zeros(n_categories, dtype=np.float32)
    stored = np.asarray(imp.get("profile") or [], dtype=np.float32)
    if stored.size == n_categories and stored.any():
        return stored
    if i % 2 == 0 and cand_cat.size:
        prof[cand_cat[0]] = 1.0
    return prof


def _heads_feeds(vectors: np.ndarray, imp: dict[str, Any]) -> tuple[np.ndarray, ...]:
    items = np.concatenate([vectors[imp["hist"]], vectors[imp["cand"]]]).astype(np.float32)   # (H + C, D)
    return items, imp["hc"], imp["hs"], imp["cc"], imp["cs"], imp["hst"], imp["cst"], imp["prof"]


def batch_invariance(encode, tokenizer: TextTokenizer, texts: list[str], probes: int = 8,
                     mates: int = 24) -> float:
    """Max |encode(text alone) - encode(text inside a batch)| over ``probes`` of the shorter ``texts``, each
    batch padded to the longest, its mates being long texts (joined ``texts`` cut at max_length tokens):
    what Triton's dynamic batcher does to a user's texts when it merges them with other users'."""
    lengths = tokenizer(texts).attention_mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    probe = [texts[i] for i in order[: max(1, len(order) // 2)][:: max(1, len(order) // 2 // probes)][:probes]]
    longest = [texts[i] for i in order[::-1][:mates]]
    long_mates = [" ".join([t, *longest]) for t in longest]                       # >= max_length tokens each
    alone = []
    for text in probe:
        tok = tokenizer([text])
        alone.append(encode(tok.input_ids, tok.attention_mask)[0])
    half = len(long_mates) // 2
    tok = tokenizer([*long_mates[:half], *probe, *long_mates[half:]])
    inside = encode(tok.input_ids, tok.attention_mask)[half: half + len(probe)]
    return float(np.abs(np.stack(alone).astype(np.float64) - inside).max())


def measure(inputs: ParityInputs, encoder_path, heads_path, tokenizer: TextTokenizer,
            threads: int = 0) -> dict[str, float]:
    """Every parity statistic for one exported precision (no bounds applied here). ``encoder_path`` may also
    be an encoder callable ((N, L) int64 x2 -> (N, D) float32), e.g. the TorchScript encoder."""
    enc = encoder_path if callable(encoder_path) else OrtEncoder(encoder_path, threads)
    heads = OrtHeads(heads_path, threads)
    vectors = _encode_batches(enc, tokenizer, inputs.texts)
    ref = inputs.ref_vectors
    cos = (vectors * ref).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)

    max_diff = 0.0
    onnx_scores, taus = [], []
    for imp, ref_out in zip(inputs.impressions, inputs.ref_outputs):
        same = heads(*_heads_feeds(ref, imp))                              # identical inputs
        for k in HEADS.output_names:
            if ref_out[k].size:
                max_diff = max(max_diff, float(np.abs(same[k].astype(np.float64) - ref_out[k]).max()))
        e2e = heads(*_heads_feeds(vectors, imp))["scores"]                 # ONNX end to end
        onnx_scores.append(e2e)
        taus.append(kendall_tau(e2e, ref_out["scores"]))
    labels = [imp["labels"] for imp in inputs.impressions]
    auc_ref = ranking_metrics(zip(labels, [r["scores"] for r in inputs.ref_outputs])).group_auc
    auc_onnx = ranking_metrics(zip(labels, onnx_scores)).group_auc
    return {"encoder_cosine_min": float(cos.min()), "encoder_cosine_mean": float(cos.mean()),
            "heads_max_abs_diff": max_diff, "auc_drop": auc_ref - auc_onnx, "auc_torch": auc_ref,
            "auc_onnx": auc_onnx, "kendall_tau_mean": float(np.mean(taus)), "kendall_tau_min": float(np.min(taus)),
            "items": len(inputs.texts), "impressions": len(inputs.impressions),
            "batch_invariance_max_abs_diff": batch_invariance(enc, tokenizer, inputs.texts)}


def check(stats: dict[str, float], tolerances: dict[str, float]) -> list[CheckResult]:
    return [CheckResult(name, stats[name], bound, CHECK_KIND[name]) for name, bound in tolerances.items()]


def gate(precision: str, stats: dict[str, float], tolerances: dict[str, float]) -> list[CheckResult]:
    """Apply the bounds; raise ParityError on the first failed check (all results are returned otherwise)."""
    results = check(stats, tolerances)
    for r in results:
        if not r.passed:
            raise ParityError(precision, r.name, r.value, r.bound, r.kind)
    return results


# The retrieval graph is FP32 everywhere (a LayerNorm and an attention over <= 50 rows): max |diff| against PyTorch of
# the item representations, the user vectors and the match term user . item_repr / sqrt(D) of the parity set. Gated
# like the other graphs: ONNX Runtime must reproduce the PyTorch heads on the parity set, or the export fails.
RETRIEVAL_TOLERANCE = 1e-3


def retrieval_parity(model, path, inputs, precision: str, threads: int = 1) -> dict[str, Any]:
    """ORT ``retrieval.onnx`` against PyTorch over the parity set (its items and its users' histories), and the
    match term against the heads' own (the retrieval score must be the very score the heads add). The reference is
    ``GenRec.retrieval``: the candidates' retrieval vectors, the history's user vector."""
    ort = OrtRetrieval(path, threads)
    model.eval()
    d = inputs.ref_vectors.shape[1]
    item_diff = user_diff = match_diff = 0.0
    with torch.no_grad():
        for imp in inputs.impressions:
            hv, cv = inputs.ref_vectors[imp["hist"]], inputs.ref_vectors[imp["cand"]]
            got_items = ort.item_repr(cv, imp["cc"], imp["cs"])
            got_user = ort.user_vector(hv, imp["hc"], imp["hs"])
            t = lambda a: torch.from_numpy(np.asarray(a))                          # noqa: E731
            ref_items = model.retrieval(t(cv), t(imp["cc"]), t(imp["cs"]))[0].numpy()
            ref_user = model.retrieval(t(hv), t(imp["hc"]), t(imp["hs"]))[1].numpy()
            item_diff = max(item_diff, float(np.abs(got_items - ref_items).max(initial=0)))
            user_diff = max(user_diff, float(np.abs(got_user - ref_user).max()))
            match_diff = max(match_diff, float(np.abs(got_items @ got_user - ref_items @ ref_user).max(initial=0))
                             / math.sqrt(d))
    stats = {"retrieval_item_max_abs_diff": item_diff, "retrieval_user_max_abs_diff": user_diff,
             "retrieval_match_max_abs_diff": match_diff, "tolerance": RETRIEVAL_TOLERANCE}
    worst = max(item_diff, user_diff, match_diff)
    if not worst <= RETRIEVAL_TOLERANCE:
        raise ParityError(precision, "retrieval_max_abs_diff", worst, RETRIEVAL_TOLERANCE, "max")
    return stats
