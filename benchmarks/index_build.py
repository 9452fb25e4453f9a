"""`genrec index build` in one process vs on a Ray cluster of 1 and 2 workers: items/s, and the time 10M and 100M
items would take.

    python -m genrec.benchmarks.index_build [--artifacts build/demo/artifacts] [--catalog .../news.tsv] \
        [--items 4000] [--out benchmarks/results/ray-index-2core]

The catalog's rows are repeated under new ids up to ``--items`` and built with the text dedupe off, so every row is
encoded (the work a catalog of distinct texts costs). A local Ray cluster is started here (a head without CPUs and
two worker nodes of one CPU each, genrec.localray) and stopped afterwards. Each build writes its own index; the
Ray ones are checked byte-identical to the single-process one. Wall time includes what a user waits for: the
single-process build loads its session, a Ray build connects and starts its actors (each loads the encoder).
Projections are measured items/s scaled linearly (to more workers: the measured per-worker rate times the
workers, with the 1 -> 2 worker efficiency shown to judge that). Prints a table; writes results.json and
results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any

DATA_FILES = ("ids.bin", "order.i64", "category.i64", "subcategory.i64", "vectors.f32", "truncated.u8")


def _build(catalog: Path, art: Path, out: Path, **cfg: Any) -> dict[str, Any]:
    from genrec.core.index import IndexConfig, build_index
    from genrec.index_encoders import ALL

    shutil.rmtree(out, ignore_errors=True)
    said: list[str] = []
    t0 = time.perf_counter()
    build_index(catalog, art, out, IndexConfig(dedupe_mb=0, **cfg), progress=False, log=said.append, encoders=ALL)
    seconds = time.perf_counter() - t0
    manifest = json.loads((out / "index.json").read_text())
    shares = [(int(t), float(s)) for t, s in re.findall(r":\d+ (\d+) texts in ([\d.]+) s", "\n".join(said))]
    return {"seconds": round(seconds, 2), "items": manifest["count"],
            "items_per_s": round(manifest["count"] / seconds, 1), "encoded": manifest["encoded_texts"],
            "worker_encode_items_per_s": [round(t / s, 1) for t, s in shares if s > 0]}


def _same(a: Path, b: Path) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in DATA_FILES)


def _hours(items: int, per_s: float) -> float:
    return round(items / per_s / 3600, 2)


def main(argv: list[str] | None = None) -> int:
    from genrec.benchmarks.suite import _scaled_catalog
    from genrec.localray import LocalRayCluster

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", default="build/demo/artifacts")
    ap.add_argument("--catalog", default="build/demo/data/train/news.tsv")
    ap.add_argument("--items", type=int, default=4000)
    ap.add_argument("--chunk-size", type=int, default=250)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--work", default="build/bench-ray-index")
    ap.add_argument("--out", default="benchmarks/results/ray-index-2core")
    args = ap.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    catalog = _scaled_catalog(Path(args.catalog), args.items, work)
    art = Path(args.artifacts)
    common = {"precision": args.precision, "chunk_size": args.chunk_size}
    load = os.getloadavg()
    runs: dict[str, dict[str, Any]] = {}
    runs["single process, 1 thread"] = _build(catalog, art, work / "single-1", threads=1, **common)
    runs["single process, 2 threads"] = _build(catalog, art, work / "single-2", threads=2, **common)
    t0 = time.perf_counter()
    with LocalRayCluster(workers=2, cpus_per_node=1) as cluster:
        started = round(time.perf_counter() - t0, 1)
        for w in (1, 2):
            runs[f"ray, {w} worker{'s' * (w > 1)}"] = _build(catalog, art, work / f"ray-{w}", ray=cluster.address,
                                                             ray_workers=w, **common)
    identical = {f"ray-{w}": _same(work / f"ray-{w}", work / "single-2") for w in (1, 2)}
    one, two = runs["ray, 1 worker"], runs["ray, 2 workers"]
    per_worker = max(one["worker_encode_items_per_s"] or [one["items_per_s"]])
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared: load average "
                   f"{load[0]:.1f} / {load[1]:.1f} at the start",
        "items": args.items, "precision": args.precision, "chunk_size": args.chunk_size,
        "cluster_start_s": started, "runs": runs, "byte_identical_to_single_process": identical,
        "scaling_1_to_2_workers": round(two["items_per_s"] / one["items_per_s"], 2),
        "projection_hours": {
            name: {"10M": _hours(10_000_000, r["items_per_s"]), "100M": _hours(100_000_000, r["items_per_s"])}
            for name, r in runs.items()},
        "projection_hours_linear_in_workers": {
            f"{w} workers at {per_worker:.0f} items/s each": {"10M": _hours(10_000_000, w * per_worker),
                                                              "100M": _hours(100_000_000, w * per_worker)}
            for w in (16, 64, 256)},
    }
    lines = [f"# genrec index build on Ray ({args.items} items, {args.precision}, chunks of {args.chunk_size})", "",
             f"Machine: {results['machine']}. Local Ray cluster: a head without CPUs + 2 worker nodes of 1 CPU "
             f"(started in {started} s). Every row encoded (dedupe off). Wall time includes loading the encoder "
             "(and connecting + starting actors on Ray).", "",
             "| build | seconds | items/s | per-worker encode items/s | 10M items (h) | 100M items (h) |",
             "|---|---|---|---|---|---|"]
    for name, r in runs.items():
        p = results["projection_hours"][name]
        lines.append(f"| {name} | {r['seconds']} | {r['items_per_s']} | "
                     f"{', '.join(map(str, r['worker_encode_items_per_s'])) or '-'} | {p['10M']} | {p['100M']} |")
    lines += ["", f"1 -> 2 Ray workers: {results['scaling_1_to_2_workers']}x items/s. Byte-identical to the "
              f"single-process index: {identical}.", "",
              "Projected for larger clusters (the measured per-worker encode rate times the workers, driver and "
              "start-up costs ignored):", "", "| cluster | 10M items (h) | 100M items (h) |", "|---|---|---|"]
    for name, p in results["projection_hours_linear_in_workers"].items():
        lines.append(f"| {name} | {p['10M']} | {p['100M']} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
