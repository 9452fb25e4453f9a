"""``export(checkpoint, ExportConfig) -> Artifacts``: ONNX graphs per precision, serving assets, report.

ART_DIR/
  <precision>/encoder.onnx, <precision>/heads.onnx      precision in fp32, fp16, int8
  <precision>/retrieval.onnx                           user vector + item retrieval vectors (FP32 in every
                                                       precision: tiny; genrec.core.retrieval)
  assets/tokenizer.json, assets/serving.json           what the Triton tokenizer step needs
  artifacts.json                                       manifest: files, sha256, contract version
  export_report.json, export_report.md                 parity checks, sizes, latency, INT8 choice
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.checkpoint import Checkpoint
from genrec.core import fsio
from genrec.core.artifacts import ASSETS, FORMAT, MANIFEST, PRECISIONS, Artifacts, ServingAssets
from genrec.core.contract import CONTRACT_VERSION, ENCODER, HEADS, ITEM_STATS, RETRIEVAL
from genrec.core.runtime import OrtEncoder, OrtHeads
from genrec.core.text import sha256_file
from genrec.export import torchscript
from genrec.export.convert import INT8_RECIPES, to_fp16, to_int8, to_onnx
from genrec.export.graphs import EncoderGraph, HeadsGraph, RetrievalGraph, example_inputs, retrieval_example_inputs
from genrec.export.parity import (
    CHECK_KIND,
    ExportError,
    ParityError,
    check,
    gate,
    measure,
    prepare,
    resolve_tolerances,
    retrieval_parity,
)

# The gate runs every graph with ONNX Runtime's CPU provider: the FP16 graph's GPU kernels are never exercised.
FP16_ON_CPU = ("FP16 gated on CPU (ONNX Runtime CPUExecutionProvider): the GPU kernels it is meant for were not "
               "exercised; gate it on the GPU before trusting GPU numerics")


@dataclasses.dataclass
class ExportConfig:
    precision: tuple[str, ...] = dataclasses.field(default=PRECISIONS, metadata={
        "help": "precisions to export: fp32 (reference), fp16 (GPU artifact), int8 (CPU artifact)"})
    opset: int = dataclasses.field(default=17, metadata={
        "help": "ONNX opset, pinned so Triton's onnxruntime backend and ORT here agree"})
    tolerance: dict[str, float] = dataclasses.field(default_factory=dict, metadata={
        "help": "parity bound overrides PRECISION.CHECK=VALUE (recorded in the report)"})
    int8_recipe: str = dataclasses.field(default="auto", metadata={
        "help": "INT8 quantization recipe, or 'auto' to measure every recipe and keep the most accurate",
        "choices": ("auto", *INT8_RECIPES)})
    latency: bool = dataclasses.field(default=True, metadata={
        "help": "measure in-process CPU latency at batch 1 and 64 for the report"})
    threads: int = dataclasses.field(default=2, metadata={"help": "ORT intra-op threads for parity and latency"})
    torchscript: bool = dataclasses.field(default=False, metadata={
        "help": "also write <precision>/encoder.pt (TorchScript, fp32 and fp16) for the torch / pytorch backends, "
                "gated like the ONNX encoder (on CUDA when present, else an FP32 trace on CPU: see the report)"})


def _write_assets(ckpt: Checkpoint, folder: Path) -> None:
    info = {"use_abstract": ckpt.model_config.use_abstract, "max_history": ckpt.model_config.max_history,
            "tokenizer_source": ckpt.tokenizer_source,
            "model_metrics": ckpt.metrics,
            "checkpoint_provenance": {k: v for k, v in ckpt.provenance.items() if k != "history"}}
    ServingAssets(ckpt.tokenizer_json, ckpt.model_config.max_length, ckpt.model_config.dim, ckpt.category_vocab,
                  ckpt.subcategory_vocab, info).save(folder)


def _latency(enc_path: Path, heads_path: Path, texts: list[str], tokenizer, dim: int, threads: int) -> dict:
    enc, heads = OrtEncoder(enc_path, threads), OrtHeads(heads_path, threads)

    def p50(fn, runs: int) -> float:
        fn()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(float(np.median(times)) * 1e3, 3)

    out = {}
    for batch, runs in ((1, 30), (64, 5)):
        tok = tokenizer([texts[i % len(texts)] for i in range(batch)])
        out[f"encoder_batch{batch}_ms"] = p50(lambda tok=tok: enc(tok.input_ids, tok.attention_mask), runs)
    rng = np.random.default_rng(0)
    stats = lambda n: rng.integers(0, 1000, (n, len(ITEM_STATS))).astype(np.float32)    # noqa: E731
    feeds = (rng.standard_normal((150, dim)).astype(np.float32), np.ones(50, np.int64), np.ones(50, np.int64),
             np.ones(100, np.int64), np.ones(100, np.int64), stats(50), stats(100))
    out["heads_h50_c100_ms"] = p50(lambda: heads(*feeds), 30)
    out["encoder_text_tokens_mean"] = float(tokenizer(texts[:64]).attention_mask.sum(1).mean())
    return out


def export(checkpoint: str | Path | Checkpoint, out_dir: str | Path, cfg: ExportConfig = ExportConfig(),
           *, log=print) -> Artifacts:
    """Export every requested precision; raise ParityError (after writing the report) on a failed gate."""
    bad = [p for p in cfg.precision if p not in PRECISIONS]
    if bad or not cfg.precision:
        raise ValueError(f"unknown precision(s) {bad}; choose from {list(PRECISIONS)}")
    tolerances = resolve_tolerances(cfg.tolerance)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.load(checkpoint)
    if not ckpt.parity_set:
        raise ExportError("the checkpoint carries no parity set: cannot verify the export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, cfg.threads))
    model = ckpt.build_model()
    tokenizer = ckpt.tokenizer()
    bert = {"num_heads": ckpt.lm_config["num_attention_heads"], "hidden_size": ckpt.lm_config["hidden_size"]}
    _write_assets(ckpt, out / ASSETS)

    t0 = time.perf_counter()
    inputs = prepare(model, ckpt.parity_set, tokenizer, ckpt.category_vocab, ckpt.subcategory_vocab)
    log(f"parity set: {len(inputs.impressions)} impressions, {len(inputs.texts)} item texts "
        f"(PyTorch reference in {time.perf_counter() - t0:.1f}s)")

    report: dict[str, Any] = {"contract_version": CONTRACT_VERSION, "opset": cfg.opset,
                              "tolerance_overrides": dict(cfg.tolerance), "tolerances": {},
                              "precisions": {}, "threads": cfg.threads}
    manifest: dict[str, Any] = {"format": FORMAT, "contract_version": CONTRACT_VERSION,
                                "graphs": {"encoder": dataclasses.asdict(ENCODER), "heads": dataclasses.asdict(HEADS),
                                           "retrieval": dataclasses.asdict(RETRIEVAL)},
                                "precisions": {}, "assets": ASSETS, "weights_sha256": _weights_sha256(model)}
    _keep_other_precisions(out, manifest, report, cfg.precision, log)
    fsio.remove(out / MANIFEST)     # until the new one is in, the folder names no graph that is being rewritten
    failure: ParityError | None = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        enc_ex, heads_ex = example_inputs(ckpt.model_config.dim, ckpt.model_config.n_categories,
                                          ckpt.model_config.n_subcategories)
        fp32_enc = to_onnx(EncoderGraph(model), enc_ex, ENCODER, tmp / "encoder.onnx", cfg.opset)
        fp32_heads = to_onnx(HeadsGraph(model), heads_ex, HEADS, tmp / "heads.onnx", cfg.opset)
        fp32_retrieval = to_onnx(RetrievalGraph(model), retrieval_example_inputs(ckpt.model_config.dim),
                                 RETRIEVAL, tmp / "retrieval.onnx", cfg.opset)
        for prec in cfg.precision:
            t = time.perf_counter()
            pdir = out / prec
            if pdir.exists():
                shutil.rmtree(pdir)
            pdir.mkdir(parents=True)
            entry: dict[str, Any] = {}
            if prec == "fp32":
                shutil.copy(fp32_enc, pdir / "encoder.onnx")
                shutil.copy(fp32_heads, pdir / "heads.onnx")
            elif prec == "fp16":
                to_fp16(fp32_enc, pdir / "encoder.onnx", bert=bert)
                to_fp16(fp32_heads, pdir / "heads.onnx", bert=None)
            else:
                entry["recipes"] = _int8(fp32_enc, pdir, cfg, inputs, tokenizer, fp32_heads, bert,
                                         tolerances["int8"], log)
                entry["recipe"] = entry["recipes"]["chosen"]
                shutil.copy(fp32_heads, pdir / "heads.onnx")
                entry["heads_note"] = ("heads stay FP32 in the INT8 artifact: they are tiny (see size) and "
                                       "quantizing them only adds error to scores and explanations")
            shutil.copy(fp32_retrieval, pdir / "retrieval.onnx")
            stats = measure(inputs, pdir / "encoder.onnx", pdir / "heads.onnx", tokenizer, cfg.threads)
            entry["parity"] = stats
            entry["files"] = {g: {"path": f"{prec}/{g}.onnx", "bytes": (pdir / f"{g}.onnx").stat().st_size,
                                  "sha256": sha256_file(pdir / f"{g}.onnx")} for g in ("encoder", "heads", "retrieval")}
            report["tolerances"][prec] = tolerances[prec]
            try:
                entry["checks"] = [dataclasses.asdict(r) | {"passed": r.passed}
                                   for r in gate(prec, stats, tolerances[prec])]
                entry["retrieval_parity"] = retrieval_parity(model, pdir / "retrieval.onnx", inputs, prec,
                                                             cfg.threads)
                entry["passed"] = True
            except ParityError as err:
                entry["passed"] = False
                entry["error"] = str(err)
                failure = failure or err
            if cfg.torchscript and entry["passed"] and prec in torchscript.PRECISIONS:
                ts = torchscript.export_and_gate(model.encoder, pdir, prec, inputs, pdir / "heads.onnx", tokenizer,
                                                 tolerances[prec], threads=cfg.threads, log=log)
                entry["torchscript"], entry["files"][torchscript.GRAPH] = ts.report, ts.file_entry(prec)
                if not ts.passed:
                    entry["passed"], entry["error"], failure = False, str(ts.error), failure or ts.error
            if cfg.latency:
                entry["latency"] = _latency(pdir / "encoder.onnx", pdir / "heads.onnx", inputs.texts, tokenizer,
                                            ckpt.model_config.dim, cfg.threads)
            entry["seconds"] = round(time.perf_counter() - t, 1)
            if prec == "fp16":
                entry["gate_device"] = "cpu"
                entry["note"] = FP16_ON_CPU
            report["precisions"][prec] = entry
            log(_summary_line(prec, entry))
            if entry["passed"]:
                manifest["precisions"][prec] = entry["files"]
            else:
                shutil.rmtree(pdir)              # a failed precision leaves no artifact behind
    fsio.write_json(out / "export_report.json", report)
    fsio.write_text(out / "export_report.md", report_markdown(report))
    for files in manifest["precisions"].values():            # the graphs durable before the manifest names them
        for f in files.values():
            fsio.fsync_path(out / f["path"])
    fsio.write_json(out / MANIFEST, manifest)                 # the commit point: atomic and durable
    if failure is not None:
        raise failure
    return Artifacts(out, manifest)


def _weights_sha256(model: torch.nn.Module) -> str:
    """Fingerprint of the exported weights: artifacts of different precisions belong together only when
    they were exported from the same weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _keep_other_precisions(out: Path, manifest: dict[str, Any], report: dict[str, Any],
                           exporting: tuple[str, ...], log) -> None:
    """Exporting some precisions into a folder that holds others: keep those (manifest and report entries)
    when they come from the same weights; remove them when they come from other weights (stale)."""
    old_path = out / MANIFEST
    if not old_path.is_file():
        return
    try:
        old = json.loads(old_path.read_text())
        old_report = json.loads((out / "export_report.json").read_text())
    except (OSError, ValueError):
        old, old_report = {}, {}
    same = old.get("format") == FORMAT and old.get("weights_sha256") == manifest["weights_sha256"]
    for prec, files in old.get("precisions", {}).items():
        if prec in exporting:
            continue
        intact = all((out / f["path"]).is_file() and sha256_file(out / f["path"]) == f["sha256"]
                     for f in files.values())
        if same and intact and prec in old_report.get("precisions", {}):
            manifest["precisions"][prec] = files
            report["precisions"][prec] = old_report["precisions"][prec]
            report["tolerances"][prec] = old_report.get("tolerances", {}).get(prec)
            log(f"{prec}: kept from the earlier export of the same weights")
        else:
            shutil.rmtree(out / prec, ignore_errors=True)
            log(f"{prec}: removed, exported earlier from other weights (or changed since); re-export it if needed")


