"""Targets, ratios, the markdown table and the latency-vs-throughput plot of a benchmark run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from genrec.benchmarks.scenarios import REFERENCE

REF = f"h{REFERENCE[0]}-c{REFERENCE[1]}"


def _points(results: dict, name: str) -> list[dict]:
    return results["scenarios"].get(name, {}).get("points", [])


def _at(points: list[dict], concurrency: int) -> dict | None:
    return next((p for p in points if p["concurrency"] == concurrency), None)


def _peak(points: list[dict]) -> dict | None:
    return max(points, key=lambda p: p["throughput_rps"], default=None)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value, bound and verdict (None = not measured)."""
    fast = "fp16" if results["config"]["device"] == "cuda" else "int8"
    out: list[dict[str, Any]] = []

    def add(name, value, bound, note="", op=">="):
        if value is None or bound is None or (isinstance(value, float) and math.isnan(value)):
            ok = None
        else:
            ok = value >= bound if op == ">=" else value <= bound
        out.append({"target": name, "value": value, "bound": bound, "op": op, "met": ok, "note": note})

    ours = _points(results, f"ours-{REF}-{fast}")
    floor = results["in_process"].get(f"{REF}-{fast}")
    p4 = _at(ours, 4)
    add(f"served / in-process floor throughput ({REF}, {fast}, concurrency 4)",
        p4["throughput_rps"] / floor["throughput_rps"] if p4 and floor else None, 0.9)

    naive = _points(results, f"naive-{REF}-fp32")
    if naive and ours:
        best_naive = _peak(naive)
        budget = best_naive["latency_ms"]["p99"]
        fits = [p for p in ours if p["latency_ms"]["p99"] <= budget]
        ratio = (max(p["throughput_rps"] for p in fits) / best_naive["throughput_rps"]) if fits else 0.0
        add(f"ours ({fast}) / naive Triton throughput at equal p99 ({REF})", ratio, 2.0,
            f"p99 budget {budget:.0f} ms = the naive pattern's p99 at its best throughput "
            f"(concurrency {best_naive['concurrency']})")
    else:
        add(f"ours / naive Triton throughput at equal p99 ({REF})", None, 2.0)

    fp32 = _points(results, f"ours-{REF}-fp32")
    parity = results.get("parity", {}).get(fast, {})
    note = (f"parity: AUC drop {parity['auc_drop']:+.5f}, Kendall tau {parity['kendall_tau_mean']:.3f}"
            if parity else "")
    add(f"{fast} / fp32 peak served throughput ({REF})",
        _peak(ours)["throughput_rps"] / _peak(fp32)["throughput_rps"] if ours and fp32 else None, 1.4, note)

    # the id path (item index): warm requests with every item indexed, then 10 % and 50 % new candidates
    for unknown in (0, 10, 50):
        pts = _points(results, f"ids-{REF}-{fast}-u{unknown}")
        if not pts and unknown:
            continue
        c1, c16 = _at(pts, 1), _at(pts, 16)
        bounded = unknown == 0
        tag = f"id path, {unknown} % new candidates ({REF}, {fast})"
        add(f"{tag}: p50 ms at concurrency 1", c1["latency_ms"]["p50"] if c1 else None, 4.0 if bounded else None,
            op="<=")
        add(f"{tag}: p99 ms at concurrency 1", c1["latency_ms"]["p99"] if c1 else None, 10.0 if bounded else None,
            op="<=")
        add(f"{tag}: requests/s at concurrency 16", c16["throughput_rps"] if c16 else None,
            400.0 if bounded else None)

    # the id path at production scale: the same requests over a 1M-item index, side by side with the ~3k one
    for name, entry in results["scenarios"].items():
        n = entry["scenario"].get("catalog", 0)
        if not n or entry["scenario"]["mode"] != "ids":
            continue
        pts = entry["points"]
        c1, c16 = _at(pts, 1), _at(pts, 16)
        scale = f"{n / 1e6:g}M" if n >= 10**6 else f"{n:,}"
        tag = f"id path, {scale} items ({REF}, {entry['scenario']['precision']})"
        add(f"{tag}: p50 ms at concurrency 1", c1["latency_ms"]["p50"] if c1 else None, None, op="<=")
        add(f"{tag}: p99 ms at concurrency 1", c1["latency_ms"]["p99"] if c1 else None,
            5.0 if n >= 10**6 else 10.0, _load_note(c1), op="<=")
        add(f"{tag}: requests/s at concurrency 16", c16["throughput_rps"] if c16 else None,
            900.0 if n >= 10**6 else 400.0, _load_note(c16))
        small = _at(_points(results, name.rsplit("-n", 1)[0]), 1)
        if c1 and small:
            add(f"{tag}: p99 at concurrency 1 / the same with the ~{small_n(results)} item index",
                c1["latency_ms"]["p99"] / small["latency_ms"]["p99"], None, "measured side by side", op="<=")
        build = results.get("index_builds", {}).get(f"{n}-{entry['scenario']['precision']}")
        if build:
            add(f"index build, {scale} items: seconds", build["seconds"], None,
                f"{build['encoded_texts']} distinct texts encoded, {build['reused_texts']} repeats reused; "
                f"vectors {build['vectors_mb']} MB", op="<=")
            add(f"index build, {scale} items: peak RSS MB", build["peak_rss_mb"], None, "child process, wait4",
                op="<=")

    # whole-catalog retrieval (no candidates): ANN top M -> heads re-rank -> best k, and the ANN's recall in the run
    for entry in results["scenarios"].values():
        sc = entry["scenario"]
        if sc["mode"] != "retrieve":
            continue
        n = sc["catalog"]
        scale = f"{n / 1e6:g}M" if n >= 10**6 else f"{n:,}"
        pts = entry["points"]
        c1, c16 = _at(pts, 1), _at(pts, 16)
        tag = f"retrieval, {scale} items (H={sc['history']}, k=10, M=200, {sc['precision']})"
        add(f"{tag}: p50 ms at concurrency 1", c1["latency_ms"]["p50"] if c1 else None, None, op="<=")
        add(f"{tag}: p99 ms at concurrency 1", c1["latency_ms"]["p99"] if c1 else None,
            10.0 if n >= 10**6 else 15.0, _load_note(c1), op="<=")
        add(f"{tag}: requests/s at concurrency 16", c16["throughput_rps"] if c16 else None, None)
        ann = entry.get("ann") or {}
        add(f"{tag}: ANN recall@200 vs exact search", ann.get("recall_at_m"), 0.98,
            f"{ann.get('kind')} nlist {ann.get('nlist')} nprobe {ann.get('nprobe')}, {ann.get('queries')} users; "
            f"one query ANN {ann.get('ann_p50_ms', 0):.2f} ms vs exact numpy {ann.get('exact_p50_ms', 0):.1f} ms")

    for key, pa in results.get("perf_analyzer", {}).items():
        if not isinstance(pa, dict) or "throughput_rps" not in pa:
            continue
        mine = _at(_points(results, key.split("@")[0]), pa["concurrency"])
        if mine:
            add(f"our client / perf_analyzer throughput ({key})", mine["throughput_rps"] / pa["throughput_rps"],
                0.85, f"ours {mine['throughput_rps']:.1f} req/s, perf_analyzer {pa['throughput_rps']:.1f} req/s, "
                "same server, one after the other; " + _load_note(mine))
    return out


