"""The anchors measured beside the served figures: in-process ONNX, PyTorch eager, perf_analyzer; and
the facts every result carries (machine, versions, process memory)."""

from __future__ import annotations

import csv
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from genrec.client import RecommendRequest

ROOT = Path(__file__).resolve().parents[1]
PERF_ANALYZER_VENV = ROOT / ".venv-perf-analyzer"     # make install-perf-analyzer: tritonclient==2.51.0, no deps


# ---- in-process anchors ------------------------------------------------------------------------
def onnx_in_process(artifacts: Path, precision: str, threads: int, device: str = "cpu"):
    """tokenizers + ORT encoder + heads in this process: the floor a server can only approach."""
    from genrec.core.runtime import Pipeline

    pipe = Pipeline(artifacts, precision, threads=threads, device=device)

    def run(r: RecommendRequest):
        return pipe.recommend(r.history, r.candidates, r.history_categories, r.history_subcategories,
                              r.candidate_categories, r.candidate_subcategories, history_stats=r.history_stats,
                              candidate_stats=r.candidate_stats)
    return run


def torch_eager(checkpoint: Path, threads: int, device: str = "cpu"):
    """The trained PyTorch model called directly: what a team would otherwise ship."""
    import torch

    from genrec.checkpoint import Checkpoint
    torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"          # the project pins the CPU wheel of torch; the anchor then runs on CPU
    run_device = device
    ckpt = Checkpoint.load(checkpoint)
    model = ckpt.build_model().to(device)
    model.eval()
    tok = ckpt.tokenizer()
    cv, sv = ckpt.category_vocab, ckpt.subcategory_vocab

    def ids(values, vocab, n):
        return torch.from_numpy(vocab.lookup(values or [""] * n)).to(device)

    def stats(values, n):
        from genrec.core.runtime import stats_or_zeros

        return torch.from_numpy(stats_or_zeros(values, n)).to(device)

    @torch.inference_mode()
    def run(r: RecommendRequest):
        t = tok([*r.history, *r.candidates])
        n_h = len(r.history)
        return model(torch.from_numpy(t.input_ids).to(device), torch.from_numpy(t.attention_mask).to(device),
                     ids(r.history_categories, cv, n_h), ids(r.history_subcategories, sv, n_h),
                     ids(r.candidate_categories, cv, len(r.candidates)),
                     ids(r.candidate_subcategories, sv, len(r.candidates)), stats(r.history_stats, n_h),
                     stats(r.candidate_stats, len(r.candidates)))
    run.device = run_device
    return run


# ---- perf_analyzer -----------------------------------------------------------------------------
def perf_analyzer_binary(explicit: str = "") -> Path | None:
    """Triton's own load generator (from the tritonclient 2.51.0 wheel, the newest that runs on glibc 2.36)."""
    for cand in (explicit, str(PERF_ANALYZER_VENV / "bin" / "perf_analyzer"), shutil.which("perf_analyzer") or ""):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def _perf_analyzer_libs(workdir: Path) -> Path:
    """perf_analyzer links libb64.so.0d and libcudart.so.12: both ship in nvidia_pytriton.libs."""
    from genrec.server.launcher import triton_home

    libs = triton_home().parent.parent / "nvidia_pytriton.libs"
    out = workdir / "perf-analyzer-libs"
    out.mkdir(parents=True, exist_ok=True)
    for pattern, name in (("libb64-*.so.0d", "libb64.so.0d"), ("libcudart-*.so.12*", "libcudart.so.12")):
        src = next(libs.glob(pattern), None)
        link = out / name
        if src is not None and not link.exists():
            link.symlink_to(src)
    return out


