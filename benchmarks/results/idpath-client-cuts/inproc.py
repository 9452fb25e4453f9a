"""In process (issue 28): the genrec client's own work per id-path call (H50 C100), the code of 8690bd0 vs its
successor, interleaved 5 times over the same 256 recorded answers of one 3k-item server.

    git show 8690bd0:client/common.py > /tmp/oldcommon.py; git show 8690bd0:client/wire.py > /tmp/oldwire.py
    python benchmarks/results/idpath-client-cuts/inproc.py inproc.json
"""

import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

from genrec.benchmarks.loadgen import read_answer
from genrec.benchmarks.workload import IdWorkload, load_catalog
from genrec.client import RecommenderClient, common, wire
from genrec.server.launcher import running_server


def load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def per_call_us(fn, n: int = 2000) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i % 256)
    return (time.perf_counter() - t0) / n * 1e6


def main(out: str) -> None:
    old_common, old_wire = load("oldcommon", "/tmp/oldcommon.py"), load("oldwire", "/tmp/oldwire.py")
    impl = {"old": (old_common.decode, old_wire.Tensors.add_bytes), "new": (common.decode, wire.Tensors.add_bytes)}
    work = Path("build/bench-work")
    wl = IdWorkload(load_catalog(work / "catalog" / "train" / "news.tsv"), 50, 100, 0.0, seed=1)
    reqs = [wl(i) for i in range(256)]
    with running_server(work / "repos" / "ours-int8") as server, RecommenderClient(server.grpc_url) as client:
        served = client.served(client.index_model)
        calls = []
        for r in reqs:
            call = common.Call(client, r)
            call.prepare(served)
            calls.append(call)
        answers = [client._grpc._client_stub.ModelInfer(c.message) for c in calls]

    def build(i):
        common.Call(client, reqs[i]).prepare(served)

    def answer(i):
        read_answer(calls[i].decode(wire.Result(answers[i])))

    figures = {m: {"check+encode": [], "decode+read10": []} for m in impl}
    for _ in range(5):
        for mode, (decode, add_bytes) in impl.items():
            common.decode, wire.Tensors.add_bytes = decode, add_bytes
            figures[mode]["check+encode"].append(per_call_us(build))
            figures[mode]["decode+read10"].append(per_call_us(answer))
    summary = {m: {k: round(statistics.median(v), 1) for k, v in f.items()} for m, f in figures.items()}
    print(json.dumps(summary))
    Path(out).write_text(json.dumps({"median_us": summary, "runs_us": figures}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
