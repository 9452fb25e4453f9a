"""`make bench-gpu`: the GPU serving path measured in one run on a GPU machine that has torch with CUDA and
nothing else of ours (no internet, ONNX Runtime without CUDA, numpy 2, Python 3.12; ../shared/PLATFORM.md).

Three steps, each a subcommand of ``python benchmarks/gpu.py`` (``setup`` needs only the standard library):

  prepare   here, on CPU: the model folder the GPU machine gets (``.gpu/model``): the FP16 TorchScript encoder
            (``genrec export --torchscript``), the heads, serving assets, the checkpoint's parity set with its
            PyTorch FP32 reference (for the FP16 gate on CUDA) and the benchmark catalog.
  setup     there, with the system python3: the python-backend stub's environment, i.e. a venv with numpy 1.26
            (the stub breaks on numpy 2) whose ``.pth`` files add the system site-packages (torch with CUDA,
            onnxruntime, tokenizers) and genrec's source; the wheels it lacks and a slimmed nvidia-pytriton
            (the tritonserver binary, python backend, its libraries) come along unpacked from ``--wheels``.
  run       there, in that venv (``--dry-run``: here, the same code on CPU, small and short; the tests run it):
            1. the FP16 parity gate on CUDA (TorchScript FP16 vs the PyTorch FP32 reference);
            2. the raw anchor: the same TorchScript encoder in process on the same texts (k requests' texts
               tokenized and encoded as one batch, k = 1..64: what perfect batching could reach);
            3. tritonserver on the GPU (``repository build --backend torch --device cuda``): the text path
               (the `genrec` ensemble) at concurrency 1..64 with the CPU suite's request shape (50 history +
               100 candidate texts), then the id path (item index + `recommend`), each point with Triton's
               per-model statistics (queue and compute time, executions) to say what limits it;
            4. results.json, results.md, latency.png (+ the server log) under ``--out``.

Clients: a point at concurrency c runs in ``client_procs(c)`` processes (asyncio gRPC clients, started
together on a wall-clock mark) so that one Python client process is not what is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (50, 100)                                   # the CPU suite's reference request (benchmarks/scenarios.py)
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
ID_CONCURRENCY = (1, 16, 64)
ID_UNKNOWN = (0.0, 0.1)
ANCHOR_BATCHES = (1, 2, 4, 8, 16, 32, 64)
GOAL_RATIO = 0.5                                    # served texts/s >= 50 % of the raw encoder's
GOAL_P99_C1_MS = 15.0                               # p99 at concurrency 1, 50 + 100 texts


# ---- setup (GPU machine, system python3; standard library only) ---------------------------------------------
def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """genrec's import names -> source folders, from pyproject.toml's package-dir (top-level folders map into
    the genrec namespace)."""
    import tomllib

    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    return {name: root / folder for name, folder in cfg["tool"]["setuptools"]["package-dir"].items()}


def source_tree(dest: Path, root: Path = ROOT) -> Path:
    """A folder whose ``genrec`` package is the checkout (symlinks), as `pip install -e .` would map it."""
    pkg = dest / "genrec"
    if dest.exists():
        shutil.rmtree(dest)
    pkg.mkdir(parents=True)
    dirs = package_dirs(root)
    for entry in dirs["genrec"].iterdir():
        (pkg / entry.name).symlink_to(entry)
    for name, folder in dirs.items():
        if name != "genrec" and "." in name and name.count(".") == 1:
            link = pkg / name.split(".", 1)[1]
            if not link.exists():
                link.symlink_to(folder)
    return dest


def setup(prefix: Path, wheels: Path, triton: Path) -> Path:
    """The stub's environment under ``prefix``; returns its python. Idempotent enough to rerun."""
    t = time.perf_counter()
    venv = prefix / "venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    site.mkdir(parents=True, exist_ok=True)
    whl = sorted(str(p) for p in wheels.glob("*.whl"))
    if whl:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *whl], check=True)
    if triton.is_file() and not (site / "pytriton").is_dir():
        import tarfile

        with tarfile.open(triton, "r:xz") as tar:           # stdlib lzma: no xz binary needed there
            tar.extractall(site, filter="tar")
    system = [p for p in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])]
    # .pth folders come after the venv's own site-packages: numpy 1.26 there wins over the system's numpy 2
    (site / "zz_system_site.pth").write_text("\n".join(system) + "\n")
    (site / "genrec_src.pth").write_text(str(source_tree(prefix / "src")) + "\n")
    probe = ("import numpy, torch, onnxruntime, tokenizers, tritonclient.grpc, genrec.export.torchscript; "
             "print('stub env:', 'numpy', numpy.__version__, 'torch', torch.__version__, 'cuda', "
             "torch.cuda.is_available(), 'onnxruntime', onnxruntime.__version__, 'tokenizers', tokenizers.__version__)")
    subprocess.run([str(py), "-P", "-c", probe], check=True)         # -P: the checkout's genrec/ is not the package
    print(f"setup: {venv} ready in {time.perf_counter() - t:.1f}s", flush=True)
    return py


