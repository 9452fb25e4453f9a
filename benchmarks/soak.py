"""Soak: mixed valid and invalid traffic at a fixed concurrency for minutes, against a live tritonserver.

    genrec bench soak --repository build/repo --concurrency 32 --minutes 10     # starts its own server
    genrec bench soak --url 127.0.0.1:8001 --minutes 10                          # a running server

Requests go over raw ``tritonclient.grpc.aio`` (the genrec client would refuse the invalid ones locally).
Outcomes: ``ok`` (a valid request answered with finite scores of the right shape), ``rejected`` (an invalid
request answered INVALID_ARGUMENT) and ``unexpected`` (anything else: these fail the soak). Latency of valid
requests is reported per time window (drift = last window vs first); RSS of tritonserver and of each
python-backend stub (its children) at the start (after warm-up) and at the end (growth must stay under
``max_rss_growth``). Exit code 1 when either target is missed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from genrec.benchmarks.workload import plausible_stats
from genrec.client.common import bytes_input
from genrec.core.contract import ENSEMBLE, N_STATS, RECOMMEND, RecommendParams, ServedParams
from genrec.server.launcher import running_server, stub_processes

TEXT_INPUTS = tuple(t for t in ENSEMBLE.inputs if not t.optional)     # the optional item statistics are added apart

WORDS = ("market team storm election coach vaccine stocks league senator recipe earnings playoff weather "
         "court museum startup rally quarterback injury festival climate budget airline science travel "
         "police concert school housing energy crypto transfer coastal record drought tariff summit").split()


@dataclasses.dataclass
class SoakConfig:
    repository: str = dataclasses.field(default="", metadata={
        "help": "model repository to start a tritonserver on for the soak (or --url)"})
    url: str = dataclasses.field(default="", metadata={
        "help": "gRPC HOST:PORT of a running server; its RSS is found through the --grpc-port on its command line"})
    concurrency: int = dataclasses.field(default=32, metadata={"help": "requests in flight at all times"})
    minutes: float = dataclasses.field(default=10.0, metadata={
        "help": "measured duration after warm-up; leaks and drift need minutes to show"})
    warmup_s: float = dataclasses.field(default=15.0, metadata={
        "help": "traffic before RSS and latency are measured (ORT arenas and allocators reach their working set)"})
    invalid_fraction: float = dataclasses.field(default=0.2, metadata={
        "help": "share of requests that are invalid on purpose (each must come back INVALID_ARGUMENT)"})
    history_items: int = dataclasses.field(default=30, metadata={
        "help": "valid requests carry 0..N history items (0 = a cold user)"})
    candidate_items: int = dataclasses.field(default=40, metadata={"help": "valid requests carry 1..N candidates"})
    timeout_s: float = dataclasses.field(default=30.0, metadata={
        "help": "per-request deadline; a request past it is an unexpected error"})
    windows: int = dataclasses.field(default=10, metadata={"help": "time windows for latency percentiles and drift"})
    max_rss_growth: float = dataclasses.field(default=0.10, metadata={
        "help": "largest allowed RSS growth of any process (server or stub), end vs start"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the request mix"})
    id_fraction: float = dataclasses.field(default=0.5, metadata={
        "help": "share of valid requests sent to the id path (`recommend`) when the server has one and its "
                "index folder is readable here; a tenth of their candidates are new items with text"})
    out: str = dataclasses.field(default="build/soak/soak.json", metadata={"help": "where the JSON report goes"})


@dataclasses.dataclass
class Served:
    """What the soak reads from the served configs: limits, categories, heads dimensions."""

    max_history: int
    max_candidates: int
    max_text_bytes: int
    categories: list[str]
    dim: int
    index_dir: str = ""          # the `recommend` model's item index ("" = no id path served)


Texts = dict[str, list[Any]]          # ensemble input name -> values (str or raw bytes)


def _bytes_input(name: str, values: list[Any]) -> grpcclient.InferInput:
    return bytes_input(grpcclient.InferInput, name, values)


def _texts(history: list[str], candidates: list[str], rng: np.random.Generator, categories: list[str]) -> Texts:
    def cats(n: int) -> list[str]:
        return [categories[i] for i in rng.integers(0, len(categories), n)]

    return {"history_text": history, "history_category": cats(len(history)), "history_subcategory": [""] * len(history),
            "candidate_text": candidates, "candidate_category": cats(len(candidates)),
            "candidate_subcategory": [""] * len(candidates)}


def _title(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(6, 15)))).capitalize()


def valid_request(rng: np.random.Generator, cfg: SoakConfig, served: Served) -> Texts:
    history = [_title(rng) for _ in range(int(rng.integers(0, cfg.history_items + 1)))]
    candidates = [_title(rng) for _ in range(int(rng.integers(1, cfg.candidate_items + 1)))]
    return _texts(history, candidates, rng, served.categories)


def invalid_requests(rng: np.random.Generator, served: Served) -> dict[str, tuple[str, list]]:
    """Invalid requests, one per kind: kind -> (model, inputs). Each must be rejected with INVALID_ARGUMENT."""
    def ensemble(history: list[Any], candidates: list[Any], **override: list[Any]) -> tuple[str, list]:
        texts = _texts(history, candidates, rng, served.categories) | override
        return "genrec", [_bytes_input(t.name, texts[t.name]) for t in TEXT_INPUTS]

    title = _title(rng)
    vectors = np.zeros((2, served.dim), np.float32)                                  # (H + C, D) = (1 + 1, D)
    vectors[1, 0] = np.nan
    heads = []
    for name, value in (("item_vectors", vectors), *((n, np.zeros(1, np.int64)) for n in (
            "history_category", "history_subcategory", "candidate_category", "candidate_subcategory"))):
        inp = grpcclient.InferInput(name, list(value.shape), "FP32" if value.dtype == np.float32 else "INT64")
        inp.set_data_from_numpy(value)
        heads.append(inp)
    return {
        "no_candidates": ensemble([title], []),
        "too_many_candidates": ensemble([], [title] * (served.max_candidates + 1)),
        "too_much_history": ensemble([title] * (served.max_history + 1), [title]),
        "blank_text": ensemble([title, " \t "], [title]),
        "non_utf8_text": ensemble([], [b"\xff\xfe" + title.encode()]),
        "oversized_text": ensemble([], ["x" * (served.max_text_bytes + 1)]),
        "misaligned_categories": ensemble([], [title, title], candidate_category=["sports"]),
        "nan_item_vectors": ("heads", heads),
        # attention masks a tokenizer never writes, straight to the encoder (the vector-cache poisoning of issue
        # 27.4: a hole in the mask under a real title's tokens)
        "encoder_mask_with_a_hole": ("encoder", _encoder_inputs([[101, 7592, 2088, 102]], [[1, 1, 0, 1]])),
        "encoder_mask_not_binary": ("encoder", _encoder_inputs([[101, 7592, 102]], [[1, 3, 1]])),
        "negative_item_stats": ("genrec", [*ensemble([title], [title])[1], _fp32_input("candidate_stats",
                                                                                     np.full((1, N_STATS), -1.0))]),
    }


def _encoder_inputs(ids: list[list[int]], mask: list[list[int]]) -> list[grpcclient.InferInput]:
    out = []
    for name, value in (("input_ids", ids), ("attention_mask", mask)):
        inp = grpcclient.InferInput(name, [len(value), len(value[0])], "INT64")
        inp.set_data_from_numpy(np.asarray(value, dtype=np.int64))
        out.append(inp)
    return out


def _fp32_input(name: str, value: np.ndarray) -> grpcclient.InferInput:
    arr = np.ascontiguousarray(value, dtype=np.float32)
    inp = grpcclient.InferInput(name, list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    return inp


def _stats_inputs(texts: Texts, i: int) -> list[grpcclient.InferInput]:
    """Every other valid request carries item statistics (the optional inputs); the rest get the prior."""
    if i % 2:
        return []
    rng = np.random.default_rng(i)
    return [_fp32_input(f"{side}_stats", plausible_stats(len(texts[f"{side}_text"]), rng))
            for side in ("history", "candidate")]


async def read_served(client: aioclient.InferenceServerClient) -> Served:
    ens = ServedParams.from_parameters((await client.get_model_config(ENSEMBLE.name)).config.parameters)
    index_dir = ""
    if await client.is_model_ready(RECOMMEND.name):
        index_dir = RecommendParams.from_parameters(
            (await client.get_model_config(RECOMMEND.name)).config.parameters).index_dir
    return Served(ens.max_history, ens.max_candidates, ens.max_text_bytes, list(ens.categories), ens.dim, index_dir)


# ---- the id path (`recommend`) ------------------------------------------------------------------
ID_INPUTS = tuple(t.name for t in RECOMMEND.inputs)


def known_ids(served: Served, n: int = 4096) -> list[str]:
    """Ids the served index holds (read from its folder; empty when it is not readable from here)."""
    if not served.index_dir or not Path(served.index_dir, "index.json").is_file():
        return []
    from genrec.core.index import ItemIndex

    ids = ItemIndex(served.index_dir).ids
    return [bytes(i).decode() for i in ids[: min(n, len(ids))]]


def _id_inputs(history: list[Any], candidates: list[Any], new: dict[str, tuple[str, str]],
               k: int | None = None) -> list:
    """The id path's inputs: the required ones, the candidates, and ``k`` (retrieval) when given; the other
    optional retrieval inputs are left out (their defaults)."""
    values = {"history_id": history, "candidate_id": candidates, "new_item_id": list(new),
              "new_item_text": [t for t, _ in new.values()], "new_item_category": [c for _, c in new.values()],
              "new_item_subcategory": [""] * len(new)}
    inputs = [_bytes_input(name, values[name]) for name in ID_INPUTS if name in values]
    if k is not None:
        inp = grpcclient.InferInput("k", [1], "INT32")
        inp.set_data_from_numpy(np.array([k], dtype=np.int32))
        inputs.append(inp)
    return inputs


def valid_id_request(rng: np.random.Generator, cfg: SoakConfig, served: Served, ids: list[str],
                     i: int) -> tuple[list, int]:
    history = list(rng.choice(ids, int(rng.integers(0, min(cfg.history_items, served.max_history) + 1))))
    candidates = list(rng.choice(ids, int(rng.integers(1, min(cfg.candidate_items, served.max_candidates) + 1))))
    new = {}
    for j in range(len(candidates) // 10):          # new items: fresh ids with text (encoded, then the LRU)
        candidates[j] = f"soak-new-{i}-{j}"
        new[candidates[j]] = (_title(rng), served.categories[int(rng.integers(len(served.categories)))])
    return _id_inputs(history, candidates, new), len(candidates)


def invalid_id_requests(ids: list[str]) -> dict[str, tuple[str, list]]:
    return {
        "ids_unknown_without_text": ("recommend", _id_inputs(ids[:1], [ids[0], "soak-no-such-item"], {})),
        "ids_retrieval_k_zero": ("recommend", _id_inputs(ids[:1], [], {}, k=0)),
        "ids_id_over_64_bytes": ("recommend", _id_inputs([], ["x" * 65], {})),
    }


# ---- processes and memory -----------------------------------------------------------------------
def server_processes(server_pid: int) -> dict[str, psutil.Process]:
    """tritonserver and its python-backend stubs, by name (stubs by model instance, e.g. ``encoder_0_0``)."""
    procs = {"tritonserver": psutil.Process(server_pid)}
    for pid, name in stub_processes(server_pid).items():
        with contextlib.suppress(psutil.Error):              # a stub that ended meanwhile
            procs[name] = psutil.Process(pid)
    return procs


def find_server_pid(url: str) -> int | None:
    """The local tritonserver serving gRPC on ``url``'s port (the launcher passes --grpc-port=PORT)."""
    port = url.rsplit(":", 1)[-1]
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] == "tritonserver" and f"--grpc-port={port}" in (p.info["cmdline"] or []):
            return p.pid
    return None


