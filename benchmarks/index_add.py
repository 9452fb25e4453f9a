"""Live index updates at production scale: ``genrec index add`` of a few items onto a 1M-item index.

    python -m genrec.benchmarks.index_add [--artifacts build/demo/artifacts] [--catalog .../news.tsv] \
        [--items 1000000] [--add 100] [--out build/bench-index-add]

Builds (once) the 1M-item INT8 index of the catalog's rows under new ids (as the benchmark suite's 1M scenario
does), hard-links it into a fresh INDEX_DIR, then measures, each ``genrec index add`` in a child process
(wall time and that process's peak RSS, wait4):

* adding ``--add`` new items (delta generation: only they are encoded, the base is referenced);
* the same again (the previous delta is merged into the new one);
* a compaction (``--compact-ratio 0``: one new full base, copied, nothing re-encoded);

and, in this process, a reader (:class:`genrec.core.index.LiveIndex` at the served default of 1000 ms) over the same
folder: publish -> the new id found by the reader, the switch's own cost, and the reader's RSS before and after
the old generations are dropped. Prints a table and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MB, output) of a child process."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as output:              # a file, not a pipe: a chatty child cannot block
        proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        output.seek(0)
        text = output.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, text


def main(argv: list[str] | None = None) -> int:
    from genrec.benchmarks.suite import _scaled_catalog, _timed_index_build
    from genrec.core.index import LiveIndex

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", default="build/demo/artifacts")
    ap.add_argument("--catalog", default="build/demo/data/train/news.tsv")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--add", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="build/bench-index-add")
    args = ap.parse_args(argv)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    log = print
    base = work / f"index-int8-n{args.items}"
    if not (base / "index.json").is_file() or not json.loads((base / "index.json").read_text())["complete"]:
        catalog = _scaled_catalog(Path(args.catalog), args.items, work)
        log(f"building the {args.items}-item base index ...")
        log(f"  {_timed_index_build(catalog, Path(args.artifacts), base, 'int8', args.threads)}")
    served = work / "served"
    if served.exists():
        import shutil

        shutil.rmtree(served)
    served.mkdir()
    for p in base.iterdir():                               # the base files are never written by `index add`
        os.link(p, served / p.name)
    rows = [line.split("\t") for line in Path(args.catalog).read_text(encoding="utf-8").splitlines() if line]

    def new_catalog(tag: str) -> Path:
        out = work / f"add-{tag}.tsv"
        out.write_text("".join("\t".join([f"{tag}-{k}", *rows[(k * 7) % len(rows)][1:]]) + "\n"
                               for k in range(args.add)), encoding="utf-8")
        return out

    messages: list[str] = []
    live = LiveIndex(served, refresh_ms=1000, log=messages.append)      # a server's reader, served default
    rss0 = _rss_mb()
    results: dict[str, object] = {"items": len(live.index), "add": args.add}

    seen: dict[int, float] = {}                          # generation -> wall clock when the reader served it
    stop = threading.Event()

    def watch() -> None:                                  # what a request would see, checked every 2 ms
        while not stop.wait(0.002):
            seen.setdefault(live.index.generation, time.time())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def add(tag: str, *extra: str) -> dict[str, float]:
        from genrec.core.index import ItemIndex

        previous = live.index.segments
        cmd = [sys.executable, "-m", "genrec.cli", "index", "add", "--catalog", str(new_catalog(tag)),
               "--index", str(served), "--artifacts", args.artifacts, "--threads", str(args.threads), "--quiet",
               *extra]
        seconds, peak, text = _child(cmd)
        published = (served / "CURRENT").stat().st_mtime_ns / 1e9           # the switch, by the writer's clock
        number = int((served / "CURRENT").read_text().strip()[4:])
        deadline = time.time() + 30
        while number not in seen:
            if time.time() > deadline:
                raise RuntimeError(f"generation {number} not served after 30 s: {messages[-3:]}")
            time.sleep(0.01)
        assert live.index.rows([f"{tag}-{args.add - 1}".encode()])[0] >= 0
        t0 = time.perf_counter()                          # the switch's own cost: what the reader opened anew
        ItemIndex(served, reuse=previous)
        reopen = time.perf_counter() - t0
        line = next((x for x in text.splitlines() if x.startswith("published")), "")
        row = {"seconds": round(seconds, 2), "peak_rss_mb": round(peak, 1),
               "visible_s": round(seen[number] - published, 2), "switch_ms": round(reopen * 1000, 1), "log": line}
        log(f"  {tag}: {row}")
        return row

    log(f"{len(live.index)} items served; reader RSS {rss0:.0f} MB")
    results["add_delta"] = add("first")
    results["add_delta_again"] = add("second")
    results["add_compact"] = add("third", "--compact-ratio", "0")
    time.sleep(0.3)
    import gc

    gc.collect()
    results["reader_rss_mb"] = {"start": round(rss0, 1), "after": round(_rss_mb(), 1)}
    maps = Path("/proc/self/maps").read_text()
    results["reader_maps_deleted"] = sum(1 for x in maps.splitlines() if str(served) in x and "(deleted)" in x)
    results["on_disk"] = sorted(p.name for p in served.iterdir())
    stop.set()
    live.close()
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log("")
    log(f"| step ({args.add} items onto {results['items']}) | wall s (child) | peak RSS MB | publish -> visible s "
        "(reader polls every 1000 ms) | reader switch ms |")
    log("|---|---|---|---|---|")
    for name in ("add_delta", "add_delta_again", "add_compact"):
        r = results[name]
        log(f"| {name} | {r['seconds']} | {r['peak_rss_mb']} | {r['visible_s']} | {r['switch_ms']} |")
    log(f"reader RSS {results['reader_rss_mb']}; deleted files still mapped: {results['reader_maps_deleted']}; "
        f"on disk: {results['on_disk']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