def _load_note(point: dict | None) -> str:
    """The load average when a point was measured (2 cores shared by client, server and whatever else runs)."""
    load = (point or {}).get("load")
    return f"load avg {load['loadavg_1m']:.1f}" if load else ""


def small_n(results: dict[str, Any]) -> str:
    sizes = [b["items"] for k, b in results.get("index_builds", {}).items() if b.get("peak_rss_mb") is None]
    return f"{min(sizes):,}" if sizes else "?"


def ratios(results: dict[str, Any]) -> list[tuple[str, float | None]]:
    fast = "fp16" if results["config"]["device"] == "cuda" else "int8"
    rows = []
    for shape in sorted({s["scenario"]["history"] * 1000 + s["scenario"]["candidates"]
                         for s in results["scenarios"].values()}):
        h, c = divmod(shape, 1000)
        tag = f"h{h}-c{c}"
        ours, fp32 = _peak(_points(results, f"ours-{tag}-{fast}")), _peak(_points(results, f"ours-{tag}-fp32"))
        floor = results["in_process"].get(f"{tag}-{fast}")
        floor32 = results["in_process"].get(f"{tag}-fp32")
        eager = results["torch_eager"].get(tag)
        naive = _peak(_points(results, f"naive-{tag}-fp32"))
        for label, a, b in ((f"served peak / in-process floor ({fast})", ours, floor),
                             (f"served {fast} / fp32 (peak)", ours, fp32),
                             (f"in-process {fast} / fp32", floor, floor32),
                             (f"in-process ONNX {fast} / PyTorch eager", floor, eager),
                             (f"served {fast} (peak) / PyTorch eager in-process", ours, eager),
                             ("ours peak / naive Triton peak", ours, naive)):
            if a and b:
                rows.append((f"{tag}: {label}", a["throughput_rps"] / b["throughput_rps"]))
    return rows


