"""``genrec bench``: latency/throughput of the served recommender, with its anchors measured in the same run.

Entry point: ``run_bench(BenchConfig) -> dict`` (also written to OUT/results.json, results.md, latency.png).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from genrec.benchmarks import anchors
from genrec.benchmarks.loadgen import Timing, served_point, timed_loop
from genrec.benchmarks.report import targets, write_report
from genrec.benchmarks.scenarios import CONCURRENCY, PA_CONCURRENCY, REFERENCE, RETRIEVE_M, Scenario, suite
from genrec.benchmarks.workload import (
    IdWorkload,
    load_catalog,
    make_requests,
    perf_analyzer_id_json,
    perf_analyzer_json,
)


@dataclasses.dataclass
class BenchConfig:
    out: str = dataclasses.field(default="build/bench", metadata={"help": "where results.json/.md and the PNG go"})
    quick: bool = dataclasses.field(default=False, metadata={
        "help": "CI smoke: the reference shape only (text and id paths), concurrency 1 and 4, short windows"})
    scenario: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "help": "only scenarios whose name contains one of these (e.g. h50-c100,naive)"})
    device: str = dataclasses.field(default="cpu", metadata={
        "help": "cpu (int8 + fp32) or cuda (fp16 + fp32, needs onnxruntime-gpu)", "choices": ("cpu", "cuda")})
    concurrency: tuple[int, ...] = dataclasses.field(default=CONCURRENCY, metadata={
        "help": "concurrency sweep of every served scenario"})
    warmup_s: float = dataclasses.field(default=2.0, metadata={"help": "seconds per point excluded from statistics"})
    duration_s: float = dataclasses.field(default=6.0, metadata={"help": "measurement window per point (minimum)"})
    min_requests: int = dataclasses.field(default=30, metadata={
        "help": "a window is extended until this many requests completed in it"})
    threads: int = dataclasses.field(default=2, metadata={
        "help": "threads of the in-process anchors and of the encoder (= cores, for a fair floor)"})
    workdir: str = dataclasses.field(default="build/bench-work", metadata={
        "help": "data, model and repositories the suite builds when none are given"})
    artifacts: str = dataclasses.field(default="", metadata={
        "help": "ART_DIR from `genrec export` (default: build/demo/artifacts, else built in --workdir)"})
    checkpoint: str = dataclasses.field(default="", metadata={
        "help": "RUN_DIR for the PyTorch anchor (default: build/demo/run, else trained in --workdir)"})
    data: str = dataclasses.field(default="", metadata={
        "help": "MIND folder whose news.tsv titles make the requests (default: synthetic, real title lengths)"})
    perf_analyzer: str = dataclasses.field(default="", metadata={
        "help": "perf_analyzer binary (default: .venv-perf-analyzer from `make install-perf-analyzer`)"})
    reuse_indexes: bool = dataclasses.field(default=False, metadata={
        "help": "keep a scaled index (1M items) already built in --workdir instead of rebuilding and timing it "
                "(minutes on 2 cores: for repeated runs of the served scenarios; its build is then not reported)"})


def _ensure_model(cfg: BenchConfig, precisions: set[str], log) -> tuple[Path, Path]:
    """The given (or demo) checkpoint and artifacts; what is missing is built in --workdir (never elsewhere)."""
    from genrec.export import Artifacts, ExportConfig, export

    work = Path(cfg.workdir)
    demo_run, demo_art = Path("build/demo/run"), Path("build/demo/artifacts")
    if cfg.checkpoint:
        ckpt = Path(cfg.checkpoint)
    else:
        ckpt = demo_run if (demo_run / "checkpoint.pt").is_file() else work / "run"
    art = Path(cfg.artifacts) if cfg.artifacts else demo_art

    def have(folder: Path) -> set[str]:
        return set(Artifacts.load(folder).precisions) if (folder / "artifacts.json").is_file() else set()

    if precisions <= have(art):
        return ckpt, art
    art = work / "artifacts"
    if precisions <= have(art):
        return ckpt, art
    if not (ckpt / "checkpoint.pt").is_file():
        from genrec.config import ModelConfig, TrainConfig
        from genrec.data.synth import SynthConfig, synthesize
        from genrec.train import train

        log(f"no checkpoint: training one in {work} on synthetic data")
        synthesize(work / "data", SynthConfig())
        train(work / "data" / "train", ckpt, ModelConfig(), TrainConfig(threads=cfg.threads), progress=False, log=log)
    log(f"exporting {sorted(precisions)} from {ckpt} to {art}")
    export(ckpt, art, ExportConfig(precision=tuple(sorted(precisions)), threads=cfg.threads), log=log)
    return ckpt, art


def _catalog(cfg: BenchConfig) -> Path:
    """news.tsv whose titles (real lengths) and ids make the requests."""
    if cfg.data:
        return Path(cfg.data) / "news.tsv"
    news = Path(cfg.workdir) / "catalog" / "train" / "news.tsv"
    if not news.is_file():
        from genrec.data.synth import SynthConfig, synthesize

        synthesize(Path(cfg.workdir) / "catalog", SynthConfig(users=50, items=3000, seed=7))
    return news


def _scaled_catalog(news_tsv: Path, n: int, work: Path) -> Path:
    """``n`` items for the production-scale id path: the catalog's rows repeated under new unique ids
    (``<id>~<k>``), so the index has ``n`` distinct ids whose texts (and vectors) are the real ones."""
    out = work / f"catalog-n{n}" / "news.tsv"
    if out.is_file():
        return out
    rows = [line.split("\t", 1) for line in news_tsv.read_text(encoding="utf-8").splitlines() if line.strip()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for k in range(n):
            item_id, rest = rows[k % len(rows)]
            f.write(f"{item_id}~{k // len(rows)}\t{rest}\n")
    tmp.replace(out)
    return out


def _timed_index_build(catalog: Path, art: Path, out: Path, precision: str, threads: int) -> dict[str, Any]:
    """`genrec index build` in a child process: wall time and that process's own peak RSS (wait4)."""
    import os
    import subprocess
    import sys
    import tempfile

    cmd = [sys.executable, "-m", "genrec.cli", "index", "build", "--catalog", str(catalog), "--artifacts", str(art),
           "--out", str(out), "--precision", precision, "--threads", str(threads), "--quiet"]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as output:              # a file, not a pipe: a chatty child cannot block
        proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            output.seek(0)
            raise RuntimeError(f"index build failed ({proc.returncode}):\n"
                               f"{output.read().decode(errors='replace')[-2000:]}")
    m = json.loads((out / "index.json").read_text())
    return {"items": m["count"], "seconds": round(seconds, 1), "encoded_texts": m.get("encoded_texts"),
            "reused_texts": m.get("reused_texts"), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "vectors_mb": round(m["count"] * m["dim"] * 4 / 2**20, 1)}