def perf_analyzer(binary: Path, url: str, input_json: Path, concurrency: int, workdir: Path,
                  window_ms: int = 4000, model: str = "genrec") -> dict[str, Any]:
    """One concurrency point; returns throughput and client-side latency percentiles (ms)."""
    csv_path = workdir / f"perf_analyzer_c{concurrency}.csv"
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(
        [str(_perf_analyzer_libs(workdir)), os.environ.get("LD_LIBRARY_PATH", "")]))
    cmd = [str(binary), "-m", model, "-u", url, "-i", "grpc", "--input-data", str(input_json),
           "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(window_ms),
           "--stability-percentage", "50", "--max-trials", "6", "--percentile", "99", "-f", str(csv_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    said = proc.stdout + proc.stderr
    if proc.returncode != 0 and ("stable" in said or "larger time window" in said) and window_ms < 16000:
        # no 3 consecutive windows within the stability band, or none finished a request (a slow cold request on
        # a loaded machine): longer windows settle it
        return perf_analyzer(binary, url, input_json, concurrency, workdir, window_ms * 2, model)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-2000:], "command": " ".join(cmd)}
    with open(csv_path) as fh:
        row = next(csv.DictReader(fh))
    return {"concurrency": concurrency, "throughput_rps": float(row["Inferences/Second"]),
            "latency_ms": {k: float(row[f"{k} latency"]) / 1e3 for k in ("p50", "p90", "p99")},
            "command": " ".join(cmd)}


# ---- facts -------------------------------------------------------------------------------------
def load_now() -> dict[str, Any]:
    """How the cores were shared when a point was measured: the 1-minute load average and the busiest processes
    (client, server and anything else on the machine run on the same cores)."""
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True,
                         text=True).stdout.splitlines()[:5]
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "top": [t.strip() for t in top]}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        import psutil

        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass

    def ver(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "n/a"

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": {p: ver(p) for p in ("genrec", "torch", "onnxruntime", "onnxruntime-gpu", "tritonclient",
                                              "nvidia-pytriton", "numpy", "tokenizers", "transformers")}}


def process_memory(pid: int) -> dict[str, float]:
    """RSS in MB of the server and each python-backend stub (named by the model it serves)."""
    import psutil

    out: dict[str, float] = {}
    try:
        root = psutil.Process(pid)
        out["tritonserver"] = root.memory_info().rss / 2**20
        for child in root.children(recursive=True):
            try:
                cmd = " ".join(child.cmdline())
                models = ("tokenizer", "encoder", "heads", "recommend")
                name = next((m for m in models if f"/{m}/" in cmd), child.name())
                key = f"stub:{name}"
                out[key] = out.get(key, 0.0) + child.memory_info().rss / 2**20
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    except psutil.NoSuchProcess:
        pass
    return {k: round(v, 1) for k, v in out.items()}


def ann_recall(artifacts: Path, index_dir: Path, workload, m: int, queries: int = 50) -> dict[str, Any]:
    """The served index's ANN against exact search, in process, for the users of ``workload``: tie-aware
    recall@M (an item counts when its exact score reaches the exact M-th score) and one-query latency of each."""
    import time

    import numpy as np

    from genrec.core.artifacts import Artifacts
    from genrec.core.index import ItemIndex
    from genrec.core.retrieval import OrtRetrieval, SegmentSearcher, has_retrieval

    art = Artifacts.load(artifacts)
    graph = OrtRetrieval(art.graph(has_retrieval(art), "retrieval"), threads=1)
    index = ItemIndex(index_dir)
    seg = index.segments[0]
    ann = SegmentSearcher(seg.folder)
    vectors = np.asarray(ann.vectors)                              # (N, D) the exact search reads it all
    hits, t_ann, t_exact = [], [], []
    for i in range(queries):
        rows = index.rows([h.encode() for h in workload(i).history_ids])
        hv, _, hc, hs = index.take(rows[rows >= 0])
        user = graph.user_vector(hv, hc, hs)
        t = time.perf_counter()
        found, _ = ann.search(user, m)
        t_ann.append(time.perf_counter() - t)
        t = time.perf_counter()
        s = vectors @ user
        kth = np.partition(-s, m - 1)[m - 1] * -1
        t_exact.append(time.perf_counter() - t)
        hits.append(min(m, int((s[found] >= kth - 1e-5).sum())) / m)
    return {"items": len(vectors), "m": m, "queries": queries, "kind": ann.manifest["kind"],
            "nlist": ann.manifest.get("nlist"), "nprobe": ann.manifest.get("nprobe"),
            "recall_at_m": float(np.mean(hits)), "recall_at_m_min": float(np.min(hits)),
            "ann_p50_ms": float(np.median(t_ann) * 1e3), "exact_p50_ms": float(np.median(t_exact) * 1e3)}
