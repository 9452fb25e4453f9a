"""Where one id-path call's time goes (issue 28), measured on one served `recommend` model in one run.

    python -m genrec.benchmarks.breakdown --out benchmarks/results/idpath-breakdown [--items 1000000]

For concurrency 1 and 16, on the same server (the 1M-item INT8 index, item statistics, H50 C100, every item
indexed), in this order:
  1. genrec's async client (the benchmark's closed loop) with py-spy sampling the `recommend` stubs and this
     process, and Triton's per-model statistics (queue, compute input / infer / output) over the same window;
  2. Triton's perf_analyzer (C++) on the same model with requests of the same shape;
  3. at concurrency 1 only: the sync client's own steps timed one by one (check, encode, RPC, decode).
Writes OUT/breakdown.json and OUT/breakdown.md; the load average and the processes sharing the cores are
recorded with every point (the machine has 2 cores and other work may run). py-spy is not a dependency:
``pip install py-spy`` in the venv (without it ``py_spy`` is false in the JSON and the profile tables are empty).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from genrec.benchmarks import anchors
from genrec.benchmarks.loadgen import Timing, read_answer, served_point
from genrec.benchmarks.workload import IdWorkload, load_catalog, perf_analyzer_id_json

# the recommend model's own steps: a frame (function name, file) -> the step it belongs to; a sample counts for
# the innermost listed frame of its stack (see _steps)
STEPS = (
    ("validate", ("validate_ids", "requests.py"), ("validate_retrieval", "requests.py"),
     ("validate_profile", "requests.py"), ("refuse_retrieval_options", "requests.py")),
    ("read inputs", ("get_input", "common.py"), ("get_optional", "common.py")),
    ("index lookup", ("rows", "index.py")),
    ("index take (vectors)", ("take", "index.py")),
    ("stats lookup", ("lookup", "statstore.py")),
    ("ORT heads", ("__call__", "runtime.py")),
    ("response building", ("response", "common.py")),
)
STUB_TOTAL = ("execute", "recommend.py")
CLIENT_STEPS = (
    ("check (prepare)", ("prepare", "common.py")),
    ("encode inputs + request message", ("encode_inputs", "common.py"), ("request", "wire.py"),
     ("_get_inference_request", "_utils.py")),
    ("decode", ("decode", "common.py"), ("__init__", "_infer_result.py")),
    ("tritonclient / grpc.aio call", ("infer", "__init__.py"), ("call", "common.py")),
)
FRAME = re.compile(r"^(?P<fn>[^ ]+) \((?P<file>[^:)]+)(?::\d+)?\)$")


def _pyspy() -> str | None:
    exe = Path(sys.executable).with_name("py-spy")
    return str(exe) if exe.is_file() else shutil.which("py-spy")


def _record(pids: list[int], seconds: float, out: Path, rate: int = 250) -> list[subprocess.Popen]:
    exe = _pyspy()
    if exe is None:
        return []
    return [subprocess.Popen([exe, "record", "--nonblocking", "--format", "raw", "-r", str(rate), "-d",
                              str(max(1, int(seconds))), "-o", str(out.with_suffix(f".{pid}.txt")), "-p", str(pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in pids]


def _frames(line: str) -> tuple[list[tuple[str, str, str]], int]:
    stack, _, count = line.rpartition(" ")
    frames = []
    for f in stack.split(";"):
        m = FRAME.match(f.strip())
        if m:          # py-spy names methods Class.method: the step tables name the function
            frames.append((m["fn"].rsplit(".", 1)[-1], Path(m["file"]).name, m["fn"]))
    return frames, int(count)


def _steps(files: list[Path], steps, total_frame) -> dict[str, Any]:
    """Samples per step (the innermost listed frame of each stack), among the samples inside ``total_frame``
    (None: every sample); plus the top self frames."""
    per: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    lookup = {frame: name for name, *frames in steps for frame in frames}
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            frames, n = _frames(line)
            keys = [f[:2] for f in frames]
            if total_frame is not None and total_frame not in keys:
                continue
            total += n
            step = next((lookup[k] for k in reversed(keys) if k in lookup), "other")
            per[step] += n
            if frames:
                own[f"{frames[-1][2]} ({frames[-1][1]})"] += n
    return {"samples": total, "steps": {k: per[k] for k, *_ in steps} | {"other": per["other"]},
            "top_self": own.most_common(12)}


def _model_stats(url: str, model: str = "recommend") -> dict[str, float]:
    import tritonclient.grpc as grpcclient

    s = grpcclient.InferenceServerClient(url).get_inference_statistics(model).model_stats[0].inference_stats
    return {"count": s.success.count, "queue": s.queue.ns, "input": s.compute_input.ns,
            "infer": s.compute_infer.ns, "output": s.compute_output.ns}


def _per_request(before: dict, after: dict) -> dict[str, float]:
    n = max(1, after["count"] - before["count"])
    return {"requests": after["count"] - before["count"],
            **{f"{k}_ms": (after[k] - before[k]) / n / 1e6 for k in ("queue", "input", "infer", "output")}}


def _client_steps(url: str, workload, n: int) -> dict[str, float]:
    """The sync client's steps, one by one, mean ms over ``n`` calls at concurrency 1."""
    from genrec.client import RecommenderClient, common

    client = RecommenderClient(url, timeout=30, retries=0)
    served = client.served(client.index_model)
    acc: collections.defaultdict = collections.defaultdict(list)
    for i in range(n + 20):
        req = workload(i)
        t0 = time.perf_counter()
        if hasattr(common, "Call"):
            call = common.Call(client, req)
            call.check(served)
            t1 = time.perf_counter()
            call.encode()
            t2 = time.perf_counter()
            result = call.infer(client._grpc)(30.0)
            t3 = time.perf_counter()
            read_answer(call.decode(result))          # what the closed loop reads of every answer
        else:                              # the client before issue 28 (tritonclient's InferInput / InferResult)
            import tritonclient.grpc as grpcclient

            user = common.prepare(req, served.limits, served)
            t1 = time.perf_counter()
            inputs = common.encode_inputs(user, grpcclient.InferInput, req)
            t2 = time.perf_counter()
            result = client._grpc.infer(client.index_model, inputs, client_timeout=30.0)
            t3 = time.perf_counter()
            common.decode(result, user, req, served, client.index_model, 0.0)
        t4 = time.perf_counter()
        if i >= 20:
            for k, v in (("check", t1 - t0), ("encode", t2 - t1), ("rpc", t3 - t2), ("decode", t4 - t3),
                         ("total", t4 - t0)):
                acc[k].append(v * 1e3)
    client.close()
    return {k: float(np.mean(v)) for k, v in acc.items()} | {"p50_total": float(np.percentile(acc["total"], 50))}