def _repository(art: Path, sc: Scenario, cfg: BenchConfig, work: Path, index: Path | None,
                stats: Path | None = None) -> Path:
    from genrec.model_repository.builder import RepositoryConfig, build_repository

    # caches off: the suite cycles 64 requests, so cached vectors or token ids would measure the caches, not the
    # encoder path the anchors run (the caches are measured on real logs by `genrec bench replay`)
    rc = RepositoryConfig(precision=sc.precision, device=cfg.device, encoder_threads=cfg.threads,
                          index=str(index) if index else "", stats=str(stats) if index and stats else "",
                          encoder_cache_mb=0, tokenizer_cache_mb=0)
    if sc.target == "naive":
        rc = dataclasses.replace(rc, fixed_padding=True, dynamic_batching=False)
    scale = f"-n{sc.catalog}" if sc.catalog else ""
    return build_repository(art, work / "repos" / f"{sc.target}-{sc.precision}{scale}", rc)


def run_bench(cfg: BenchConfig, *, log=print) -> dict[str, Any]:
    from genrec.core.progress import progress
    from genrec.server.launcher import running_server

    t_start = time.perf_counter()
    if cfg.quick:
        cfg = dataclasses.replace(cfg, concurrency=(1, 4), warmup_s=min(cfg.warmup_s, 1.0),
                                  duration_s=min(cfg.duration_s, 3.0), min_requests=min(cfg.min_requests, 10))
    scenarios = [s for s in suite("quick" if cfg.quick else "full", cfg.device)
                 if not cfg.scenario or any(f in s.name for f in cfg.scenario)]
    if not scenarios:
        raise ValueError(f"no scenario matches {cfg.scenario}")
    out, work = Path(cfg.out), Path(cfg.workdir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    ckpt, art = _ensure_model(cfg, {s.precision for s in scenarios}, log)
    timing = Timing(cfg.warmup_s, cfg.duration_s, cfg.min_requests)
    news_tsv = _catalog(cfg)
    catalog = load_catalog(news_tsv)
    # item statistics: counted from the catalog's behaviors log when there is one (the id path serves them
    # by id; text requests carry the same counts); else every request carries seeded plausible counts
    stats_dir, stats_table = None, None
    if (news_tsv.parent / "behaviors.tsv").is_file():
        from genrec.core.statstore import StatsTable, build_stats

        stats_dir = build_stats([news_tsv.parent / "behaviors.tsv"], work / "stats", log=log)
        stats_table = StatsTable.read(stats_dir)
    shapes = sorted({(s.history, s.candidates) for s in scenarios if s.mode == "text"})
    reqs = {shape: make_requests(catalog, *shape, stats=stats_table) for shape in shapes}
    indexes: dict[tuple[str, int], Path] = {}           # (precision, catalog size; 0 = as is) -> INDEX_DIR
    index_builds: dict[str, Any] = {}
    catalogs = {0: catalog}
    for p in sorted({s.precision for s in scenarios if s.mode == "ids"}):
        from genrec.core.index import IndexConfig, build_index

        t0 = time.perf_counter()
        indexes[(p, 0)] = build_index(news_tsv, art, work / f"index-{p}", IndexConfig(precision=p, threads=cfg.threads),
                                      progress=False, log=log)
        m = json.loads((indexes[(p, 0)] / "index.json").read_text())
        index_builds[f"{m['count']}-{p}"] = {"items": m["count"], "seconds": round(time.perf_counter() - t0, 1),
                                             "encoded_texts": m.get("encoded_texts"), "peak_rss_mb": None,
                                             "note": "in the suite's process (cached when built before)"}
    indexed = ("ids", "retrieve")
    for n in sorted({s.catalog for s in scenarios if s.mode in indexed and s.catalog}):
        scaled = _scaled_catalog(news_tsv, n, work)
        catalogs[n] = load_catalog(scaled)
        for p in sorted({s.precision for s in scenarios if s.mode in indexed and s.catalog == n}):
            folder = work / f"index-{p}-n{n}"
            if cfg.reuse_indexes and (folder / "index.json").is_file():
                indexes[(p, n)] = folder
                continue
            if folder.exists():
                shutil.rmtree(folder)                   # timed from scratch every run
            log(f"building the {n}-item {p} index (timed, in a child process)")
            index_builds[f"{n}-{p}"] = _timed_index_build(scaled, art, folder, p, cfg.threads)
            indexes[(p, n)] = folder
    results: dict[str, Any] = {"config": dataclasses.asdict(cfg), "machine": anchors.machine_info(),
                               "artifacts": str(art), "scenarios": {}, "in_process": {}, "torch_eager": {},
                               "perf_analyzer": {}, "memory": {}, "index_builds": index_builds}
    export_report = Path(art) / "export_report.json"
    if export_report.is_file():
        rep = json.loads(export_report.read_text())
        results["parity"] = {p: {k: e["parity"][k] for k in ("auc_drop", "kendall_tau_mean", "encoder_cosine_mean")}
                             for p, e in rep["precisions"].items()}

    n_points = sum(len(s.concurrency or cfg.concurrency) for s in scenarios)
    bar = progress(total=n_points, desc="bench", unit="point")

    # anchors first: in-process ONNX per (shape, precision) and PyTorch eager per shape
    for p in sorted({s.precision for s in scenarios if s.target == "ours" and s.mode == "text"}):
        floor = anchors.onnx_in_process(art, p, cfg.threads, cfg.device)
        for shape in shapes:
            bar.set_postfix_str(f"in-process onnx {p} h{shape[0]}-c{shape[1]}")
            results["in_process"][f"h{shape[0]}-c{shape[1]}-{p}"] = timed_loop(floor, reqs[shape], timing)
        del floor
    eager = anchors.torch_eager(ckpt, cfg.threads, cfg.device)
    results["torch_eager_device"] = eager.device
    for shape in shapes:
        bar.set_postfix_str(f"torch eager h{shape[0]}-c{shape[1]}")
        results["torch_eager"][f"h{shape[0]}-c{shape[1]}"] = timed_loop(eager, reqs[shape], timing)
    del eager

    pa_binary = anchors.perf_analyzer_binary(cfg.perf_analyzer)
    groups: dict[tuple[str, str, int], list[Scenario]] = {}
    for s in scenarios:
        groups.setdefault((s.target, s.precision, s.catalog), []).append(s)
    for (target, precision, size), members in groups.items():
        repo = _repository(art, members[0], cfg, work, indexes.get((precision, size)) if target == "ours" else None,
                           stats_dir)
        if any(sc.mode == "retrieve" for sc in members):
            from genrec.core.artifacts import Artifacts as ServedArtifacts
            from genrec.core.retrieval import has_retrieval

            if has_retrieval(ServedArtifacts.load(art)) is None:
                raise ValueError(f"the retrieve scenarios need artifacts with retrieval.onnx; {art} was exported "
                                 "before it existed: re-export (genrec export) or pass --artifacts")
        with running_server(repo) as server:
            import tritonclient.grpc as grpcclient

            results.setdefault("server_version", grpcclient.InferenceServerClient(server.grpc_url)
                               .get_server_metadata().version)
            for sc in members:
                points = []
                for c in sc.concurrency or cfg.concurrency:
                    bar.set_postfix_str(f"{sc.name} c={c}")
                    work_ = (IdWorkload(catalogs[sc.catalog], sc.history, sc.candidates, sc.unknown, seed=c)
                             if sc.mode in indexed           # retrieve: no candidates, k = the server's default
                             else reqs[(sc.history, sc.candidates)])
                    points.append(served_point(server.grpc_url, work_, c, timing) | {"load": anchors.load_now()})
                    bar.update(1)
                results["scenarios"][sc.name] = {"scenario": dataclasses.asdict(sc), "points": points}
                if sc.mode in indexed and not sc.unknown and pa_binary is not None:
                    # Triton's own load generator on the same model, server and request shape, right after ours
                    pa_json = perf_analyzer_id_json(
                        [IdWorkload(catalogs[sc.catalog], sc.history, sc.candidates, 0.0, seed=5)(i)
                         for i in range(64)], work / f"perf_analyzer_{sc.name}.json")
                    for c in [c for c in PA_CONCURRENCY if c in (sc.concurrency or cfg.concurrency)]:
                        bar.set_postfix_str(f"perf_analyzer {sc.name} c={c}")
                        results["perf_analyzer"][f"{sc.name}@c{c}"] = anchors.perf_analyzer(
                            pa_binary, server.grpc_url, pa_json, c, work,
                            window_ms=int(max(1000, cfg.duration_s * 1000)), model="recommend") | {
                            "load": anchors.load_now()}
                if sc.mode == "retrieve":
                    bar.set_postfix_str(f"{sc.name}: ANN recall vs exact")
                    results["scenarios"][sc.name]["ann"] = anchors.ann_recall(
                        art, indexes[(precision, size)], IdWorkload(catalogs[sc.catalog], sc.history, 0, 0.0, seed=99),
                        RETRIEVE_M)
            results["memory"][f"{target}-{precision}" + (f"-n{size}" if size else "")] = \
                anchors.process_memory(server.proc.pid)
            ref = next((s for s in members if (s.history, s.candidates) == REFERENCE and s.mode == "text"), None)
            text_pa = any(key.startswith("ours-") for key in results["perf_analyzer"])   # once: the first precision
            if target == "ours" and ref is not None and not text_pa:
                if pa_binary is None:
                    results["perf_analyzer"] = {"error": "perf_analyzer not found (make install-perf-analyzer)"}
                else:
                    pa_json = perf_analyzer_json(reqs[REFERENCE], work / "perf_analyzer_input.json")
                    for c in (1, 4):
                        bar.set_postfix_str(f"perf_analyzer {ref.name} c={c}")
                        results["perf_analyzer"][f"{ref.name}@c{c}"] = anchors.perf_analyzer(
                            pa_binary, server.grpc_url, pa_json, c, work,
                            window_ms=int(max(1000, cfg.duration_s * 1000)))
    bar.close()
    results["targets"] = targets(results)
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    write_report(results, out)
    return results
