"""Transport A/B for issue 28: client CPU per request and throughput of
  aio       : today's AsyncRecommenderClient (grpc.aio unary per call)
  aiostream : grpc.aio bidi ModelStreamInfer, requests matched by id
  syncfut   : sync grpc channel, unary .future() + done-callback closed loop
  syncstream: sync grpc channel, bidi ModelStreamInfer fed from a queue, reader thread
interleaved with perf_analyzer on one id-path server (issue 28).

    python benchmarks/results/idpath-client-cuts/transport.py 0 transport-3k.json pa,aio,aiostream,syncfut,syncstream 1
    python benchmarks/results/idpath-client-cuts/transport.py 1000000 transport-1m.json pa,aio,sync,syncfut 2

Rows: (round, concurrency, mode, req/s, p50 ms, p99 ms, client CPU ms per request); "sync" = the sync client, one
thread per concurrent call."""

import asyncio
import json
import queue
import resource
import sys
import threading
import time
from pathlib import Path

import tritonclient.grpc.aio as aioclient

from genrec.benchmarks import anchors
from genrec.benchmarks.loadgen import Timing, latency_stats, read_answer, served_point
from genrec.benchmarks.workload import IdWorkload, load_catalog, perf_analyzer_id_json
from genrec.client import RecommenderClient, common, wire
from genrec.server.launcher import running_server


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one_call(client, served, req):
    call = common.Call(client, req)
    call.prepare(served)
    return call


def finish(call, response):
    read_answer(call.decode(wire.Result(response)))


async def aio_stream(url, work, c, dur):
    client = RecommenderClient(url)            # only for served + Call
    served = client.served(client.index_model)
    g = aioclient.InferenceServerClient(url)
    stub = g._client_stub
    q: asyncio.Queue = asyncio.Queue()
    pending = {}

    async def reqs():
        while True:
            m = await q.get()
            if m is None:
                return
            yield m
    stream = stub.ModelStreamInfer(reqs())
    lat, state = [], {"stop": False, "n": 0}

    async def reader():
        async for resp in stream:
            fut = pending.pop(resp.infer_response.id)
            fut.set_result(resp)

    rt = asyncio.create_task(reader())
    loop = asyncio.get_running_loop()

    async def worker(k):
        i = k
        while not state["stop"]:
            call = one_call(client, served, work(i))
            rid = str(i)
            call.message.id = rid
            i += c
            t = time.perf_counter()
            fut = loop.create_future()
            pending[rid] = fut
            q.put_nowait(call.message)
            resp = await fut
            if resp.error_message:
                raise RuntimeError(resp.error_message)
            finish(call, resp.infer_response)
            lat.append(time.perf_counter() - t)
    ws = [asyncio.create_task(worker(k)) for k in range(c)]
    await asyncio.sleep(1.5)
    lat.clear()
    c0, t0 = cpu_s(), time.perf_counter()
    await asyncio.sleep(dur)
    n, t1, c1 = len(lat), time.perf_counter(), cpu_s()
    state["stop"] = True
    await asyncio.gather(*ws)
    q.put_nowait(None)
    await rt
    await g.close()
    return n / (t1 - t0), (c1 - c0) / n * 1e3, latency_stats(lat[:n])


def sync_future(url, work, c, dur):
    client = RecommenderClient(url)
    served = client.served(client.index_model)
    stub = client._grpc._client_stub
    lat, state = [], {"stop": False}
    lock = threading.Lock()
    done = threading.Event()
    live = [c]

    def issue(i):
        call = one_call(client, served, work(i))
        t = time.perf_counter()
        f = stub.ModelInfer.future(call.message, timeout=30)
        f.add_done_callback(lambda f: on_done(f, call, t, i))

    def on_done(f, call, t, i):
        finish(call, f.result())
        lat.append(time.perf_counter() - t)
        if state["stop"]:
            with lock:
                live[0] -= 1
                if not live[0]:
                    done.set()
            return
        issue(i + c)
    for k in range(c):
        issue(k)
    time.sleep(1.5)
    lat.clear()
    c0, t0 = cpu_s(), time.perf_counter()
    time.sleep(dur)
    n, t1, c1 = len(lat), time.perf_counter(), cpu_s()
    state["stop"] = True
    done.wait(10)
    client.close()
    return n / (t1 - t0), (c1 - c0) / n * 1e3, latency_stats(lat[:n])