def _int8(fp32_enc: Path, pdir: Path, cfg: ExportConfig, inputs, tokenizer, fp32_heads: Path, bert: dict,
          tolerances: dict[str, float], log) -> dict[str, Any]:
    """Quantize with each candidate recipe and measure it. Keep the first recipe, in INT8_RECIPES' order
    of speed, that passes the gate; if none passes, the most accurate one (which then fails the gate)."""
    names = [n for n, r in INT8_RECIPES.items() if r.auto] if cfg.int8_recipe == "auto" else [cfg.int8_recipe]
    measured: dict[str, Any] = {}
    for name in names:
        cand = pdir / f"encoder.{name}.onnx"
        to_int8(fp32_enc, cand, INT8_RECIPES[name], bert=bert)
        stats = measure(inputs, cand, fp32_heads, tokenizer, cfg.threads)
        passes = all(r.passed for r in check(stats, tolerances))
        measured[name] = {"encoder_cosine_mean": stats["encoder_cosine_mean"],
                          "encoder_cosine_min": stats["encoder_cosine_min"], "auc_drop": stats["auc_drop"],
                          "kendall_tau_mean": stats["kendall_tau_mean"], "bytes": cand.stat().st_size,
                          "batch_invariance_max_abs_diff": stats["batch_invariance_max_abs_diff"],
                          "per_text": INT8_RECIPES[name].per_text, "passes_gate": passes}
        log(f"  int8 recipe {name}: cosine mean {stats['encoder_cosine_mean']:.5f} "
            f"min {stats['encoder_cosine_min']:.5f}, AUC drop {stats['auc_drop']:+.5f}, "
            f"batch invariance {stats['batch_invariance_max_abs_diff']:.1e}, gate {'pass' if passes else 'fail'}")
    passing = [n for n in names if measured[n]["passes_gate"]]
    best = passing[0] if passing else max(names, key=lambda n: measured[n]["encoder_cosine_mean"])
    for name in names:
        src = pdir / f"encoder.{name}.onnx"
        if name == best:
            src.replace(pdir / "encoder.onnx")
        else:
            src.unlink()
    measured["chosen"] = best
    measured["why"] = ("fastest recipe (order: " + " > ".join(names) + ") that passes the parity gate"
                       if len(names) > 1 and passing else
                       "no recipe passes the gate; the most accurate is kept for the report" if len(names) > 1 else
                       "set with --int8-recipe")
    return measured


