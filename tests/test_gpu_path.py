"""The GPU serving path's CPU side: the TorchScript encoder export and its gate, the torch backend in the
repository builder, and `benchmarks/gpu.py`'s dry run (the same code the GPU machine runs, on CPU, small).

What only a GPU can show (FP16 numerics on CUDA, the figures) is measured by `make bench-gpu` there;
benchmarks/results/h200/ holds what it measured."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from workers import THREADS

from genrec.export import torchscript
from genrec.export.parity import ParityError, resolve_tolerances
from genrec.model_repository.torchscript_runtime import TorchScriptEncoder

PARITY_IMPRESSIONS = 6           # enough rows for every check; small enough to keep this file fast


@pytest.fixture(scope="module")
def ckpt(trained_run):
    from genrec.checkpoint import Checkpoint

    return Checkpoint.load(trained_run)


@pytest.fixture(scope="module")
def parity_inputs(ckpt):
    from genrec.export.parity import prepare

    model = ckpt.build_model()
    return model, prepare(model, ckpt.parity_set[:PARITY_IMPRESSIONS], ckpt.tokenizer(), ckpt.category_vocab,
                          ckpt.subcategory_vocab)


@pytest.fixture(scope="module")
def fp32_torchscript(ckpt, parity_inputs, artifacts, tmp_path_factory):
    model, inputs = parity_inputs
    return torchscript.export_and_gate(model.encoder, tmp_path_factory.mktemp("ts"), "fp32", inputs,
                                       artifacts.graph("fp32", "heads"), ckpt.tokenizer(),
                                       resolve_tolerances({})["fp32"], device="cpu", threads=THREADS,
                                       log=lambda _m: None)


def test_torchscript_export_passes_its_gate_and_matches_pytorch(ckpt, parity_inputs, fp32_torchscript):
    model, inputs = parity_inputs
    res = fp32_torchscript
    assert res.passed and res.error is None, res.report
    assert res.report["gate_device"] == "cpu" and res.report["gate_precision"] == "fp32"
    assert res.report["parity"]["encoder_cosine_min"] >= 0.99999 and all(c["passed"] for c in res.report["checks"])
    assert res.file_entry("fp32")["path"] == "fp32/encoder.pt" and len(res.file_entry("fp32")["sha256"]) == 64
    # the contract: int64 (N, L) in, float32 (N, D) out, any N and L, padding honoured like PyTorch
    enc = TorchScriptEncoder(res.path)
    tok = ckpt.tokenizer()(inputs.texts[:5])
    out = enc(tok.input_ids, tok.attention_mask)
    assert out.dtype.name == "float32" and out.shape == (5, ckpt.model_config.dim)
    with torch.no_grad():
        ref = model.encoder(torch.from_numpy(tok.input_ids), torch.from_numpy(tok.attention_mask)).numpy()
    assert abs(out - ref).max() < 1e-5


def test_fp16_artifact_on_cpu_is_gated_through_fp32_and_says_so(ckpt, parity_inputs, artifacts, tmp_path):
    model, inputs = parity_inputs
    res = torchscript.export_and_gate(model.encoder, tmp_path, "fp16", inputs, artifacts.graph("fp16", "heads"),
                                      ckpt.tokenizer(), resolve_tolerances({})["fp16"], device="cpu", threads=THREADS,
                                      log=lambda _m: None)
    assert res.passed, res.report
    assert res.report["precision"] == "fp16" and res.report["gate_precision"] == "fp32"
    assert "benchmarks/gpu.py" in res.report["note"]
    assert not list(tmp_path.glob(".*gate*"))                        # the FP32 twin is not left behind
    params = torch.jit.load(str(res.path)).parameters()
    assert {p.dtype for p in params} == {torch.float16}               # the artifact itself is FP16


def test_gate_fails_on_a_perturbed_encoder(ckpt, parity_inputs, artifacts, tmp_path):
    model, inputs = parity_inputs
    broken = copy.deepcopy(model.encoder)
    with torch.no_grad():
        w = broken.lm.encoder.layer[2].output.dense.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * w.std() * 0.5)
    res = torchscript.export_and_gate(broken, tmp_path, "fp32", inputs, artifacts.graph("fp32", "heads"),
                                      ckpt.tokenizer(), resolve_tolerances({})["fp32"], device="cpu", threads=THREADS,
                                      log=lambda _m: None)
    assert not res.passed and isinstance(res.error, ParityError)
    assert res.error.check == "encoder_cosine_min" and "fp32 parity check" in str(res.error)
    assert res.report["error"] == str(res.error)


@pytest.fixture(scope="module")
def gpu_model(trained_run, artifacts, fp32_torchscript, tmp_path_factory):
    """benchmarks/gpu.py prepare: the folder the GPU machine gets, here FP32 and small (from an export that
    has the TorchScript encoder gated above, as `genrec export --torchscript` writes it)."""
    import shutil

    from genrec.benchmarks.gpu import prepare

    src = tmp_path_factory.mktemp("art")
    shutil.copytree(artifacts.assets, src / "assets")
    (src / "fp32").mkdir()
    shutil.copy(artifacts.graph("fp32", "heads"), src / "fp32" / "heads.onnx")
    shutil.copy(fp32_torchscript.path, src / "fp32" / torchscript.FILENAME)
    files = {"heads": artifacts.manifest["precisions"]["fp32"]["heads"],
             torchscript.GRAPH: fp32_torchscript.file_entry("fp32")}
    (src / "artifacts.json").write_text(json.dumps(dict(artifacts.manifest, precisions={"fp32": files})))
    return prepare(trained_run, tmp_path_factory.mktemp("gpu") / "model", artifacts=src, precision="fp32",
                   catalog_items=80, parity_impressions=PARITY_IMPRESSIONS, log=lambda _m: None)


def test_repository_torch_backend_config(gpu_model, tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    from genrec.core.contract import HeadsParams, TokenizerParams, TorchEncoderParams
    from genrec.model_repository.builder import RepositoryConfig, build_repository, load_configs

    repo = build_repository(gpu_model / "artifacts", tmp_path / "repo",
                            RepositoryConfig(precision="fp32", backend="torch", device="cuda"))
    cfgs = load_configs(repo)
    enc, heads, tok = cfgs["encoder"], cfgs["heads"], cfgs["tokenizer"]
    assert enc.backend == "python" and enc.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert TorchEncoderParams.from_parameters(enc.parameters).device == "cuda"
    assert all(i.allow_ragged_batch for i in enc.input) and [o.name for o in enc.output] == ["item_vectors"]
    assert enc.dynamic_batching.max_queue_delay_microseconds > 0
    assert (repo / "encoder" / "1" / "model.pt").is_file() and not (repo / "encoder" / "1" / "model.onnx").exists()
    assert "encoder_torch import TorchEncoderModel" in (repo / "encoder" / "1" / "model.py").read_text()
    # heads and tokenizer stay python-ort on CPU (no CUDA build of ONNX Runtime where this backend is used)
    assert heads.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert HeadsParams.from_parameters(heads.parameters).device == "cpu"
    assert TokenizerParams.from_parameters(tok.parameters).pad_to == 0
    manifest = json.loads((repo / "repository.json").read_text())
    art = json.loads((gpu_model / "artifacts" / "artifacts.json").read_text())
    assert manifest["encoder_sha256"] == art["precisions"]["fp32"][torchscript.GRAPH]["sha256"]
    with pytest.raises(ValueError, match="torch backend serves"):
        build_repository(gpu_model / "artifacts", tmp_path / "bad",
                         RepositoryConfig(precision="int8", backend="torch", device="cuda"))


def test_gpu_bench_dry_run(gpu_model, tmp_path):
    """The whole GPU script on CPU: parity gate, raw anchor, a real tritonserver with the torch backend, the
    text path with two client processes, the id path, Triton's statistics and the report files."""
    from genrec.benchmarks.gpu import GpuBenchConfig, run

    res = run(GpuBenchConfig.dry(model=str(gpu_model), out=str(tmp_path / "out")), log=lambda _m: None)
    assert res["parity_gate"]["passed"] and res["parity_gate"]["device"] == "cpu"
    assert set(res["raw_anchor"]) == {"1", "4"} and res["raw_anchor"]["4"]["texts"] == 36
    assert [p["concurrency"] for p in res["text"]] == [1, 4] and res["text"][1]["client_procs"] == 2
    for p in [*res["text"], *(q for pts in res["ids"].values() for q in pts)]:
        assert p["throughput_rps"] > 0 and p["errors"] == 0, p
    enc = res["text"][0]["analysis"]["models"]["encoder"]
    assert enc["compute_ms"] > 0 and enc["inferences_per_execution"] >= 9           # 3 + 6 texts per request
    assert "encoder" in res["ids"]["u10"][0]["analysis"]["models"]                   # new items, through BLS
    assert all(t["met"] is not None for t in res["targets"]) and len(res["targets"]) == 3       # not asserted: CPU
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text())["precision"] == "fp32"
    md = (out / "results.md").read_text()
    assert "Dry run (CPU)" in md and "## Targets" in md and "limiter" in md
    assert (out / "latency.png").stat().st_size > 10_000
