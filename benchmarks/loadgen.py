"""Closed-loop load generation (served) and timed loops (in-process anchors), with the same statistics."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from genrec.client import AsyncRecommenderClient, GenrecClientError, Recommendations, RecommendRequest

PERCENTILES = (50, 90, 99, 99.9)
# what a calling service reads of every answer, in the closed loop: the ids and scores of the best READ_TOP items
# (the client builds an answer's items when they are read, so a loop that read nothing would not pay for them)
READ_TOP = 10


def read_answer(recs: Recommendations) -> list[tuple[str, float]]:
    """What a service does with an answer: the best ``READ_TOP`` items' ids and scores."""
    return [(it.item_id, it.score) for it in recs.items[:READ_TOP]]


@dataclasses.dataclass
class Timing:
    """Where a point's measurement window starts and ends."""

    warmup_s: float = 2.0           # excluded from every statistic
    duration_s: float = 6.0         # minimum measurement window
    min_requests: int = 30          # ...extended until this many requests completed inside it
    max_duration_s: float = 60.0    # ...but never longer than this


def latency_stats(latencies_s: Sequence[float]) -> dict[str, float]:
    if not latencies_s:
        return {f"p{p:g}": float("nan") for p in PERCENTILES} | {"mean": float("nan")}
    ms = np.asarray(latencies_s) * 1e3
    return {f"p{p:g}": float(np.percentile(ms, p)) for p in PERCENTILES} | {"mean": float(ms.mean())}


def summarize(latencies: list[float], window_s: float, errors: int, items_per_request: float,
              concurrency: int, completed: int | None = None) -> dict[str, Any]:
    """Throughput counts ``completed`` requests (default: one per latency) over the window."""
    n = len(latencies) if completed is None else completed
    rps = n / window_s if window_s > 0 else 0.0
    return {"concurrency": concurrency, "requests": n, "errors": errors, "window_s": round(window_s, 3),
            "throughput_rps": rps, "items_per_s": rps * items_per_request, "latency_ms": latency_stats(latencies)}


def _server_stats(raw) -> dict[str, dict[str, float]]:
    out = {}
    for s in raw.model_stats:
        inf = s.inference_stats
        out[s.name] = {"requests": inf.success.count, "failures": inf.fail.count, "executions": s.execution_count,
                       "inferences": s.inference_count, "queue_ns": inf.queue.ns,
                       "compute_ns": inf.compute_input.ns + inf.compute_infer.ns + inf.compute_output.ns,
                       # per execution (a batch counts once, whatever it holds): the model's busy time
                       "exec_ns": sum(b.compute_input.ns + b.compute_infer.ns + b.compute_output.ns
                                      for b in s.batch_stats)}
    return out


def stats_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Per model over the window: requests, executions, mean queue and compute ms per request."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {k: 0 for k in a})
        req = a["requests"] - b["requests"]
        out[name] = {"requests": req, "executions": a["executions"] - b["executions"],
                     "inferences": a["inferences"] - b["inferences"], "failures": a["failures"] - b["failures"],
                     "queue_ms": (a["queue_ns"] - b["queue_ns"]) / max(1, req) / 1e6,
                     "compute_ms": (a["compute_ns"] - b["compute_ns"]) / max(1, req) / 1e6,
                     "busy_ms": (a.get("exec_ns", 0) - b.get("exec_ns", 0)) / 1e6}
    return out


Requests = Sequence[RecommendRequest] | Callable[[int], RecommendRequest]


def _source(requests: Requests) -> tuple[Callable[[int], RecommendRequest], float]:
    """(request for call i, mean items per request) of a fixed list or a generating workload."""
    if callable(requests):
        return requests, float(requests.items_per_request)
    items = float(np.mean([len(r.history) + len(r.candidates) for r in requests]))
    return (lambda i: requests[i % len(requests)]), items


async def _closed_loop(url: str, requests: Requests, concurrency: int, timing: Timing,
                       keep_latencies: bool = False) -> dict[str, Any]:
    get, items = _source(requests)
    async with AsyncRecommenderClient(url, timeout=300.0, retries=0) as client:
        await client.served(client.index_model if get(0).by_id else client.model)
        loop_start = time.perf_counter()
        t0 = loop_start + timing.warmup_s
        done: list[tuple[float, float, bool]] = []       # (start, end, ok) of requests ending after t0
        state = {"stop": False}

        async def worker(k: int) -> None:
            i = k
            while not state["stop"]:
                req = get(i)
                i += concurrency
                start = time.perf_counter()
                try:
                    read_answer(await client.recommend_request(req))
                    ok = True
                except GenrecClientError:
                    ok = False
                    await asyncio.sleep(0)   # a call the client refuses never awaits: yield, or the loop starves
                end = time.perf_counter()
                if end >= t0 and not state["stop"]:
                    done.append((start, end, ok))

        workers = [asyncio.create_task(worker(k)) for k in range(concurrency)]
        await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
        before = _server_stats(await client._grpc.get_inference_statistics())
        await asyncio.sleep(timing.duration_s)
        while sum(1 for s, _, _ in done if s >= t0) < timing.min_requests and \
                time.perf_counter() - t0 < timing.max_duration_s:
            await asyncio.sleep(0.05)
        t_end = time.perf_counter()
        state["stop"] = True
        after = _server_stats(await client._grpc.get_inference_statistics())
        await asyncio.gather(*workers)
    # throughput: every completion inside the window; latency: requests that also started inside it
    window = [(s, e) for s, e, good in done if good and e <= t_end]
    latencies = [e - s for s, e in window if s >= t0]
    errors = sum(1 for _, e, good in done if not good and e <= t_end)
    result = summarize(latencies, t_end - t0, errors, items, concurrency, completed=len(window))
    result["server"] = stats_delta(before, after)
    if keep_latencies:                  # to merge points measured by several client processes
        result["latencies_s"] = latencies
    return result


def served_point(url: str, requests: Requests, concurrency: int, timing: Timing,
                 keep_latencies: bool = False) -> dict[str, Any]:
    """``concurrency`` closed-loop clients over one channel; warm-up excluded."""
    return asyncio.run(_closed_loop(url, requests, concurrency, timing, keep_latencies))


def timed_loop(fn: Callable[[RecommendRequest], Any], requests: Sequence[RecommendRequest],
               timing: Timing) -> dict[str, Any]:
    """Sequential in-process calls (the process uses every core itself), same window rules."""
    i = 0
    start = time.perf_counter()
    while time.perf_counter() - start < timing.warmup_s:
        fn(requests[i % len(requests)])
        i += 1
    lat: list[float] = []
    t0 = time.perf_counter()
    while (time.perf_counter() - t0 < timing.duration_s or len(lat) < timing.min_requests) and \
            time.perf_counter() - t0 < timing.max_duration_s:
        s = time.perf_counter()
        fn(requests[i % len(requests)])
        lat.append(time.perf_counter() - s)
        i += 1
    items = float(np.mean([len(r.history) + len(r.candidates) for r in requests]))
    return summarize(lat, time.perf_counter() - t0, 0, items, 1)