def sync_stream(url, work, c, dur):
    client = RecommenderClient(url)
    served = client.served(client.index_model)
    stub = client._grpc._client_stub
    q = queue.SimpleQueue()
    pending = {}
    lat, state = [], {"stop": False}
    stream = stub.ModelStreamInfer(iter(q.get, None))
    remaining = [c]

    def issue(i):
        call = one_call(client, served, work(i))
        rid = str(i)
        call.message.id = rid
        pending[rid] = (call, time.perf_counter(), i)
        q.put(call.message)

    def reader():
        for resp in stream:
            call, t, i = pending.pop(resp.infer_response.id)
            finish(call, resp.infer_response)
            lat.append(time.perf_counter() - t)
            if state["stop"]:
                remaining[0] -= 1
                if not remaining[0]:
                    q.put(None)
                continue
            issue(i + c)
    th = threading.Thread(target=reader)
    th.start()
    for k in range(c):
        issue(k)
    time.sleep(1.5)
    lat.clear()
    c0, t0 = cpu_s(), time.perf_counter()
    time.sleep(dur)
    n, t1, c1 = len(lat), time.perf_counter(), cpu_s()
    state["stop"] = True
    th.join(10)
    client.close()
    return n / (t1 - t0), (c1 - c0) / n * 1e3, latency_stats(lat[:n])


def sync_threads(url, work, c, dur):
    client = RecommenderClient(url, timeout=30.0, retries=0)
    client.served(client.index_model)
    lat, state = [], {"stop": False}

    def worker(k):
        i = k
        while not state["stop"]:
            req = work(i)
            i += c
            t = time.perf_counter()
            read_answer(client.recommend_request(req))
            lat.append(time.perf_counter() - t)
    ths = [threading.Thread(target=worker, args=(k,)) for k in range(c)]
    for th in ths:
        th.start()
    time.sleep(1.5)
    lat.clear()
    c0, t0 = cpu_s(), time.perf_counter()
    time.sleep(dur)
    n, t1, c1 = len(lat), time.perf_counter(), cpu_s()
    state["stop"] = True
    for th in ths:
        th.join()
    client.close()
    return n / (t1 - t0), (c1 - c0) / n * 1e3, latency_stats(lat[:n])


def main(items: int, out: str, modes: list[str], rounds: int = 2, dur: float = 5.0) -> None:
    work = Path("build/bench-work")
    repo = work / "repos" / ("ours-int8-n1000000" if items else "ours-int8")
    catalog = load_catalog(work / "catalog-n1000000" / "news.tsv" if items else work / "catalog" / "train" / "news.tsv")
    pa = anchors.perf_analyzer_binary("")
    rows = []
    with running_server(repo) as server:
        url = server.grpc_url
        pa_json = perf_analyzer_id_json([IdWorkload(catalog, 50, 100, 0.0, seed=5)(i) for i in range(64)],
                                        work / "tr_pa.json")
        for rnd in range(rounds):
            for c in (1, 16):
                for mode in modes:
                    wl = IdWorkload(catalog, 50, 100, 0.0, seed=c)
                    if mode == "pa":
                        r = anchors.perf_analyzer(pa, url, pa_json, c, work, window_ms=5000, model="recommend")
                        rps, cpu, lat = r["throughput_rps"], float("nan"), r["latency_ms"]
                    elif mode == "aio":
                        t0, w0 = cpu_s(), time.perf_counter()
                        r = served_point(url, wl, c, Timing(warmup_s=1.5, duration_s=dur, min_requests=50))
                        n = r["throughput_rps"] * (time.perf_counter() - w0)
                        rps, cpu, lat = r["throughput_rps"], (cpu_s() - t0) / max(1.0, n) * 1e3, r["latency_ms"]
                    elif mode == "aiostream":
                        rps, cpu, lat = asyncio.run(aio_stream(url, wl, c, dur))
                    elif mode == "syncfut":
                        rps, cpu, lat = sync_future(url, wl, c, dur)
                    elif mode == "sync":
                        rps, cpu, lat = sync_threads(url, wl, c, dur)
                    elif mode == "syncstream":
                        rps, cpu, lat = sync_stream(url, wl, c, dur)
                    rows.append((rnd, c, mode, round(rps, 1), round(lat["p50"], 2), round(lat["p99"], 2),
                                 round(cpu, 3)))
                    print(rows[-1], flush=True)
    Path(out).write_text(json.dumps(rows))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), int(sys.argv[4]) if len(sys.argv) > 4 else 2)