def _summary_line(prec: str, entry: dict) -> str:
    p = entry["parity"]
    status = "PASS" if entry["passed"] else f"FAIL: {entry['error']}"
    lat = entry.get("latency", {})
    lat_txt = (f", encoder b1 {lat['encoder_batch1_ms']} ms / b64 {lat['encoder_batch64_ms']} ms"
               if lat else "")
    return (f"{prec}: cosine mean {p['encoder_cosine_mean']:.5f} min {p['encoder_cosine_min']:.5f}, heads max|d| "
            f"{p['heads_max_abs_diff']:.2e}, AUC drop {p['auc_drop']:+.5f}, tau {p['kendall_tau_mean']:.4f}"
            f"{lat_txt} -> {status}")


def report_markdown(report: dict) -> str:
    lines = ["# Export report", "", f"Contract `{report['contract_version']}`, opset {report['opset']}, "
             f"ORT threads {report['threads']}.", ""]
    if report["tolerance_overrides"]:
        lines += [f"**Tolerance overrides:** `{report['tolerance_overrides']}`", ""]
    lines += ["| precision | encoder MB | heads MB | cosine mean | cosine min | heads max abs diff | AUC drop "
              "| Kendall tau | enc b1 ms | enc b64 ms | heads ms | gate |", "|" + "---|" * 12]
    for prec, e in report["precisions"].items():
        p, f, lat = e["parity"], e["files"], e.get("latency", {})
        lines.append(f"| {prec} | {f['encoder']['bytes'] / 1e6:.1f} | {f['heads']['bytes'] / 1e6:.2f} "
                     f"| {p['encoder_cosine_mean']:.6f} | {p['encoder_cosine_min']:.6f} "
                     f"| {p['heads_max_abs_diff']:.2e} "
                     f"| {p['auc_drop']:+.5f} | {p['kendall_tau_mean']:.4f} | {lat.get('encoder_batch1_ms', '-')} "
                     f"| {lat.get('encoder_batch64_ms', '-')} | {lat.get('heads_h50_c100_ms', '-')} "
                     f"| {'pass' if e['passed'] else 'FAIL'} |")
    lines.append("")
    for prec, e in report["precisions"].items():
        lines += [f"## {prec}", ""]
        if "error" in e:
            lines += [f"**Failed:** {e['error']}", ""]
        if prec == "fp16":
            lines += [f"**{FP16_ON_CPU}**", ""]
        bounds = report["tolerances"][prec]
        lines += ["| check | value | bound |", "|---|---|---|"]
        lines += [f"| {k} | {e['parity'][k]:.6g} | {'>=' if CHECK_KIND[k] == 'min' else '<='} {v:g} |"
                  for k, v in bounds.items()]
        lines.append("")
        if "recipes" in e:
            r = e["recipes"]
            lines += ["INT8 recipes measured (dynamic quantization of the encoder; per text = one activation "
                      "scale per text, each text run alone: batch-invariant):", "",
                      "| recipe | scales | cosine mean | cosine min | AUC drop | Kendall tau | batch invariance "
                      "| MB | gate |", "|" + "---|" * 9]
            for name, m in r.items():
                if isinstance(m, dict):
                    lines.append(f"| {name} | {'per text' if m['per_text'] else 'per batch'} "
                                 f"| {m['encoder_cosine_mean']:.5f} | {m['encoder_cosine_min']:.5f} "
                                 f"| {m['auc_drop']:+.5f} | {m['kendall_tau_mean']:.4f} "
                                 f"| {m['batch_invariance_max_abs_diff']:.1e} | {m['bytes'] / 1e6:.1f} "
                                 f"| {'pass' if m['passes_gate'] else 'fail'} |")
            lines += ["", f"Chosen: **{r['chosen']}** ({r['why']}). {e['heads_note']}.", ""]
    return "\n".join(lines) + "\n"