# ---- pack + prepare (here, CPU) ------------------------------------------------------------------------------
CARRIED_WHEELS = ("numpy==1.26.4", "tritonclient", "grpcio", "protobuf", "python-rapidjson", "ml-dtypes")
PYTHON_THERE = "3.12"


def pack(out: Path = Path(".gpu"), wheels: Path = Path(".whl")) -> None:
    """What the GPU machine lacks, within the 64 MiB a run may carry: the wheels of CARRIED_WHEELS (versions as
    installed here, numpy < 2) for CPython 3.12, and nvidia-pytriton slimmed to what tritonserver and the
    python backend load (the 3.12 stub only, no bundled libpython 3.13, xz): 25 MB instead of a 55 MB wheel."""
    import importlib.metadata as md

    from genrec.server.launcher import triton_home

    pins = [w if "==" in w else f"{w}=={md.version(w)}" for w in CARRIED_WHEELS]
    plats = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                         "manylinux_2_17_x86_64", "manylinux2014_x86_64") for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", PYTHON_THERE, "--implementation", "cp", *plats, "-d", str(wheels), *pins],
                   check=True)
    site = triton_home().parents[1]
    stubs = [f"pytriton/tritonserver/python_backend_stubs/{v}" for v in ("3.8", "3.9", "3.10", "3.11", "3.13")]
    excludes = [f"--exclude={e}" for e in (*stubs, "nvidia_pytriton.libs/libpython3*", "__pycache__",
                                           "pytriton/tritonserver/backends/python/triton_python_backend_stub")]
    dist = next(p.name for p in site.glob("nvidia_pytriton-*.dist-info"))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "triton-slim.tar.xz", "wb") as fh:
        tar = subprocess.Popen(["tar", "-C", str(site), "-cf", "-", *excludes, "pytriton", "nvidia_pytriton.libs",
                                dist], stdout=subprocess.PIPE)
        subprocess.run(["xz", "-9", "-T0"], stdin=tar.stdout, stdout=fh, check=True)
        tar.wait()
    print(f"packed {wheels}/ ({', '.join(pins)}) and {out}/triton-slim.tar.xz")


def prepare(checkpoint: Path, out: Path, *, artifacts: Path | None = None, precision: str = "fp16",
            catalog_items: int = 3000, parity_impressions: int = 300, threads: int = 2, log=print) -> Path:
    """Write ``out``: artifacts/ (assets, <precision>/heads.onnx + encoder.pt, artifacts.json), parity.pkl,
    catalog/news.tsv + behaviors.tsv. ``artifacts`` without a TorchScript encoder gets one here (traced
    from the checkpoint, gated on CPU as export does)."""
    import pickle

    from genrec.checkpoint import Checkpoint
    from genrec.data.synth import SynthConfig, synthesize
    from genrec.export import Artifacts, ExportConfig, export, torchscript
    from genrec.export.parity import ExportError, resolve_tolerances
    from genrec.export.parity import prepare as parity_prepare

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    ckpt = Checkpoint.load(checkpoint)
    work = out.parent / f".{out.name}-work"
    if artifacts is None:                   # FP32 ONNX (assets, heads); the TorchScript encoder is traced below
        artifacts = work / "artifacts"
        export(ckpt, artifacts, ExportConfig(precision=("fp32",), latency=False, threads=threads), log=log)
    src = Artifacts.load(artifacts)
    art = out / "artifacts"
    shutil.copytree(src.assets, art / "assets")
    (art / precision).mkdir(parents=True)
    # the heads run on CPU (ONNX Runtime there has no CUDA): the export's heads of this precision, else FP32's
    heads_prec = precision if precision in src.precisions else "fp32"
    shutil.copy(src.graph(heads_prec, "heads"), art / precision / "heads.onnx")
    files = {"heads": dict(src.manifest["precisions"][heads_prec]["heads"], path=f"{precision}/heads.onnx",
                           precision=heads_prec)}
    model = ckpt.build_model()
    tokenizer = ckpt.tokenizer()
    subset = ckpt.parity_set[:parity_impressions]
    inputs = parity_prepare(model, subset, tokenizer, ckpt.category_vocab, ckpt.subcategory_vocab)
    report: dict[str, Any] = {}
    if torchscript.GRAPH in src.manifest["precisions"].get(precision, {}):
        shutil.copy(src.graph(precision, torchscript.GRAPH), art / precision / torchscript.FILENAME)
        files[torchscript.GRAPH] = src.manifest["precisions"][precision][torchscript.GRAPH]
    else:
        tol = resolve_tolerances({})[precision]
        res = torchscript.export_and_gate(model.encoder, art / precision, precision, inputs,
                                          art / precision / "heads.onnx", tokenizer, tol, threads=threads, log=log)
        if not res.passed:
            raise ExportError(f"TorchScript {precision} encoder failed its gate: {res.error}")
        files[torchscript.GRAPH], report = res.file_entry(precision), res.report
    manifest = dict(src.manifest, precisions={precision: files})
    (art / "artifacts.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (art / "torchscript_report.json").write_text(json.dumps(report or _export_report(src, precision), indent=2))
    with open(out / "parity.pkl", "wb") as fh:
        pickle.dump({"precision": precision, "inputs": inputs}, fh)
    cat = work / "catalog"
    synthesize(cat, SynthConfig(users=50, items=catalog_items, seed=7))           # as the CPU suite's catalog
    (out / "catalog").mkdir()
    for name in ("news.tsv", "behaviors.tsv"):
        shutil.copy(cat / "train" / name, out / "catalog" / name)
    shutil.rmtree(work, ignore_errors=True) if artifacts == work / "artifacts" else None
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"prepared {out}: {size / 2**20:.1f} MiB ({len(inputs.impressions)} parity impressions, "
        f"{len(inputs.texts)} texts)")
    return out


