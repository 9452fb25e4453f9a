"""A/B (issue 28): the client code of 8690bd0 (every explanation row sorted on the first read, BYTES tensors built
through a comprehension) vs its successor (the rows read sorted one by one, one loop with prebuilt length prefixes),
interleaved with perf_analyzer, on one 1M-item id-path server (the work folder of `genrec bench`).

    git show 8690bd0:client/common.py > /tmp/oldcommon.py; git show 8690bd0:client/wire.py > /tmp/oldwire.py
    python benchmarks/results/idpath-client-cuts/ab.py 1000000 ab.json 3

Rows: (round, concurrency, client, req/s, p50 ms, p99 ms, client CPU ms per request). Both clients read the best
10 items of every answer (genrec.benchmarks.loadgen.read_answer).
"""

import importlib.util
import json
import resource
import sys
import time
from pathlib import Path

from genrec.benchmarks import anchors
from genrec.benchmarks.loadgen import Timing, served_point
from genrec.benchmarks.workload import IdWorkload, load_catalog, perf_analyzer_id_json
from genrec.client import common, wire
from genrec.server.launcher import running_server


def load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(items: int, out: str, rounds: int) -> None:
    old_common, old_wire = load("oldcommon", "/tmp/oldcommon.py"), load("oldwire", "/tmp/oldwire.py")
    impl = {"old": (old_common.decode, old_wire.Tensors.add_bytes), "new": (common.decode, wire.Tensors.add_bytes)}
    work = Path("build/bench-work")
    repo = work / "repos" / ("ours-int8-n1000000" if items else "ours-int8")
    catalog = load_catalog(work / "catalog-n1000000" / "news.tsv" if items else work / "catalog" / "train" / "news.tsv")
    timing = Timing(warmup_s=1.5, duration_s=5.0, min_requests=50)
    pa = anchors.perf_analyzer_binary("")
    rows = []
    with running_server(repo) as server:
        url = server.grpc_url
        pa_json = perf_analyzer_id_json([IdWorkload(catalog, 50, 100, 0.0, seed=5)(i) for i in range(64)],
                                        work / "ab_pa.json")
        for rnd in range(rounds):
            for c in (1, 16):
                for mode in ("old", "new", "pa"):
                    if mode == "pa":
                        r = anchors.perf_analyzer(pa, url, pa_json, c, work, window_ms=5000, model="recommend")
                        cpu_ms = float("nan")
                    else:
                        common.decode, wire.Tensors.add_bytes = impl[mode]
                        t0, w0 = cpu_s(), time.perf_counter()
                        r = served_point(url, IdWorkload(catalog, 50, 100, 0.0, seed=c), c, timing)
                        n = r["throughput_rps"] * (time.perf_counter() - w0)    # about every request of the point
                        cpu_ms = (cpu_s() - t0) / max(1.0, n) * 1e3
                    lat = r["latency_ms"]
                    rows.append((rnd, c, mode, round(r["throughput_rps"], 1), round(lat["p50"], 2),
                                 round(lat["p99"], 2), round(cpu_ms, 3)))
                    print(rows[-1], flush=True)
    Path(out).write_text(json.dumps(rows))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
