"""A/B (issue 28): the eager client decode of 9432efb vs the lazy one (RankedItems), interleaved with perf_analyzer,
three rounds on one id-path server (the work folder of `genrec bench --scenario ids-h50-c100-int8-u0`).

    git show 9432efb:client/common.py > /tmp/oldcommon.py
    python benchmarks/results/idpath-lazy-answers/ab.py 1000000 /tmp/oldcommon.py ab.json

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
from genrec.client import common
from genrec.server.launcher import running_server


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(items: int, eager_source: str, out: str) -> None:
    spec = importlib.util.spec_from_file_location("oldcommon", eager_source)
    old = importlib.util.module_from_spec(spec)
    sys.modules["oldcommon"] = old
    spec.loader.exec_module(old)
    decoders = {"eager": old.decode, "lazy": common.decode}
    work = Path("build/bench-work")
    repo = work / "repos" / ("ours-int8-n1000000" if items else "ours-int8")
    catalog = load_catalog(work / ("catalog-n1000000" if items else "catalog") / "news.tsv")
    timing = Timing(warmup_s=1.5, duration_s=5.0, min_requests=50)
    pa = anchors.perf_analyzer_binary("")
    rows = []
    with running_server(repo) as server:
        url = server.grpc_url
        pa_json = perf_analyzer_id_json([IdWorkload(catalog, 50, 100, 0.0, seed=5)(i) for i in range(64)],
                                        work / "ab_pa.json")
        for rnd in range(3):
            for c in (1, 16):
                for mode in ("eager", "lazy", "pa"):
                    if mode == "pa":
                        r = anchors.perf_analyzer(pa, url, pa_json, c, work, window_ms=5000, model="recommend")
                        cpu_ms = float("nan")
                    else:
                        common.decode = decoders[mode]
                        t0, w0 = cpu_s(), time.perf_counter()
                        r = served_point(url, IdWorkload(catalog, 50, 100, 0.0, seed=c), c, timing)
                        n = r["throughput_rps"] * (time.perf_counter() - w0)    # about every request of the point
                        cpu_ms = (cpu_s() - t0) / max(1.0, n) * 1e3
                    lat = r["latency_ms"]
                    rows.append((rnd, c, mode, r["throughput_rps"], lat["p50"], lat["p99"], cpu_ms))
                    print(rows[-1], flush=True)
    Path(out).write_text(json.dumps(rows))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