def _export_report(src, precision: str) -> dict:
    path = src.root / "export_report.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["precisions"].get(precision, {}).get("torchscript", {})


# ---- run (GPU machine in the stub venv; --dry-run here on CPU) ----------------------------------------------
@dataclasses.dataclass
class GpuBenchConfig:
    model: str = ".gpu/model"
    out: str = "build/bench-gpu"
    work: str = ""                                   # default: OUT/../<name>-work (repository, index, stats)
    dry_run: bool = False
    device: str = "cuda"
    shape: tuple[int, int] = SHAPE
    concurrency: tuple[int, ...] = CONCURRENCY
    id_concurrency: tuple[int, ...] = ID_CONCURRENCY
    anchor_batches: tuple[int, ...] = ANCHOR_BATCHES
    warmup_s: float = 1.0
    duration_s: float = 3.0
    min_requests: int = 20
    tokenizer_instances: int = 4
    heads_instances: int = 2
    recommend_instances: int = 4
    encoder_max_batch: int = 4096
    max_queue_delay_us: int = 1000
    max_client_procs: int = 4

    @classmethod
    def dry(cls, **kw) -> GpuBenchConfig:
        """The same code on CPU, small: what the tests run."""
        return cls(**{"dry_run": True, "device": "cpu", "shape": (3, 6), "concurrency": (1, 4),
                      "id_concurrency": (2,), "anchor_batches": (1, 4), "warmup_s": 0.2, "duration_s": 0.6,
                      "min_requests": 2, "tokenizer_instances": 1, "heads_instances": 1, "recommend_instances": 1,
                      "encoder_max_batch": 0, "max_client_procs": 2} | kw)


