"""`genrec bench --quick` end to end (the CI smoke run): every anchor measured, every output written.

Speed targets are benchmark outputs, never asserted here (the machines are noisy)."""

from __future__ import annotations

import json

from genrec.benchmarks.suite import BenchConfig, run_bench


def test_quick_bench_measures_everything_side_by_side(artifacts, trained_run, tiny_data, tmp_path):
    cfg = BenchConfig(out=str(tmp_path / "out"), quick=True, workdir=str(tmp_path / "work"),
                      artifacts=str(artifacts.root), checkpoint=str(trained_run), data=str(tiny_data / "dev"),
                      warmup_s=0.3, duration_s=1.0, min_requests=3)
    res = run_bench(cfg, log=lambda _m: None)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["machine"]["cores"] and saved["machine"]["packages"]["onnxruntime"]
    assert saved["server_version"].startswith("2.")
    assert set(res["scenarios"]) == {"ours-h50-c100-int8", "ours-h50-c100-fp32", "naive-h50-c100-fp32",
                                     "ids-h50-c100-int8-u0", "ids-h50-c100-int8-u10", "ids-h50-c100-int8-u0-n20000",
                                     "retrieve-h50-k10-m200-int8-n20000"}
    for name, sc in res["scenarios"].items():
        assert [p["concurrency"] for p in sc["points"]] == [1, 4]
        for p in sc["points"]:
            assert p["throughput_rps"] > 0 and p["errors"] == 0 and p["latency_ms"]["p99"] >= p["latency_ms"]["p50"]
            if "-u0" not in name and not name.startswith("retrieve"):   # the warm id path never calls the encoder
                assert p["server"]["encoder"]["requests"] > 0 and p["server"]["encoder"]["compute_ms"] > 0
    assert set(res["in_process"]) == {"h50-c100-int8", "h50-c100-fp32"} and "h50-c100" in res["torch_eager"]
    pa = res["perf_analyzer"]
    # the text path's reference at 1 and 4; every indexed scenario (ids, retrieval) at 1, right after ours
    assert set(pa) == {"ours-h50-c100-int8@c1", "ours-h50-c100-int8@c4", "ids-h50-c100-int8-u0@c1",
                       "ids-h50-c100-int8-u0-n20000@c1", "retrieve-h50-k10-m200-int8-n20000@c1"}, pa
    assert all(r.get("throughput_rps", 0) > 0 for r in pa.values()), pa
    names = [t["target"] for t in res["targets"]]
    assert any("naive" in n for n in names) and any("perf_analyzer" in n for n in names)
    measured = [t for t in res["targets"] if "concurrency 16" not in t["target"]]    # quick stops at 4
    assert all(t["value"] is not None for t in measured), measured
    ann = res["scenarios"]["retrieve-h50-k10-m200-int8-n20000"]["ann"]      # retrieval: its ANN vs exact, same run
    assert ann["items"] == 20000 and ann["kind"] == "ivf_flat" and ann["recall_at_m"] >= 0.9, ann
    ids = res["scenarios"]["ids-h50-c100-int8-u10"]["points"][0]
    assert ids["server"]["recommend"]["requests"] > 0 and ids["server"]["encoder"]["requests"] > 0
    assert {"tritonserver", "stub:encoder", "stub:tokenizer", "stub:heads"} <= set(res["memory"]["ours-int8"])
    # the production-scale id path: 20k distinct ids over the catalog's texts, its build timed in a child process
    build = res["index_builds"]["20000-int8"]
    distinct = len({line.split("\t")[3] for line in (tiny_data / "dev" / "news.tsv").read_text().splitlines()})
    assert build["items"] == 20_000 and build["encoded_texts"] <= distinct < 20_000
    assert build["encoded_texts"] + build["reused_texts"] == 20_000 and build["peak_rss_mb"] > 50
    scale = {t["target"]: t for t in res["targets"] if "20,000 items" in t["target"]}
    assert scale["id path, 20,000 items (h50-c100, int8): p99 ms at concurrency 1"]["value"] > 0
    assert scale["index build, 20,000 items: seconds"]["value"] > 0
    assert any("/ the same with the ~" in name for name in scale)
    md = (out / "results.md").read_text()
    assert "## Targets" in md and "perf_analyzer" in md
    assert (out / "latency.png").stat().st_size > 10_000


def test_replay_runs_the_log_in_order_and_the_cache_hits_repeats(artifacts, tiny_data, tmp_path):
    """`genrec bench replay` on the tiny dev log: the cached text path answers every impression and finds the
    log's repeated texts in its cache; the uncached anchor never does."""
    from genrec.benchmarks.replay import ReplayConfig, run_replay

    res = run_replay(ReplayConfig(data=str(tiny_data / "dev"), artifacts=str(artifacts.root), out=str(tmp_path),
                                  paths=("text-uncached", "text"), limit=40, concurrency=2), log=lambda _m: None)
    cached, base = res["paths"]["text"], res["paths"]["text-uncached"]
    assert res["impressions"] == 40 and cached["requests"] == base["requests"] == 40
    assert cached["errors"] == base["errors"] == 0
    assert base["cache_hit_rate"] is None and 0.2 < cached["cache_hit_rate"] < 1.0
    assert 0 < cached["encoder_share"] <= 1.0 and 0 < base["encoder_share"] <= 1.0      # (timings: not compared)
    assert (tmp_path / "results.md").read_text().count("| text") == 2



def test_a_closed_loop_whose_every_call_the_client_refuses_still_ends(server, fp32_index):
    """Requests the client refuses (here: more history than the server takes) fail without awaiting anything;
    the load generator must still yield, end its window and count them as errors (a refused call used to starve
    the event loop: a retrieval benchmark against artifacts without retrieval.onnx spun for 25 minutes)."""
    import time

    from genrec.benchmarks.loadgen import Timing, served_point
    from genrec.benchmarks.workload import IdWorkload
    from genrec.core.contract import MAX_HISTORY
    from genrec.core.index import ItemIndex

    catalog = [("t", "c", "s", bytes(i).decode()) for i in ItemIndex(fp32_index).ids[:200]]
    work = IdWorkload(catalog, MAX_HISTORY + 1, 5, 0.0)   # one history id too many: refused by the client
    t0 = time.perf_counter()
    point = served_point(server.grpc_url, work, 2, Timing(warmup_s=0.2, duration_s=0.5, min_requests=5,
                                                          max_duration_s=5.0))
    assert time.perf_counter() - t0 < 30
    assert point["errors"] > 0 and point["requests"] == 0
