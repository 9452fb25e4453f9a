"""``genrec bench replay``: replay a MIND impression log against the server as online services would.

Each impression is one request -- the user's history and that impression's candidates -- sent in time
order by ``concurrency`` closed-loop clients (or paced at ``speed`` x the log's own clock). Paths:

* ``text-uncached``: texts to the ``genrec`` ensemble, caches off -- the anchor, every text tokenized and encoded;
* ``text``: the same requests with the encoder's content-addressed vector cache and the tokenizer's token-id
  cache on (the defaults);
* ``ids``: ids to the ``recommend`` model over an item index of the log's catalog.

Every path runs on its own freshly started server (an empty cache at the start of the log), side by side
in one run. Reports p50/p99/p99.9 latency, requests/s, items/s, errors, the cache's hit rate (from its
Prometheus counters) and the encoder's share of model compute time (Triton's statistics).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

PATHS = ("text-uncached", "text", "ids")


@dataclasses.dataclass
class ReplayConfig:
    data: str = dataclasses.field(default="build/demo/data/dev", metadata={
        "help": "MIND folder whose behaviors.tsv is replayed (news.tsv: the texts and the id path's catalog)"})
    artifacts: str = dataclasses.field(default="build/demo/artifacts", metadata={
        "help": "export artifacts with an INT8 (per-text) encoder"})
    out: str = dataclasses.field(default="build/replay", metadata={"help": "results.json, results.md, work files"})
    paths: tuple[str, ...] = dataclasses.field(default=PATHS, metadata={
        "help": "text-uncached (anchor), text (vector cache on), ids (item index)"})
    concurrency: int = dataclasses.field(default=4, metadata={"help": "closed-loop clients replaying in order"})
    speed: float = dataclasses.field(default=0.0, metadata={
        "help": "pace at this multiple of the log's clock (0 = as fast as the server answers)"})
    limit: int = dataclasses.field(default=0, metadata={"help": "replay only the first N impressions (0 = all)"})
    cache_mb: float = dataclasses.field(default=64.0, metadata={"help": "vector cache per encoder instance (MB)"})
    token_cache_mb: float = dataclasses.field(default=8.0, metadata={
        "help": "token-id cache per tokenizer instance (MB) on the cached paths"})
    precision: str = dataclasses.field(default="int8", metadata={"help": "served precision"})


def _requests(cfg: ReplayConfig):
    from genrec.client import RecommendRequest
    from genrec.core.mind import load_split

    split = load_split(cfg.data)
    imps = sorted(split.impressions, key=lambda i: i.time)
    if cfg.limit:
        imps = imps[: cfg.limit]
    news = split.news

    def known(ids):
        return [i for i in ids if i in news]

    text, ids, times = [], [], []
    for imp in imps:
        h, c = known(imp.history), known(imp.candidates)
        if not c:
            continue
        item = lambda i: news[i]  # noqa: E731
        text.append(RecommendRequest([item(i).title for i in h], [item(i).title for i in c],
                                     [item(i).category for i in h], [item(i).category for i in c],
                                     [item(i).subcategory for i in h], [item(i).subcategory for i in c]))
        ids.append(RecommendRequest(history_ids=h, candidate_ids=c))
        times.append(imp.time.timestamp())
    return text, ids, np.asarray(times) - (times[0] if times else 0.0)


def cache_counters(metrics_url: str) -> dict[str, float]:
    """The genrec_vector_cache_* and genrec_token_cache_* metrics of a server, summed over model instances."""
    out: dict[str, float] = {}
    for line in urllib.request.urlopen(metrics_url, timeout=10).read().decode().splitlines():
        if line.startswith(("genrec_vector_cache_", "genrec_token_cache_")):
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = out.get(name.split("{")[0], 0.0) + float(value)
    return out


async def _replay(url: str, requests, offsets: np.ndarray, concurrency: int, speed: float) -> dict[str, Any]:
    from genrec.benchmarks.loadgen import _server_stats, stats_delta, summarize
    from genrec.client import AsyncRecommenderClient, GenrecClientError

    async with AsyncRecommenderClient(url, timeout=300.0, retries=0) as client:
        await client.served(client.index_model if requests[0].by_id else client.model)
        before = _server_stats(await client._grpc.get_inference_statistics())
        latencies: list[float] = []
        errors = 0
        state = {"next": 0}
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal errors
            while state["next"] < len(requests):
                i = state["next"]
                state["next"] += 1
                if speed > 0:                               # open the request at its time in the log
                    await asyncio.sleep(max(0.0, t0 + offsets[i] / speed - time.perf_counter()))
                start = time.perf_counter()
                try:
                    await client.recommend_request(requests[i])
                    latencies.append(time.perf_counter() - start)
                except GenrecClientError:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        after = _server_stats(await client._grpc.get_inference_statistics())
    items = float(np.mean([len(r.history or r.history_ids or ()) + len(r.candidates or r.candidate_ids or ())
                           for r in requests]))
    out = summarize(latencies, wall, errors, items, concurrency)
    out["server"] = stats_delta(before, after)
    compute = {m: s["compute_ms"] * s["requests"] for m, s in out["server"].items()}
    total = sum(v for m, v in compute.items() if m in ("tokenizer", "encoder", "heads", "recommend"))
    out["encoder_share"] = compute.get("encoder", 0.0) / total if total > 0 else None
    return out


def run_replay(cfg: ReplayConfig = ReplayConfig(), *, log=print) -> dict[str, Any]:
    from genrec.core.index import IndexConfig, build_index
    from genrec.model_repository.builder import RepositoryConfig, build_repository
    from genrec.server.launcher import running_server

    unknown = set(cfg.paths) - set(PATHS)
    if unknown:
        raise ValueError(f"unknown path(s) {sorted(unknown)}; choose from {list(PATHS)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    text, ids, offsets = _requests(cfg)
    log(f"replay: {len(text)} impressions of {cfg.data} in time order, concurrency {cfg.concurrency}"
        + (f", {cfg.speed}x the log's clock" if cfg.speed else ", as fast as served"))
    results: dict[str, Any] = {"config": dataclasses.asdict(cfg), "impressions": len(text), "paths": {}}
    for path in cfg.paths:
        uncached = path == "text-uncached"          # the anchor: every text tokenized and encoded
        repo_cfg = RepositoryConfig(precision=cfg.precision, encoder_cache_mb=0 if uncached else cfg.cache_mb,
                                    tokenizer_cache_mb=0 if uncached else cfg.token_cache_mb)
        if path == "ids":
            index = build_index(Path(cfg.data) / "news.tsv", cfg.artifacts, out / "index",
                                IndexConfig(precision=cfg.precision), progress=False, log=lambda _m: None)
            repo_cfg = dataclasses.replace(repo_cfg, index=str(index))
        repo = build_repository(cfg.artifacts, out / f"repo-{path}", repo_cfg)
        with running_server(repo) as srv:
            res = asyncio.run(_replay(srv.grpc_url, ids if path == "ids" else text, offsets, cfg.concurrency,
                                      cfg.speed))
            counters = cache_counters(srv.metrics_url)
        hits, misses = counters.get("genrec_vector_cache_hits_total", 0.0), counters.get(
            "genrec_vector_cache_misses_total", 0.0)
        res["cache_hit_rate"] = hits / (hits + misses) if hits + misses else None
        t_hits, t_misses = (counters.get(f"genrec_token_cache_{k}_total", 0.0) for k in ("hits", "misses"))
        res["token_cache_hit_rate"] = t_hits / (t_hits + t_misses) if t_hits + t_misses else None
        results["paths"][path] = res
        lat = res["latency_ms"]
        log(f"  {path:14s} {res['throughput_rps']:8.1f} req/s {res['items_per_s']:9.0f} items/s  p50 {lat['p50']:7.1f} "
            f"p99 {lat['p99']:7.1f} p99.9 {lat['p99.9']:7.1f} ms  errors {res['errors']}  cache hits "
            + ("-" if res["cache_hit_rate"] is None else f"{res['cache_hit_rate']:.1%}")
            + ("" if res["encoder_share"] is None else f"  encoder {res['encoder_share']:.0%} of compute"))
    paths = results["paths"]
    if "text" in paths and "text-uncached" in paths:
        base, cached = paths["text-uncached"], paths["text"]
        results["targets"] = {
            "text path with cache / uncached, requests/s": cached["throughput_rps"] / base["throughput_rps"],
            "text path p99 with cache / uncached": cached["latency_ms"]["p99"] / base["latency_ms"]["p99"]}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    c = results["config"]
    pace = f"{c['speed']:g}x log clock" if c["speed"] else "as fast as served"
    lines = [f"Replay of `{c['data']}` ({results['impressions']} impressions in time order, concurrency "
             f"{c['concurrency']}, {c['precision']}, {pace}); each path on a fresh server, side by side in one run.",
             "", "| path | requests/s | items/s | p50 ms | p99 ms | p99.9 ms | errors | cache hit rate | "
             "encoder share of compute |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["paths"].items():
        lat = r["latency_ms"]
        hit = "–" if r["cache_hit_rate"] is None else f"{r['cache_hit_rate']:.1%}"
        enc = "–" if r["encoder_share"] is None else f"{r['encoder_share']:.0%}"
        lines.append(f"| {name} | {r['throughput_rps']:.1f} | {r['items_per_s']:.0f} | {lat['p50']:.1f} | "
                     f"{lat['p99']:.1f} | {lat['p99.9']:.1f} | {r['errors']} | {hit} | {enc} |")
    for k, v in results.get("targets", {}).items():
        lines.append(f"\n{k}: **{v:.2f}**")
    return "\n".join(lines) + "\n"
