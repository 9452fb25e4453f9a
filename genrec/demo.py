"""``genrec demo``: the main job end to end on embedded defaults (what ``make demo`` runs).

synth data -> train -> evaluate (held-out dev day) -> export INT8 behind the parity gate -> index the
catalog -> count item statistics (`genrec stats build`) -> build the Triton repository -> start tritonserver
-> real recommendation requests over gRPC
(ranked items with explanations; latency of the cold text path and of the warm id path) -> stop.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from genrec.config import EvalConfig, ModelConfig, TrainConfig
from genrec.data.synth import SynthConfig


@dataclasses.dataclass
class DemoConfig:
    workdir: str = dataclasses.field(default="build/demo", metadata={"help": "where data, run and artifacts go"})
    threads: int = dataclasses.field(default=2, metadata={"help": "CPU threads for torch"})
    enrich_items: int = dataclasses.field(default=0, metadata={
        "help": "rewrite the titles of the first N items with the local LLM (genrec enrich items) before training; "
                "0 = off, because all 3000 take ~35 min on one core (100: ~1.5 min, to see it in the pipeline)"})


def run_demo(cfg: DemoConfig = DemoConfig(), synth: SynthConfig = SynthConfig()) -> dict:
    from genrec.data.synth import synthesize
    from genrec.evaluate import evaluate
    from genrec.printing import print_metrics
    from genrec.train import train

    work = Path(cfg.workdir)
    t0 = time.perf_counter()
    step = _stepper(t0)
    step("synthesizing MIND-format data")
    counts = synthesize(work / "data", synth)
    print(f"  {counts}")
    if cfg.enrich_items:
        step(f"enriching the titles of {cfg.enrich_items} items with the local LLM (cached; the rest keep theirs)")
        from genrec.enrich import EnrichConfig, enrich_items

        enrich_items(work / "data", EnrichConfig(limit=cfg.enrich_items))
    else:                  # an earlier demo's enrichment of the same (seeded) items would still be read
        for stale in (work / "data").glob("*/news_enriched.tsv"):
            stale.unlink()
    step("training (frozen MiniLM, cached; early stopping on validation group-AUC)")
    result = train(work / "data" / "train", work / "run", ModelConfig(), TrainConfig(threads=cfg.threads))
    step("evaluating on the held-out dev day")
    metrics = evaluate(result.checkpoint_path, work / "data" / "dev", EvalConfig(threads=cfg.threads))
    print_metrics(metrics)
    (work / "demo_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    step("exporting the INT8 CPU artifact (ONNX, parity-gated against PyTorch)")
    from genrec.export import ExportConfig, export

    export(result.checkpoint_path, work / "artifacts", ExportConfig(precision=("int8",), threads=cfg.threads))
    print(f"  report: {work / 'artifacts' / 'export_report.md'}")
    step("indexing the catalog (item vectors for the real-time id path)")
    from genrec.core.index import IndexConfig, build_index

    index = build_index(work / "data" / "dev" / "news.tsv", work / "artifacts", work / "index",
                        IndexConfig(precision="int8", threads=cfg.threads))
    step("counting item statistics from the logs (exposures, clicks, history users; refreshable while serving)")
    from genrec.core.statstore import build_stats

    stats = build_stats([work / "data" / "train" / "behaviors.tsv"], work / "stats")
    step("building the Triton model repository (tokenizer -> encoder -> heads ensemble, recommend id path)")
    from genrec.model_repository.builder import RepositoryConfig, build_repository

    repo = build_repository(work / "artifacts", work / "repository",
                            RepositoryConfig(precision="int8", index=str(index), stats=str(stats)))
    step("starting tritonserver and sending recommendation requests over gRPC")
    _serve_and_query(repo, work / "data" / "dev", step, stats)
    step(f"done: {work}")
    return metrics


def _serve_and_query(repo: Path, dev_dir: Path, step, stats_dir: Path, n_latency: int = 100) -> None:
    import numpy as np

    from genrec.client import RecommenderClient, RecommendRequest
    from genrec.core.mind import load_split
    from genrec.core.statstore import StatsTable
    from genrec.printing import print_recommendations
    from genrec.server.launcher import running_server

    dev = load_split(dev_dir)
    stats = StatsTable.read(stats_dir)      # the text path sends the counts the id path reads server-side

    def request(imp) -> RecommendRequest:
        h = [dev.news[i] for i in imp.history]
        c = [dev.news[i] for i in imp.candidates]
        return RecommendRequest([n.title for n in h], [n.title for n in c], [n.category for n in h],
                                [n.category for n in c], [n.subcategory for n in h], [n.subcategory for n in c],
                                history_stats=stats.lookup(imp.history), candidate_stats=stats.lookup(imp.candidates))

    warm = [imp for imp in dev.impressions if len(imp.history) >= 5 and len(imp.candidates) >= 8]
    cold = [imp for imp in dev.impressions if not imp.history]
    with running_server(repo) as server, RecommenderClient(server.grpc_url, timeout=10) as client:
        print(f"  tritonserver ready: gRPC {server.grpc_url}, metrics {server.metrics_url}")
        client.wait_until_ready(30)
        for imp, title in ((warm[0], "a user with history"), *(((cold[0], "a cold user"),) if cold else ())):
            req = request(imp)
            req.top_k = 5
            recs = client.recommend_request(req)
            clicked = {c for c, lab in zip(imp.candidates, imp.labels) if lab}
            hits = [r.index for r in recs if imp.candidates[r.index] in clicked]
            print_recommendations(recs, title=f"{title}: {imp.user_id}, {len(imp.history)} history items, "
                                              f"{len(imp.candidates)} candidates (clicked in top 5: {len(hits)})")
        step(f"latency: {n_latency} sequential requests per path, then {n_latency} with 8 in flight")
        reqs = [request(warm[i % len(warm)]) for i in range(n_latency)]
        by_id = [RecommendRequest(history_ids=list(warm[i % len(warm)].history),
                                  candidate_ids=list(warm[i % len(warm)].candidates)) for i in range(n_latency)]
        texts = np.mean([len(r.history) + len(r.candidates) for r in reqs])
        for label, batch in ((f"text path (cold: all {texts:.0f} texts encoded per request)", reqs),
                             ("id path (warm: every item's vector read from the index)", by_id)):
            lat = [client.recommend_request(r).latency_ms for r in batch]
            t = time.perf_counter()
            client.recommend_many(batch, concurrency=8)
            rps = len(batch) / (time.perf_counter() - t)
            print(f"  {label}:\n    p50 {np.percentile(lat, 50):.1f} ms, p90 {np.percentile(lat, 90):.1f} ms, "
                  f"p99 {np.percentile(lat, 99):.1f} ms sequential; {rps:.0f} requests/s with 8 in flight (INT8)")
    print("  tritonserver stopped")


def _stepper(t0: float):
    def step(msg: str) -> None:
        print(f"\n[{time.perf_counter() - t0:6.1f}s] == {msg}", flush=True)
    return step
