"""Export: every precision passes its gate, graphs have the expected form, and the gate really fails."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from workers import THREADS

from genrec.benchmarks.workload import plausible_stats
from genrec.checkpoint import Checkpoint
from genrec.core.contract import ENCODER, HEADS, ITEM_COUNTS, ITEM_STATS, RETRIEVAL
from genrec.core.runtime import OrtHeads, Pipeline
from genrec.export import ExportConfig, ParityError, export
from genrec.export.graphs import HeadsGraph, example_inputs
from genrec.export.parity import UNKNOWN_EVERY, gate, measure, prepare, resolve_tolerances


def test_every_precision_passes_its_gate(artifacts):
    report = json.loads((artifacts.root / "export_report.json").read_text())
    assert set(report["precisions"]) == {"fp32", "fp16", "int8"}
    for entry in report["precisions"].values():
        assert entry["passed"], entry.get("error")
        assert all(c["passed"] for c in entry["checks"])
        assert entry["latency"]["encoder_batch1_ms"] > 0 and entry["latency"]["encoder_batch64_ms"] > 0
        assert entry["files"]["encoder"]["bytes"] > 1e6
    assert report["precisions"]["fp32"]["parity"]["encoder_cosine_min"] >= 0.99999
    int8 = report["precisions"]["int8"]
    assert int8["recipe"] in int8["recipes"] and int8["recipes"]["why"]
    md = (artifacts.root / "export_report.md").read_text()
    assert "| int8 |" in md and "Chosen:" in md
    assert (artifacts.root / "assets" / "tokenizer.json").is_file()


def test_fp16_report_says_it_was_gated_on_cpu(artifacts):
    report = json.loads((artifacts.root / "export_report.json").read_text())
    assert report["precisions"]["fp16"]["gate_device"] == "cpu"
    assert "FP16 gated on CPU" in (artifacts.root / "export_report.md").read_text().split("## fp16")[1]


def test_graph_contract_names_and_opset(artifacts):
    for spec in (ENCODER, HEADS, RETRIEVAL):
        model = onnx.load(str(artifacts.graph("fp32", spec.name)))
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == spec.input_names
        assert [o.name for o in model.graph.output] == spec.output_names
        assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17


def _op_types(graph: onnx.GraphProto) -> set[str]:
    """Every op type of a graph and its subgraphs (the per-text INT8 encoder runs inside a Loop)."""
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops |= _op_types(attr.g)
    return ops


def test_int8_is_quantized_and_fp16_is_half(artifacts):
    int8 = onnx.load(str(artifacts.graph("int8", "encoder")))
    assert _op_types(int8.graph) & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QAttention"}
    assert {p.key: p.value for p in int8.metadata_props}.get("genrec.rows") == "independent"     # one scale per text
    fp16 = onnx.load(str(artifacts.graph("fp16", "encoder")))
    n_half = sum(1 for t in fp16.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    assert n_half > 50
    # the heads of the FP16 artifact are half too, but keep FP32 inputs/outputs
    heads16 = onnx.load(str(artifacts.graph("fp16", "heads")))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in heads16.graph.initializer)
    assert heads16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("n_hist, n_cand", [(0, 5), (4, 1), (0, 1), (50, 300)])
def test_heads_cold_user_and_single_candidate(artifacts, trained_run, n_hist, n_cand):
    ckpt = Checkpoint.load(trained_run)
    heads = HeadsGraph(ckpt.build_model()).eval()
    rng = np.random.default_rng(0)
    def stats(n: int) -> np.ndarray:   # as `genrec stats build` writes them, some rows unknown, the first known
        out = plausible_stats(n, rng, unknown=0.3)
        out[:1, :len(ITEM_COUNTS)] = [150.0, 40.0, 20.0]
        return out

    vecs = rng.standard_normal((n_hist + n_cand, ckpt.model_config.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)          # unit rows, as the encoder emits (the gate's domain)
    feeds = (vecs,
             rng.integers(0, 5, n_hist), rng.integers(0, 5, n_hist), rng.integers(0, 5, n_cand),
             rng.integers(0, 5, n_cand), stats(n_hist), stats(n_cand),
             (rng.random(ckpt.model_config.n_categories) > 0.5).astype(np.float32))     # an LLM user profile
    with torch.no_grad():
        ref = [t.numpy() for t in heads(*(torch.from_numpy(f) for f in feeds))]
    out = OrtHeads(artifacts.graph("fp32", "heads"))(*feeds)
    assert out["scores"].shape == (n_cand,) and out["explanation"].shape == (n_cand, n_hist)
    assert out["user_topics"].shape == (ckpt.model_config.n_categories,)
    for name, r in zip(HEADS.output_names, ref):                # the FP32 gate's heads bound (log-count features)
        np.testing.assert_allclose(out[name], r, atol=1e-4, rtol=1e-5)
    # statistics reach the scores: with none (None = zeros = the prior) the candidates score differently
    prior = OrtHeads(artifacts.graph("fp32", "heads"))(*feeds[:5], user_profile=feeds[7])
    assert np.abs(prior["scores"] - out["scores"]).max() > 1e-3
    # and so does the profile: without one (None = zeros = no profile) the candidates score differently
    no_profile = OrtHeads(artifacts.graph("fp32", "heads"))(*feeds[:7])
    assert np.abs(no_profile["scores"] - out["scores"]).max() > 1e-4


def test_parity_set_replays_statistics_and_unknown_items(artifacts, trained_run):
    ckpt = Checkpoint.load(trained_run)
    inputs = prepare(ckpt.build_model(), ckpt.parity_set[:10], ckpt.tokenizer(), ckpt.category_vocab,
                     ckpt.subcategory_vocab)
    cst = np.concatenate([imp["cst"] for imp in inputs.impressions])
    assert cst.shape[1] == len(ITEM_STATS) and (cst.sum(1) > 0).any()          # real statistics replayed
    assert (cst.sum(1) == 0).sum() >= len(cst) // UNKNOWN_EVERY                  # and unknown items (the prior)
    kept = slice(0, UNKNOWN_EVERY - 1)            # impression 0's candidate rows before the first zeroed one
    np.testing.assert_array_equal(inputs.impressions[0]["cst"][kept],
                                  np.asarray(ckpt.parity_set[0]["candidates"]["stats"], np.float32)[kept])


def test_example_inputs_give_every_axis_a_distinct_size(trained_run):
    cfg = Checkpoint.load(trained_run).model_config
    enc, heads = example_inputs(cfg.dim, cfg.n_categories, cfg.n_subcategories)
    n, seq = enc[0].shape
    h, c = heads[1].shape[0], heads[3].shape[0]
    sizes = [n, seq, h, c]
    assert len(set(sizes)) == 4 and not set(sizes) & {cfg.dim, cfg.n_categories, len(ITEM_STATS)}
    assert heads[5].shape == (h, len(ITEM_STATS)) and heads[6].shape == (c, len(ITEM_STATS))


def test_pipeline_cold_user_end_to_end(artifacts):
    pipe = Pipeline(artifacts.root, "int8", threads=1)
    out = pipe.recommend([], ["Team wins the championship game", "Stocks rally on earnings"],
                         candidate_categories=["sports", "finance"])
    assert out["scores"].shape == (2,) and np.isfinite(out["scores"]).all()


def test_perturbed_weights_fail_the_gate(artifacts, trained_run):
    """Reference and export disagree (weights perturbed after export): the gate raises, naming the check."""
    ckpt = Checkpoint.load(trained_run)
    model = ckpt.build_model()
    with torch.no_grad():
        model.encoder.proj.weight.add_(0.05 * torch.randn_like(model.encoder.proj.weight))
    inputs = prepare(model, ckpt.parity_set[:20], ckpt.tokenizer(), ckpt.category_vocab, ckpt.subcategory_vocab)
    stats = measure(inputs, artifacts.graph("fp32", "encoder"), artifacts.graph("fp32", "heads"), ckpt.tokenizer())
    with pytest.raises(ParityError) as err:
        gate("fp32", stats, resolve_tolerances({})["fp32"])
    assert err.value.check == "encoder_cosine_min" and err.value.value < err.value.bound
    assert "fp32 parity check 'encoder_cosine_min' failed" in str(err.value)


def test_cli_fails_on_exceeded_tolerance_and_records_override(trained_run, tmp_path):
    # an impossible bound: the export must fail (exit 3), leave no fp32 artifact, and say why
    proc = subprocess.run([sys.executable, "-m", "genrec.cli", "export", "--checkpoint", str(trained_run),
                           "--out", str(tmp_path), "--precision", "fp32", "--no-latency", "--threads", str(THREADS),
                           "--tolerance", "fp32.kendall_tau_mean=1.5"], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert "fp32 parity check 'kendall_tau_mean' failed" in proc.stderr
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["tolerance_overrides"] == {"fp32.kendall_tau_mean": 1.5}
    assert not (tmp_path / "fp32").exists()
    assert json.loads((tmp_path / "artifacts.json").read_text())["precisions"] == {}


def test_unknown_tolerance_and_precision_are_rejected(trained_run, tmp_path):
    with pytest.raises(ValueError, match="unknown tolerance"):
        export(trained_run, tmp_path, ExportConfig(tolerance={"int8.speed": 1.0}))
    with pytest.raises(ValueError, match="unknown precision"):
        export(trained_run, tmp_path, ExportConfig(precision=("bf16",)))


def test_exporting_one_precision_keeps_the_others_of_the_same_weights(trained_run, artifacts, tmp_path):
    """The session's export (fp32, fp16, int8) copied, then fp16 exported again into it: the manifest still lists
    all three (it used to list only the precision just exported). Weights changed in between: the other
    precisions are stale and removed, not listed."""
    quick = {"latency": False, "threads": THREADS}
    tmp_path = tmp_path / "art"
    shutil.copytree(artifacts.root, tmp_path)
    before = json.loads((tmp_path / "artifacts.json").read_text())["precisions"]
    assert sorted(before) == ["fp16", "fp32", "int8"]
    messages: list[str] = []
    art = export(trained_run, tmp_path, ExportConfig(precision=("fp16",), **quick), log=messages.append)
    assert sorted(art.precisions) == ["fp16", "fp32", "int8"]
    assert all(art.sha256(p, "encoder") == before[p]["encoder"]["sha256"] for p in ("fp32", "int8"))
    assert {"fp32: kept from the earlier export of the same weights",
            "int8: kept from the earlier export of the same weights"} <= set(messages), messages
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert all(report["precisions"][p]["passed"] for p in ("fp16", "fp32", "int8"))

    ckpt = Checkpoint.load(trained_run)
    key = next(k for k in ckpt.state_dict if k.endswith("feature_mlp.0.bias"))
    ckpt.state_dict[key] = ckpt.state_dict[key] + 1.0                      # other weights, same shapes
    messages.clear()
    art = export(ckpt, tmp_path, ExportConfig(precision=("fp16",), **quick), log=messages.append)
    assert art.precisions == ["fp16"] and not (tmp_path / "fp32").exists() and not (tmp_path / "int8").exists()
    assert any(m.startswith("fp32: removed") for m in messages) and any(m.startswith("int8: removed") for m in messages)