def build(work: Path, items: int, threads: int, artifacts: str = "", log=print) -> tuple[Path, list]:
    from genrec.benchmarks import suite
    from genrec.benchmarks.scenarios import Scenario
    from genrec.core.statstore import build_stats

    cfg = suite.BenchConfig(workdir=str(work), threads=threads, artifacts=artifacts)
    _, art = suite._ensure_model(cfg, {"int8"}, log)
    news = suite._catalog(cfg)
    stats = build_stats([news.parent / "behaviors.tsv"], work / "stats", log=log)
    scaled = suite._scaled_catalog(news, items, work) if items else news
    folder = work / (f"index-int8-n{items}" if items else "index-int8")
    if not (folder / "index.json").is_file():
        if folder.exists():
            shutil.rmtree(folder)
        log(f"building the {items}-item int8 index")
        suite._timed_index_build(scaled, art, folder, "int8", threads)
    repo = suite._repository(art, Scenario(50, 100, "int8", mode="ids", catalog=items), cfg, work, folder, stats)
    return repo, load_catalog(scaled)


def run(out: Path, work: Path, items: int, seconds: float, threads: int, artifacts: str = "",
        log=print) -> dict[str, Any]:
    from genrec.server.launcher import running_server

    out.mkdir(parents=True, exist_ok=True)
    repo, catalog = build(work, items, threads, artifacts, log)
    pa = anchors.perf_analyzer_binary("")
    results: dict[str, Any] = {"items": items, "machine": anchors.machine_info(), "points": {},
                               "py_spy": _pyspy() is not None, "perf_analyzer": str(pa) if pa else None}
    timing = Timing(warmup_s=2.0, duration_s=seconds, min_requests=50)
    with running_server(repo) as server:
        url = server.grpc_url
        stubs = [pid for pid, model in server.stub_processes().items() if model.startswith("recommend")]
        results["recommend_stubs"], results["stub_pids"], results["client_pid"] = len(stubs), stubs, os.getpid()
        pa_json = perf_analyzer_id_json([IdWorkload(catalog, 50, 100, 0.0, seed=5)(i) for i in range(64)],
                                        work / "perf_analyzer_ids.json")
        for c in (1, 16):
            point: dict[str, Any] = {"load_before": anchors.load_now()}
            prof = out / f"pyspy-c{c}"
            before = _model_stats(url)
            spies = _record([*stubs, os.getpid()], timing.warmup_s + seconds, prof)
            ours = served_point(url, IdWorkload(catalog, 50, 100, 0.0, seed=c), c, timing)
            for s in spies:
                s.wait(timeout=60)
            point["ours"] = {k: ours[k] for k in ("throughput_rps", "latency_ms", "requests", "window_s")}
            point["triton_ours"] = _per_request(before, _model_stats(url))
            point["load_during"] = anchors.load_now()
            point.update(_profiles(out, f"c{c}", stubs, os.getpid()))
            if pa is not None:
                before = _model_stats(url)
                point["perf_analyzer"] = anchors.perf_analyzer(pa, url, pa_json, c, work, window_ms=int(seconds * 1000),
                                                               model="recommend")
                point["triton_pa"] = _per_request(before, _model_stats(url))
            if c == 1:
                point["client_steps"] = _client_steps(url, IdWorkload(catalog, 50, 100, 0.0, seed=11), 300)
            point["load_after"] = anchors.load_now()
            results["points"][f"c{c}"] = point
            log(f"c{c}: ours {ours['throughput_rps']:.0f} req/s p50 {ours['latency_ms']['p50']:.2f} ms; "
                f"perf_analyzer {point.get('perf_analyzer', {}).get('throughput_rps', float('nan')):.0f} req/s")
    (out / "breakdown.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "breakdown.md").write_text(report(results))
    return results


def _profiles(out: Path, key: str, stubs: list[int], client_pid: int) -> dict[str, Any]:
    prof = out / f"pyspy-{key}"
    return {"stub_profile": _steps([prof.with_suffix(f".{p}.txt") for p in stubs], STEPS, STUB_TOTAL),
            "client_profile": _steps([prof.with_suffix(f".{client_pid}.txt")], CLIENT_STEPS, None)}


def reprofile(out: Path) -> dict[str, Any]:
    """breakdown.json/.md again from the py-spy files of a run (the step tables changed, not the measurement)."""
    r = json.loads((out / "breakdown.json").read_text())
    for key, point in r["points"].items():
        point.update(_profiles(out, key, r["stub_pids"], r["client_pid"]))
    (out / "breakdown.json").write_text(json.dumps(r, indent=1, default=str))
    (out / "breakdown.md").write_text(report(r))
    return r


def _share(profile: dict, name: str) -> float:
    return profile["steps"].get(name, 0) / max(1, profile["samples"])


def report(r: dict[str, Any]) -> str:
    lines = [f"# id path breakdown: H50 C100, {r['items']:,} indexed items, INT8, item statistics", "",
             f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores; client, tritonserver and the "
             f"`recommend` stub(s) ({r['recommend_stubs']} instance(s)) share them. Generated by "
             "`python -m genrec.benchmarks.breakdown`.", ""]
    lines += ["## Side by side (same server, same run)", "",
              "| conc. | ours req/s | perf_analyzer req/s | ours / PA | ours p50 / p99 ms | PA p50 / p99 ms | "
              "load avg (1 min) before / during / after |", "|---|---|---|---|---|---|---|"]
    for key, p in r["points"].items():
        o, pa = p["ours"], p.get("perf_analyzer") or {}
        pa_rps = pa.get("throughput_rps")
        lines.append(f"| {key[1:]} | {o['throughput_rps']:.0f} | {pa_rps or float('nan'):.0f} | "
                     f"{o['throughput_rps'] / pa_rps if pa_rps else float('nan'):.2f} | "
                     f"{o['latency_ms']['p50']:.2f} / {o['latency_ms']['p99']:.2f} | "
                     f"{pa.get('latency_ms', {}).get('p50', float('nan')):.2f} / "
                     f"{pa.get('latency_ms', {}).get('p99', float('nan')):.2f} | "
                     f"{p['load_before']['loadavg_1m']} / {p['load_during']['loadavg_1m']} / "
                     f"{p['load_after']['loadavg_1m']} |")
    lines += ["", "## Triton's per-request statistics of `recommend` (mean ms)", "",
              "| conc. | load | queue | compute input | compute infer (stub hop + model) | compute output |",
              "|---|---|---|---|---|---|"]
    for key, p in r["points"].items():
        for who in ("ours", "pa"):
            t = p.get(f"triton_{who}")
            if t:
                who_name = "genrec client" if who == "ours" else "perf_analyzer"
                lines.append(f"| {key[1:]} | {who_name} | {t['queue_ms']:.3f} | {t['input_ms']:.3f} | "
                             f"{t['infer_ms']:.3f} | {t['output_ms']:.3f} |")
    c1 = r["points"].get("c1", {})
    if "client_steps" in c1:
        s = c1["client_steps"]
        lines += ["", "## One call at concurrency 1, the sync client's steps timed one by one (mean ms)", "",
                  "| check | encode inputs | RPC (gRPC + Triton + stub + model) | decode | total (p50) |",
                  "|---|---|---|---|---|",
                  f"| {s['check']:.3f} | {s['encode']:.3f} | {s['rpc']:.3f} | {s['decode']:.3f} | "
                  f"{s['total']:.3f} ({s['p50_total']:.3f}) |"]
    lines += ["", "## Inside the `recommend` stub (py-spy, share of the samples inside `execute`)", "",
              "ms per request = share x Triton's compute infer at that concurrency (the rest of compute infer is the "
              "stub hop: shared memory, the stub's loop, request/response objects).", "",
              "| step | " + " | ".join(f"c{k[1:]} share | c{k[1:]} ms" for k in r["points"]) + " |",
              "|---|" + "---|---|" * len(r["points"])]
    names = [name for name, *_ in STEPS] + ["other"]
    for name in names:
        cells = []
        for p in r["points"].values():
            share = _share(p["stub_profile"], name)
            cells.append(f"{share:.1%} | {share * p['triton_ours']['infer_ms']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key, p in r["points"].items():
        lines += ["", f"Top self frames in the stub at {key}: " + ", ".join(
            f"{f} {n / max(1, p['stub_profile']['samples']):.0%}" for f, n in p["stub_profile"]["top_self"][:8])]
        cp = p["client_profile"]
        lines += ["", f"Client process at {key} (py-spy, share of all its samples): " + ", ".join(
            f"{k} {v / max(1, cp['samples']):.0%}" for k, v in cp["steps"].items()) +
            "; top self frames: " + ", ".join(f"{f} {n / max(1, cp['samples']):.0%}" for f, n in cp["top_self"][:8])]
    lines += ["", "## Load on the machine during each point", ""]
    for key, p in r["points"].items():
        lines.append(f"* {key}: busiest processes during: {'; '.join(p['load_during']['top'])}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="build/breakdown")
    ap.add_argument("--workdir", default="build/bench-work")
    ap.add_argument("--items", type=int, default=1_000_000, help="indexed items (0 = the ~3k catalog as is)")
    ap.add_argument("--seconds", type=float, default=8.0, help="measurement window per point")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--artifacts", default="",
                    help="ART_DIR with int8 (default: the one `genrec bench` finds or builds)")
    ap.add_argument("--report-only", action="store_true",
                    help="re-read OUT's py-spy files and rewrite breakdown.json/.md (no measurement)")
    a = ap.parse_args(argv)
    if a.report_only:
        reprofile(Path(a.out))
    else:
        run(Path(a.out), Path(a.workdir), a.items, a.seconds, a.threads, a.artifacts)
    return 0


if __name__ == "__main__":
    sys.exit(main())