def rss_mb(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, p in procs.items():
        try:
            out[name] = p.memory_info().rss / 2**20
        except psutil.Error:             # a process that died is reported as missing, not as zero
            out[name] = float("nan")
    return out


# ---- the soak -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    t: float             # seconds since the measured phase began (negative during warm-up)
    kind: str            # "valid" or an invalid kind
    latency_s: float
    result: str          # ok | rejected | unexpected
    detail: str = ""
    model: str = "genrec"  # which served model answered (genrec = text path, recommend = id path)


async def _traffic(url: str, cfg: SoakConfig, on_phase: Callable[[str], None]) -> tuple[list[Outcome], float]:
    """Run warm-up then the measured phase; ``on_phase("start"/"window i"/"end")`` samples RSS at boundaries."""
    rng = np.random.default_rng(cfg.seed)
    client = aioclient.InferenceServerClient(url)
    try:
        served = await read_served(client)
        pool = [([*(_bytes_input(t.name, r[t.name]) for t in TEXT_INPUTS), *_stats_inputs(r, i)],
                 len(r["candidate_text"]))
                for i, r in enumerate(valid_request(rng, cfg, served) for _ in range(256))]
        invalid = list(invalid_requests(rng, served).items())
        ids = known_ids(served)
        id_pool = [valid_id_request(rng, cfg, served, ids, i) for i in range(256)] if ids else []
        if ids:
            invalid += list(invalid_id_requests(ids).items())
        # prime: the largest valid request from every worker at once, twice, so the dynamic batcher forms its
        # largest merged batch and the ORT arenas reach their working set before the start RSS is sampled
        # (otherwise a short soak reads arena growth as a leak)
        biggest = max(pool, key=lambda entry: entry[1])[0]
        for _ in range(2):
            await asyncio.gather(*(client.infer("genrec", biggest, client_timeout=cfg.timeout_s)
                                   for _ in range(cfg.concurrency)))
        outcomes: list[Outcome] = []
        duration = cfg.minutes * 60
        t0 = time.monotonic() + cfg.warmup_s
        end = t0 + duration

        async def worker(w: int) -> None:
            local = np.random.default_rng(cfg.seed + 1 + w)
            while (now := time.monotonic()) < end:
                if local.random() < cfg.invalid_fraction:
                    kind, (model, inputs) = invalid[int(local.integers(len(invalid)))]
                    n_candidates = 0
                elif id_pool and local.random() < cfg.id_fraction:
                    kind, model = "valid", "recommend"
                    inputs, n_candidates = id_pool[int(local.integers(len(id_pool)))]
                else:
                    kind, model = "valid", "genrec"
                    inputs, n_candidates = pool[int(local.integers(len(pool)))]
                start = time.perf_counter()
                try:
                    res = await client.infer(model, inputs, client_timeout=cfg.timeout_s)
                    error = None
                except InferenceServerException as exc:
                    res, error = None, exc
                latency = time.perf_counter() - start
                outcomes.append(Outcome(now - t0, kind, latency, *_classify(kind, n_candidates, res, error),
                                        model=model))

        async def sampler() -> None:
            await asyncio.sleep(cfg.warmup_s)
            on_phase("start")
            for i in range(1, cfg.windows):
                await asyncio.sleep(duration / cfg.windows)
                on_phase(f"window {i}")

        await asyncio.gather(sampler(), *(worker(w) for w in range(cfg.concurrency)))
        on_phase("end")
        return outcomes, duration
    finally:
        await client.close()


def _classify(kind: str, n_candidates: int, res, error: InferenceServerException | None) -> tuple[str, str]:
    if kind != "valid":
        if error is not None and str(error.status()).endswith("INVALID_ARGUMENT"):
            return "rejected", ""
        return "unexpected", f"{kind}: " + ("served" if error is None else f"{error.status()} {error.message()}")
    if error is not None:
        return "unexpected", f"valid: {error.status()} {error.message()}"
    scores = res.as_numpy("scores")                                              # (C,)
    if scores is None or scores.shape != (n_candidates,) or not np.isfinite(scores).all():
        return "unexpected", f"valid: scores {None if scores is None else scores.shape}, expected ({n_candidates},)"
    return "ok", ""


def summarize(outcomes: list[Outcome], duration: float, rss: dict[str, dict[str, float]],
              cfg: SoakConfig) -> dict[str, Any]:
    measured = [o for o in outcomes if 0 <= o.t < duration]
    counts = collections.Counter(o.result for o in measured)
    width = duration / cfg.windows
    windows = []
    for i in range(cfg.windows):
        lat = [o.latency_s * 1e3 for o in measured if o.kind == "valid" and o.result == "ok" and
               i * width <= o.t < (i + 1) * width]
        windows.append({"window": i, "start_s": round(i * width, 1), "valid_ok": len(lat),
                        "p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
                        "p99_ms": float(np.percentile(lat, 99)) if lat else float("nan")})
    drift = {p: windows[-1][f"{p}_ms"] / windows[0][f"{p}_ms"] - 1 for p in ("p50", "p99")}
    start, end = rss.get("start", {}), rss.get("end", {})
    growth = {name: {"start_mb": start[name], "end_mb": end.get(name, float("nan")),
                     "growth": end.get(name, float("nan")) / start[name] - 1} for name in start}
    unexpected = collections.Counter(o.detail for o in outcomes if o.result == "unexpected")
    reasons = []
    if unexpected:
        reasons.append(f"{sum(unexpected.values())} unexpected errors (warm-up included)")
    for name, g in growth.items():
        if not g["growth"] <= cfg.max_rss_growth:               # NaN (a process died) fails too
            reasons.append(f"RSS of {name} grew {g['growth']:+.1%} (target < {cfg.max_rss_growth:.0%})")
    return {
        "config": dataclasses.asdict(cfg), "duration_s": duration, "requests": len(measured),
        "requests_per_s": len(measured) / duration, "ok": counts["ok"], "rejected": counts["rejected"],
        "unexpected": sum(unexpected.values()), "unexpected_examples": dict(unexpected.most_common(10)),
        "rejected_by_kind": dict(collections.Counter(o.kind for o in measured if o.result == "rejected")),
        "ok_by_model": dict(collections.Counter(o.model for o in measured if o.result == "ok")),
        "windows": windows, "latency_drift": drift, "rss": growth, "rss_samples_mb": rss,
        "passed": not reasons, "reasons": reasons,
        "notes": [] if growth else ["RSS not measured: no local tritonserver process serves this port"],
    }


def run_soak(cfg: SoakConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the soak (starting a server on ``cfg.repository`` unless ``cfg.url`` is given); write and return
    the report."""
    if not (cfg.url or cfg.repository):
        raise ValueError("give --repository (start a server) or --url (a running one)")
    if cfg.url:
        return _soak(cfg.url, find_server_pid(cfg.url), cfg, log)
    with running_server(cfg.repository) as server:
        return _soak(server.grpc_url, server.proc.pid, cfg, log)


def _soak(url: str, server_pid: int | None, cfg: SoakConfig, log: Callable[[str], None]) -> dict[str, Any]:
    procs = server_processes(server_pid) if server_pid else {}
    rss: dict[str, dict[str, float]] = {}

    def sample(phase: str) -> None:
        rss[phase] = rss_mb(procs)
        log(f"soak {phase}: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss[phase].items()))

    log(f"soak: {url}, concurrency {cfg.concurrency}, {cfg.warmup_s:.0f}s warm-up + {cfg.minutes:g} min")
    outcomes, duration = asyncio.run(_traffic(url, cfg, sample))
    report = summarize(outcomes, duration, rss, cfg)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    return report


def print_report(report: dict[str, Any]) -> None:
    from genrec.printing import print_table

    d = report["latency_drift"]
    print_table(f"soak: {report['duration_s']:.0f} s at concurrency {report['config']['concurrency']}",
                [(col, "right") for col in ("requests/s", "ok", "rejected (expected)", "unexpected", "p50 drift",
                                            "p99 drift")],
                [[f"{report['requests_per_s']:.1f}", str(report["ok"]), str(report["rejected"]),
                  str(report["unexpected"]), f"{d['p50']:+.1%}", f"{d['p99']:+.1%}"]])
    print_table("valid-request latency per window",
                [(col, "right") for col in ("from s", "valid ok", "p50 ms", "p99 ms")],
                [[f"{w['start_s']:.0f}", str(w["valid_ok"]), f"{w['p50_ms']:.1f}", f"{w['p99_ms']:.1f}"]
                 for w in report["windows"]])
    print_table("RSS", [(col, "right") for col in ("process", "start MB", "end MB", "growth")],
                [[name, f"{g['start_mb']:.1f}", f"{g['end_mb']:.1f}", f"{g['growth']:+.1%}"]
                 for name, g in report["rss"].items()])
    for message, n in report["unexpected_examples"].items():
        print(f"unexpected x{n}: {message}", flush=True)
    for note in report["notes"]:
        print(f"note: {note}", flush=True)
    print("PASSED" if report["passed"] else f"FAILED: {'; '.join(report['reasons'])}", flush=True)