def client_procs(concurrency: int, most: int) -> int:
    return max(1, min(most, concurrency // 2))


def gpu_facts(device: str) -> dict[str, Any]:
    import torch

    from genrec.benchmarks import anchors

    facts: dict[str, Any] = {"host": anchors.machine_info(), "torch": torch.__version__,
                             "torch_cuda": torch.version.cuda, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                  "multiprocessors": p.multi_processor_count, "capability": f"{p.major}.{p.minor}"}
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if q.returncode == 0:
            facts["nvidia_smi"] = q.stdout.strip()
            facts["driver"] = q.stdout.split(",")[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return facts


def parity_gate(model_dir: Path, art, device: str, log) -> dict[str, Any]:
    """The TorchScript artifact against the PyTorch FP32 reference on ``device``, with its precision's bounds."""
    import pickle

    from genrec.core.artifacts import ServingAssets
    from genrec.export import torchscript
    from genrec.export.parity import ParityError, gate, measure, resolve_tolerances
    from genrec.model_repository.torchscript_runtime import TorchScriptEncoder

    path = model_dir / "parity.pkl"
    if not path.is_file():
        return {"skipped": f"{path} not found"}
    with open(path, "rb") as fh:
        saved = pickle.load(fh)
    prec = saved["precision"]
    tok = ServingAssets.load(art.assets).tokenizer()
    t = time.perf_counter()
    stats = measure(saved["inputs"], TorchScriptEncoder(art.graph(prec, torchscript.GRAPH), device),
                    art.graph(prec, "heads"), tok)
    out: dict[str, Any] = {"precision": prec, "device": device, "parity": stats,
                           "tolerances": resolve_tolerances({})[prec]}
    try:
        out["checks"] = [dataclasses.asdict(r) | {"passed": r.passed} for r in gate(prec, stats, out["tolerances"])]
        out["passed"] = True
    except ParityError as err:
        out["passed"], out["error"] = False, str(err)
    out["seconds"] = round(time.perf_counter() - t, 1)
    log(f"parity gate {prec} on {device}: cosine min {stats['encoder_cosine_min']:.6f} mean "
        f"{stats['encoder_cosine_mean']:.6f}, AUC drop {stats['auc_drop']:+.5f}, tau {stats['kendall_tau_mean']:.4f}"
        f" -> {'PASS' if out['passed'] else 'FAIL: ' + out['error']}")
    return out


def raw_anchor(art, prec: str, device: str, requests, batches: tuple[int, ...], min_s: float) -> dict[str, Any]:
    """The same TorchScript encoder in this process on the same texts: k requests' texts as one batch
    (tokenize + host->device + encode + device->host), and the encoder alone on pre-tokenized input."""
    import numpy as np

    from genrec.core.artifacts import ServingAssets
    from genrec.export import torchscript
    from genrec.model_repository.torchscript_runtime import TorchScriptEncoder

    enc = TorchScriptEncoder(art.graph(prec, torchscript.GRAPH), device)
    tok = ServingAssets.load(art.assets).tokenizer()

    def timed(fn, runs_min: int = 5) -> list[float]:
        for _ in range(3):
            fn()
        times: list[float] = []
        t0 = time.perf_counter()
        while len(times) < runs_min or time.perf_counter() - t0 < min_s:
            s = time.perf_counter()
            fn()
            times.append(time.perf_counter() - s)
        return times

    out: dict[str, Any] = {}
    for k in batches:
        texts = [t for r in (requests[i % len(requests)] for i in range(k)) for t in (*r.history, *r.candidates)]
        t_tok = timed(lambda texts=texts: tok(texts))
        ids = tok(texts)
        t_enc = timed(lambda ids=ids: enc(ids.input_ids, ids.attention_mask))
        t_all = timed(lambda texts=texts: enc(*(lambda x: (x.input_ids, x.attention_mask))(tok(texts))))
        med = {n: float(np.median(v)) * 1e3 for n, v in (("tokenize", t_tok), ("encode", t_enc), ("total", t_all))}
        out[str(k)] = {"requests": k, "texts": len(texts), "tokens": int(ids.attention_mask.sum()),
                       "width": int(ids.input_ids.shape[1]), "tokenize_ms": med["tokenize"],
                       "encode_ms": med["encode"], "total_ms": med["total"],
                       "p99_total_ms": float(np.percentile(t_all, 99)) * 1e3,
                       "texts_per_s": len(texts) / (med["total"] / 1e3),
                       "encoder_only_texts_per_s": len(texts) / (med["encode"] / 1e3)}
    return out


def _warm_worker(_i: int) -> int:
    """Import what a client process needs before its first point (spawned processes start empty)."""
    import genrec.benchmarks.loadgen  # noqa: F401
    import genrec.benchmarks.workload  # noqa: F401

    return os.getpid()


def _client_worker(job: tuple) -> dict[str, Any]:
    """One client process of a point: wait for the common start mark, then a closed loop."""
    url, kind, payload, concurrency, timing, t_go = job
    from genrec.benchmarks.loadgen import served_point
    from genrec.benchmarks.workload import IdWorkload

    work = IdWorkload(*payload) if kind == "ids" else payload
    time.sleep(max(0.0, t_go - time.time()))
    return served_point(url, work, concurrency, timing, keep_latencies=True)


def served(url: str, kind: str, payload, concurrency: int, timing, procs: int, pool) -> dict[str, Any]:
    """One point; with procs > 1 the clients split over processes, and their latencies are merged."""
    from genrec.benchmarks.loadgen import latency_stats

    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    t_go = time.time() + (1.0 if procs > 1 else 0.0)                 # a common start mark for every process
    jobs = []
    for i, c in enumerate(shares):
        p = payload
        if kind == "ids":                           # each process its own seed (distinct new items)
            p = (*payload[:4], 1000 * concurrency + i)
        jobs.append((url, kind, p, c, timing, t_go))
    parts = pool.map(_client_worker, jobs) if procs > 1 else [_client_worker(jobs[0])]
    lat = [x for p in parts for x in p.pop("latencies_s")]
    thr = sum(p["throughput_rps"] for p in parts)
    items = parts[0]["items_per_s"] / parts[0]["throughput_rps"] if parts[0]["throughput_rps"] else 0.0
    return {"concurrency": concurrency, "client_procs": procs, "requests": sum(p["requests"] for p in parts),
            "errors": sum(p["errors"] for p in parts), "window_s": max(p["window_s"] for p in parts),
            "throughput_rps": thr, "items_per_s": thr * items, "latency_ms": latency_stats(lat),
            "server": parts[0]["server"]}


def analyse(point: dict[str, Any], instances: dict[str, int]) -> dict[str, Any]:
    """From Triton's per-model statistics over the window: each model's busy share of its instances, mean
    queue and compute per request, encoder texts per execution; and the part of the client's latency that
    no model accounts for (gRPC, (de)serialization, ensemble hand-offs, the client)."""
    s, window = point["server"], point["window_s"] or 1.0
    out: dict[str, Any] = {"models": {}}
    for name, m in s.items():
        if not m["requests"]:
            continue
        if name not in instances:                   # the ensemble: its time is its steps' time
            out[name] = {"queue_ms": m["queue_ms"], "compute_ms": m["compute_ms"]}
            continue
        # busy: Triton's per-execution (batch) compute time over the window and the instances; its per-request
        # compute charges a batch's whole duration to every request in it (the fallback where no batch stats)
        exec_ms = m.get("busy_ms") or m["compute_ms"] * m["executions"]
        per_exec = exec_ms / max(1, m["executions"])
        busy = exec_ms / 1e3 / window / instances[name]
        out["models"][name] = {"queue_ms": m["queue_ms"], "compute_ms": m["compute_ms"], "busy": busy,
                               "compute_ms_per_execution": per_exec,
                               "requests_per_execution": m["requests"] / max(1, m["executions"]),
                               "inferences_per_execution": m["inferences"] / max(1, m["executions"])}
    steps = [n for n in ("tokenizer", "encoder", "heads", "recommend") if n in out["models"]]
    in_models = sum(out["models"][n]["queue_ms"] + out["models"][n]["compute_ms"] for n in steps
                    if not (n == "encoder" and "recommend" in out["models"]))      # BLS: inside recommend
    out["outside_models_ms"] = point["latency_ms"]["mean"] - in_models
    busiest = max(steps, key=lambda n: out["models"][n]["busy"], default=None)
    if busiest is not None and out["models"][busiest]["busy"] >= 0.8:
        out["limiter"] = f"{busiest} ({out['models'][busiest]['busy']:.0%} busy)"
    elif out["outside_models_ms"] > 0.5 * point["latency_ms"]["mean"]:
        out["limiter"] = "outside the models: gRPC, (de)serialization, client"
    else:
        out["limiter"] = "none saturated (latency-bound: one request's own path)"
    return out


def run(cfg: GpuBenchConfig, log=print) -> dict[str, Any]:
    import multiprocessing as mp

    from genrec.benchmarks.loadgen import Timing
    from genrec.benchmarks.workload import load_catalog, make_requests
    from genrec.core.index import IndexConfig, build_index
    from genrec.core.statstore import StatsTable, build_stats
    from genrec.export import Artifacts, torchscript
    from genrec.index_encoders import ALL
    from genrec.model_repository.builder import RepositoryConfig, build_repository
    from genrec.server.launcher import running_server

    t_start = time.perf_counter()
    model_dir, out = Path(cfg.model).resolve(), Path(cfg.out).resolve()
    work = Path(cfg.work).resolve() if cfg.work else out.parent / f"{out.name}-work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    art = Artifacts.load(model_dir / "artifacts")
    (prec,) = [p for p in art.precisions if torchscript.GRAPH in art.manifest["precisions"][p]][:1] or [None]
    if prec is None:
        raise SystemExit(f"{art.root} has no TorchScript encoder: run `python benchmarks/gpu.py prepare` first")
    device = cfg.device
    res: dict[str, Any] = {"config": dataclasses.asdict(cfg), "precision": prec, "facts": gpu_facts(device),
                           "export": json.loads((art.root / "torchscript_report.json").read_text())
                           if (art.root / "torchscript_report.json").is_file() else {}}
    log(f"facts: {json.dumps({k: v for k, v in res['facts'].items() if k != 'host'})}")
    res["parity_gate"] = parity_gate(model_dir, art, device, log)

    news = model_dir / "catalog" / "news.tsv"
    catalog = load_catalog(news)
    stats_dir = build_stats([news.parent / "behaviors.tsv"], work / "stats", log=log)
    table = StatsTable.read(stats_dir)
    reqs = make_requests(catalog, *cfg.shape, stats=table)
    texts_per_request = sum(cfg.shape)

    log("raw anchor: TorchScript encoder in process")
    res["raw_anchor"] = raw_anchor(art, prec, device, reqs, cfg.anchor_batches, min_s=cfg.duration_s / 3)
    for k, a in res["raw_anchor"].items():
        log(f"  {k:>3} requests ({a['texts']} texts): tokenize {a['tokenize_ms']:.2f} ms, encode "
            f"{a['encode_ms']:.2f} ms, total {a['total_ms']:.2f} ms -> {a['texts_per_s']:,.0f} texts/s")

    t = time.perf_counter()
    index = build_index(news, art.root, work / "index", IndexConfig(precision=prec, encoder="torchscript",
                                                                     device=device), progress=False, log=log,
                        encoders=ALL)
    res["index_seconds"] = round(time.perf_counter() - t, 1)
    rc = RepositoryConfig(precision=prec, backend="torch", device=device, index=str(index), stats=str(stats_dir),
                          tokenizer_instances=cfg.tokenizer_instances, heads_instances=cfg.heads_instances,
                          recommend_instances=cfg.recommend_instances, encoder_max_batch=cfg.encoder_max_batch,
                          max_queue_delay_us=cfg.max_queue_delay_us, stats_refresh_ms=0)
    repo = build_repository(art.root, work / "repo", rc)
    instances = {"tokenizer": rc.tokenizer_instances, "encoder": rc.encoder_instances, "heads": rc.heads_instances,
                 "recommend": rc.recommend_instances}
    res["repository"] = dataclasses.asdict(rc)
    timing = Timing(cfg.warmup_s, cfg.duration_s, cfg.min_requests, max_duration_s=max(10.0, 3 * cfg.duration_s))
    log_file = out / "tritonserver.log"
    t = time.perf_counter()
    ctx = mp.get_context("spawn")
    cwd = os.getcwd()
    os.chdir(work)          # the stubs put their cwd on sys.path: a checkout's genrec/ folder is not the package
    try:
        with running_server(repo, log_file=str(log_file)) as server, ctx.Pool(cfg.max_client_procs) as pool:
            import tritonclient.grpc as grpcclient

            pool.map(_warm_worker, range(cfg.max_client_procs))
            res["server_ready_s"] = round(time.perf_counter() - t, 1)
            res["server_version"] = grpcclient.InferenceServerClient(server.grpc_url).get_server_metadata().version
            log(f"tritonserver {res['server_version']} ready in {res['server_ready_s']} s")
            res["text"] = []
            for c in cfg.concurrency:
                p = served(server.grpc_url, "text", reqs, c, timing, client_procs(c, cfg.max_client_procs), pool)
                p["analysis"] = analyse(p, instances)
                res["text"].append(p)
                log(_line(f"text c={c}", p, texts_per_request))
            res["ids"] = {}
            for u in ID_UNKNOWN:
                pts = []
                for c in cfg.id_concurrency:
                    payload = (catalog, *cfg.shape, u)
                    p = served(server.grpc_url, "ids", payload, c, timing, client_procs(c, cfg.max_client_procs), pool)
                    p["analysis"] = analyse(p, instances)
                    pts.append(p)
                    log(_line(f"ids u={u:g} c={c}", p, texts_per_request))
                res["ids"][f"u{u * 100:g}"] = pts
            from genrec.benchmarks import anchors

            res["memory_mb"] = anchors.process_memory(server.proc.pid)
    finally:
        os.chdir(cwd)
    res["targets"] = targets(res)
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "results.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    (out / "results.md").write_text(markdown(res))
    from genrec.benchmarks.report import plot_or_say

    plot_or_say(plot, res, out / "latency.png")
    for tg in res["targets"]:
        log(f"target: {tg['target']}: {tg['value']} ({tg['op']} {tg['bound']}) -> {tg['met']}")
    log(f"wrote {out}/results.json, results.md, latency.png in {res['seconds']} s")
    return res


def _line(name: str, p: dict, texts: int) -> str:
    a = p["analysis"]
    enc = a["models"].get("encoder", {})
    return (f"  {name:<14} {p['throughput_rps']:8.1f} req/s {p['throughput_rps'] * texts:9,.0f} texts/s  p50 "
            f"{p['latency_ms']['p50']:7.2f}  p99 {p['latency_ms']['p99']:7.2f} ms  errors {p['errors']}  encoder "
            f"{enc.get('inferences_per_execution', 0):.0f} texts/exec  limiter: {a['limiter']}")


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    text = res.get("text", [])
    texts = sum(res["config"]["shape"])
    out = []
    if text:
        best = max(text, key=lambda p: p["throughput_rps"])
        anchor = res["raw_anchor"]
        same = anchor.get(str(best["concurrency"])) or anchor[max(anchor, key=int)]
        peak = max(anchor.values(), key=lambda a: a["texts_per_s"])
        served_tps = best["throughput_rps"] * texts
        out.append({"target": f"served texts/s at the best concurrency ({best['concurrency']}) / raw encoder "
                              f"texts/s ({same['requests']} requests' texts in one batch)",
                    "value": round(served_tps / same["texts_per_s"], 3), "bound": GOAL_RATIO, "op": ">=",
                    "met": served_tps / same["texts_per_s"] >= GOAL_RATIO,
                    "note": f"served {served_tps:,.0f} texts/s; raw {same['texts_per_s']:,.0f} texts/s; raw peak "
                            f"{peak['texts_per_s']:,.0f} texts/s at {peak['requests']} requests per batch"})
        c1 = next((p for p in text if p["concurrency"] == 1), None)
        if c1:
            out.append({"target": f"p99 ms at concurrency 1 ({res['config']['shape'][0]} history + "
                                  f"{res['config']['shape'][1]} candidate texts)",
                        "value": round(c1["latency_ms"]["p99"], 2), "bound": GOAL_P99_C1_MS, "op": "<=",
                        "met": c1["latency_ms"]["p99"] <= GOAL_P99_C1_MS, "note": ""})
    gate = res.get("parity_gate", {})
    if "passed" in gate:
        out.append({"target": f"{gate['precision']} TorchScript parity gate on {gate['device']}",
                    "value": round(gate["parity"]["encoder_cosine_min"], 6),
                    "bound": gate["tolerances"]["encoder_cosine_min"], "op": ">=", "met": gate["passed"],
                    "note": gate.get("error", "")})
    return out


def markdown(res: dict[str, Any]) -> str:
    f = res["facts"]
    texts = sum(res["config"]["shape"])
    pk = f["host"]["packages"]
    lines = ["# GPU serving benchmark (`make bench-gpu`)", "",
             f"Machine: {f.get('gpu', 'no GPU')} ({f.get('gpu_memory_gib', '-')} GiB, driver {f.get('driver', '-')}), "
             f"{f['host']['cpu']} x{f['host']['cores']}; Python {f['host']['python']}, torch {f['torch']} "
             f"(CUDA {f['torch_cuda']}), tritonserver {res.get('server_version', '-')} (nvidia-pytriton "
             f"{pk.get('nvidia-pytriton')}), numpy {pk.get('numpy')}, onnxruntime {pk.get('onnxruntime')} (heads, "
             f"CPU), tokenizers {pk.get('tokenizers')}, tritonclient {pk.get('tritonclient')}."
             + (" **Dry run (CPU): not a GPU measurement.**" if res["config"]["dry_run"] else ""), "",
             f"Encoder: TorchScript {res['precision']} on {res['facts']['device']} in Triton's python backend "
             f"(`--backend torch`); tokenizer and heads python-ort on CPU. Requests: {res['config']['shape'][0]} "
             f"history + {res['config']['shape'][1]} candidate texts (every text encoded), closed-loop gRPC "
             f"clients; windows {res['config']['duration_s']} s after {res['config']['warmup_s']} s warm-up.", "",
             "## Targets", "", "| target | value | bound | met | note |", "|---|---|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {t['op']} {t['bound']} | "
                     f"{'yes' if t['met'] else 'NO'} | {t['note']} |")
    g = res.get("parity_gate", {})
    if "parity" in g:
        p = g["parity"]
        lines += ["", f"## Parity gate ({g['precision']} TorchScript on {g['device']}, vs PyTorch FP32)", "",
                  "| cosine min | cosine mean | heads max abs diff | AUC drop | Kendall tau | impressions | gate |",
                  "|---|---|---|---|---|---|---|",
                  f"| {p['encoder_cosine_min']:.6f} | {p['encoder_cosine_mean']:.6f} | {p['heads_max_abs_diff']:.2e} "
                  f"| {p['auc_drop']:+.5f} | {p['kendall_tau_mean']:.4f} | {p['impressions']} "
                  f"| {'pass' if g['passed'] else 'FAIL'} |"]
    lines += ["", "## Raw anchor: the same TorchScript encoder in process", "",
              "| requests per batch | texts | tokenize ms | encode ms | total ms | texts/s | encoder-only texts/s |",
              "|---|---|---|---|---|---|---|"]
    for a in res["raw_anchor"].values():
        lines.append(f"| {a['requests']} | {a['texts']} | {a['tokenize_ms']:.2f} | {a['encode_ms']:.2f} "
                     f"| {a['total_ms']:.2f} | {a['texts_per_s']:,.0f} | {a['encoder_only_texts_per_s']:,.0f} |")
    head = ("| concurrency | client procs | req/s | texts/s | p50 ms | p90 ms | p99 ms | errors | tokenizer q/c ms "
            "| encoder q/c ms | encoder texts/exec | heads q/c ms | busiest | outside models ms | limiter |")

    def row(p: dict) -> str:
        a, lat = p["analysis"], p["latency_ms"]

        def qc(name: str) -> str:
            m = a["models"].get(name)
            return f"{m['queue_ms']:.2f} / {m['compute_ms']:.2f}" if m else "-"
        steps = {n: m["busy"] for n, m in a["models"].items()}
        busiest = max(steps, key=steps.get) if steps else "-"
        enc = a["models"].get("encoder", {})
        return (f"| {p['concurrency']} | {p['client_procs']} | {p['throughput_rps']:.1f} "
                f"| {p['throughput_rps'] * texts:,.0f} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} "
                f"| {p['errors']} | {qc('tokenizer')} | {qc('encoder')} | {enc.get('inferences_per_execution', 0):.0f} "
                f"| {qc('heads') if 'heads' in a['models'] else qc('recommend')} "
                f"| {busiest} {steps.get(busiest, 0):.0%} | {a['outside_models_ms']:.2f} | {a['limiter']} |")
    lines += ["", "## Text path (the `genrec` ensemble: tokenizer -> encoder -> heads)", "",
              "q/c = Triton's mean queue / compute ms per request of that model; busy = compute time over the "
              "window and the model's instances (Triton's statistics); outside models = client mean latency minus "
              "every model's queue + compute (gRPC, (de)serialization, ensemble hand-offs, the client).", "",
              head, "|" + "---|" * 15]
    lines += [row(p) for p in res.get("text", [])]
    for key, pts in res.get("ids", {}).items():
        lines += ["", f"## Id path, {key[1:]} % new candidates (item index + `recommend`; new items encoded through "
                      "the encoder by BLS; heads q/c column = `recommend`)", "", head, "|" + "---|" * 15]
        lines += [row(p) for p in pts]
    lines += ["", f"Server memory (RSS MB): {res.get('memory_mb')}. Run took {res.get('seconds')} s.", ""]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:                      # the report stays complete without the picture
        return
    texts = sum(res["config"]["shape"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = [("text path", res.get("text", []))] + [(f"id path {k}", v) for k, v in res.get("ids", {}).items()]
    for name, pts in series:
        if not pts:
            continue
        c = [p["concurrency"] for p in pts]
        ax1.plot(c, [p["latency_ms"]["p50"] for p in pts], "o-", label=f"{name} p50")
        ax1.plot(c, [p["latency_ms"]["p99"] for p in pts], "x--", label=f"{name} p99")
        ax2.plot(c, [p["throughput_rps"] * texts for p in pts], "o-", label=f"{name} served")
    anchor = res["raw_anchor"]
    ax2.plot([a["requests"] for a in anchor.values()], [a["texts_per_s"] for a in anchor.values()], "s:",
             label="raw encoder in process (k requests per batch)")
    ax1.axhline(GOAL_P99_C1_MS, color="grey", lw=0.8, ls=":")
    for ax, ylabel in ((ax1, "latency ms"), (ax2, "texts/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax2.set_yscale("log")
    fig.suptitle(f"genrec on {res['facts'].get('gpu', 'CPU (dry run)')}: TorchScript {res['precision']} encoder in "
                 f"Triton, {res['config']['shape'][0]}+{res['config']['shape'][1]} texts per request", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/gpu.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="here: the model folder for the GPU machine")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default=".gpu/model")
    p.add_argument("--artifacts", default="", help="ART_DIR with a TorchScript encoder (default: export one)")
    p.add_argument("--precision", default="fp16", choices=("fp16", "fp32"))
    p.add_argument("--catalog-items", type=int, default=3000)
    p.add_argument("--parity-impressions", type=int, default=300)
    k = sub.add_parser("pack", help="here: the wheels and the slimmed tritonserver the GPU machine lacks")
    k.add_argument("--out", default=".gpu")
    k.add_argument("--wheels", default=".whl")
    s = sub.add_parser("setup", help="GPU machine, system python3: the stub's venv (numpy<2 + system torch)")
    s.add_argument("--prefix", default="/tmp/genrec-gpu")
    s.add_argument("--wheels", default=".whl", help="folder of carried wheels (numpy 1.26.4, tritonclient, ...)")
    s.add_argument("--triton", default=".gpu/triton-slim.tar.xz", help="slimmed nvidia-pytriton (tar.xz)")
    r = sub.add_parser("run", help="the benchmark (GPU machine in the stub venv; --dry-run: CPU, small)")
    r.add_argument("--model", default=".gpu/model")
    r.add_argument("--out", default="build/bench-gpu")
    r.add_argument("--work", default="")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--duration", type=float, default=None, help="seconds per point (default 3; dry run 1)")
    args = ap.parse_args(argv)
    if args.cmd == "setup":
        setup(Path(args.prefix), Path(args.wheels), Path(args.triton))
        return 0
    if args.cmd == "pack":
        pack(Path(args.out), Path(args.wheels))
        return 0
    if args.cmd == "prepare":
        prepare(Path(args.checkpoint), Path(args.out), artifacts=Path(args.artifacts) if args.artifacts else None,
                precision=args.precision, catalog_items=args.catalog_items,
                parity_impressions=args.parity_impressions)
        return 0
    kw: dict[str, Any] = {"model": args.model, "out": args.out, "work": args.work}
    if args.duration:
        kw["duration_s"] = args.duration
    cfg = GpuBenchConfig.dry(**kw) if args.dry_run else GpuBenchConfig(**kw)
    res = run(cfg, log=lambda m: print(m, flush=True))
    return 0 if all(t["met"] is not False for t in res["targets"] if "parity" in t["target"]) else 3


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