def _fmt(v, spec=".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = ["# genrec benchmark", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}; "
             f"Triton {results.get('server_version', '?')}; onnxruntime {m['packages']['onnxruntime']}; "
             f"torch {m['packages']['torch']}. Run took {results['seconds']:.0f} s. All figures below were "
             "measured in this one run, side by side.", "", "## Targets", "",
             "| target | measured | bound | met | note |", "|---|---|---|---|---|"]
    for t in results["targets"]:
        if t["bound"] is None:
            met, bound = "(reported)", "-"
        else:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            bound = f"{t['op']} {t['bound']}"
        lines.append(f"| {t['target']} | {_fmt(t['value'], '.3f')} | {bound} | {met} | {t['note']} |")
    lines += ["", "## Ratios (throughput)", "", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)}x |" for k, v in ratios(results)]
    lines += ["", "## Served scenarios", "",
              "Client-side latency (ms) from the genrec async client; server-side mean queue / compute per request "
              "(ms) of the encoder from Triton's statistics over the same window.", "",
              "| scenario | conc. | req/s | items/s | p50 | p90 | p99 | p99.9 | n | enc. queue | enc. compute "
              "| enc. batch (texts/exec) | errors |", "|" + "---|" * 13]
    for name, sc in results["scenarios"].items():
        for p in sc["points"]:
            lat, enc = p["latency_ms"], p.get("server", {}).get("encoder", {})
            per_exec = enc.get("inferences", 0) / enc["executions"] if enc.get("executions") else None
            lines.append(f"| {name} | {p['concurrency']} | {p['throughput_rps']:.1f} | {p['items_per_s']:.0f} "
                         f"| {_fmt(lat['p50'], '.1f')} | {_fmt(lat['p90'], '.1f')} | {_fmt(lat['p99'], '.1f')} "
                         f"| {_fmt(lat['p99.9'], '.1f')} | {p['requests']} | {_fmt(enc.get('queue_ms'), '.1f')} "
                         f"| {_fmt(enc.get('compute_ms'), '.1f')} | {_fmt(per_exec, '.0f')} | {p['errors']} |")
    lines += ["", "## In-process anchors (one request at a time, all cores)", "",
              "| anchor | req/s | items/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for kind, table in (("ONNX Runtime", results["in_process"]), ("PyTorch eager", results["torch_eager"])):
        for key, p in table.items():
            lines.append(f"| {kind} {key} | {p['throughput_rps']:.1f} | {p['items_per_s']:.0f} "
                         f"| {p['latency_ms']['p50']:.1f} | {p['latency_ms']['p99']:.1f} |")
    lines += ["", "## perf_analyzer (Triton's load generator) on the same requests", ""]
    pa = results.get("perf_analyzer", {})
    if "error" in pa:
        lines.append(f"Not measured: {pa['error']}")
    else:
        lines += ["| point | perf_analyzer req/s | ours req/s | perf_analyzer p50 / p99 ms | ours p50 / p99 ms |",
                  "|---|---|---|---|---|"]
        for key, r in pa.items():
            if "error" in r:
                lines.append(f"| {key} | error: {r['error'][:200]} | | | |")
                continue
            mine = _at(_points(results, key.split("@")[0]), r["concurrency"]) or {}
            ml = mine.get("latency_ms", {})
            lines.append(f"| {key} | {r['throughput_rps']:.1f} | {_fmt(mine.get('throughput_rps'), '.1f')} "
                         f"| {r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f} "
                         f"| {_fmt(ml.get('p50'), '.1f')} / {_fmt(ml.get('p99'), '.1f')} |")
    lines += ["", "## Memory (RSS MB after each server's sweep)", "", "| server | process | RSS MB |", "|---|---|---|"]
    for server, procs in results["memory"].items():
        lines += [f"| {server} | {proc} | {rss:.0f} |" for proc, rss in procs.items()]
    lines += ["", "![latency vs throughput](latency.png)", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    """Three panels: the reference shape's text path against its anchors; every text-path shape of the
    fast precision; the id path per fraction of new candidates. p99 solid, p50 dashed, labels = concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fast = "fp16" if results["config"]["device"] == "cuda" else "int8"
    scen = results["scenarios"]
    panels = [
        (f"text path {REF}: ours vs naive Triton, anchors",
         [n for n in scen if n.endswith(f"-{REF}-{fast}") or n.endswith(f"-{REF}-fp32")], True),
        (f"text path, every shape ({fast})", [n for n in scen if n.startswith("ours-") and n.endswith(f"-{fast}")],
         False),
        (f"id path {REF} ({fast}): % new candidates", [n for n in scen if n.startswith("ids-")], False),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6))
    for ax, (title, names, anchors_too) in zip(axes, panels):
        colors = plt.cm.tab10.colors
        for k, name in enumerate(names):
            pts = scen[name]["points"]
            x = [p["throughput_rps"] for p in pts]
            color = colors[k % len(colors)]
            ax.plot(x, [p["latency_ms"]["p99"] for p in pts], marker="o", color=color, label=name)
            ax.plot(x, [p["latency_ms"]["p50"] for p in pts], linestyle="--", color=color, alpha=0.6)
            for p in pts:
                ax.annotate(str(p["concurrency"]), (p["throughput_rps"], p["latency_ms"]["p99"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        if anchors_too:
            styles = {"int8": ":", "fp16": ":", "fp32": "-."}
            for key, p in results["in_process"].items():
                if key.startswith(REF):
                    prec = key.rsplit("-", 1)[1]
                    ax.axvline(p["throughput_rps"], color="grey", linestyle=styles.get(prec, ":"),
                               label=f"in-process ONNX {prec} (throughput)")
            eager = results["torch_eager"].get(REF)
            if eager:
                ax.axvline(eager["throughput_rps"], color="black", linestyle=":", label="PyTorch eager in-process")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("throughput (requests/s)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("client latency (ms): p99 solid, p50 dashed; labels = concurrency")
    fig.suptitle(f"genrec served latency vs throughput ({results['machine']['cores']} cores, "
                 f"{results['machine']['cpu']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown(results))
    plot_or_say(plot, results, out / "latency.png")


def plot_or_say(plot_fn, results: dict[str, Any], path: Path) -> None:
    """The plot, or one line saying how to get it: a long run's figures are never lost to a missing matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from genrec.extras import EXTRAS

        print(f"{path.name} not drawn: matplotlib is not installed (run `{EXTRAS['plot'].make}` or "
              f"pip install 'genrec[plot]'); the figures are in results.json and results.md", flush=True)
        return
    plot_fn(results, path)
