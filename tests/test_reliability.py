"""Reliability against a live tritonserver: a bad-input corpus (golden errors), faults (dead stubs, a killed
server) under load, safe defaults, and a 30-second soak.

The corpus goes through raw ``tritonclient.grpc`` (the genrec client would refuse most of it locally) to the
ensemble and, for the FP32/INT64 tensors the ensemble never exposes, straight to ``heads`` and ``encoder``.
Expected statuses and messages live in ``tests/golden/bad_inputs.json``; ``GENREC_UPDATE_GOLDEN=1`` rewrites
it from what the server answers (review the diff), otherwise any difference fails.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ipaddress
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from triton_helpers import bytes_input, text_inputs
from tritonclient.utils import InferenceServerException

from genrec.client import GenrecClientError, RecommenderClient
from genrec.core.contract import ITEM_STATS, EncoderParams, HeadsParams, ServedParams
from genrec.server.launcher import (
    ADMIN_HEADER,
    GRPC_ADMIN_HEADER,
    PortInUse,
    ServerConfig,
    TritonServer,
    running_server,
    supervise,
)

GOLDEN = Path(__file__).parent / "golden" / "bad_inputs.json"
DEADLINE_S = 10.0                         # per-request deadline of the raw calls made during faults
TITLE = "Coach praises linebacker after victory"

Case = tuple[str, list[grpcclient.InferInput]]       # (model, inputs)


def tensor_input(name: str, value: np.ndarray, dtype: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(value.shape), dtype)
    inp.set_data_from_numpy(value)
    return inp


def texts(history: list, candidates: list, **override: list) -> dict[str, list]:
    """Ensemble inputs by name: texts plus aligned empty (= unknown) categories, then ``override``."""
    values = {"history_text": history, "history_category": [""] * len(history),
              "history_subcategory": [""] * len(history), "candidate_text": candidates,
              "candidate_category": [""] * len(candidates), "candidate_subcategory": [""] * len(candidates)}
    return values | override


def ensemble(history: list, candidates: list, *, drop: str = "", stats: dict | None = None, **override: list) -> Case:
    """``stats``: optional FP32 inputs by name (history_stats / candidate_stats / user_profile), sent as given."""
    inputs = [bytes_input(k, v) for k, v in texts(history, candidates, **override).items() if k != drop]
    for name, value in (stats or {}).items():
        arr = np.asarray(value, np.float32 if name.endswith(("_stats", "_profile")) else np.float64)
        inputs.append(tensor_input(name, arr, "FP32" if arr.dtype == np.float32 else "FP64"))
    return "genrec", inputs


def row(exposures: float = 10, clicks: float = 2, history_users: float = 3, cf0: float = -0.5) -> list[float]:
    """One served row of item statistics: the counts, then a collaborative vector (one non-zero entry)."""
    return [exposures, clicks, history_users, cf0, *[0.0] * (len(ITEM_STATS) - 4)]


def ensemble_with(inp: grpcclient.InferInput) -> Case:
    """A valid request (1 history item, 2 candidates) with ``inp`` in place of the input of its name (or added)."""
    _, inputs = ensemble([TITLE], ["Stocks rally", "Team wins"])
    return "genrec", [*(i for i in inputs if i.name() != inp.name()), inp]


def heads(served: dict[str, int], *, n_hist: int = 1, n_cand: int = 2, dtype: str = "FP32", dim: int = 0,
          poke: float | None = None, drop: str = "", stats: dict | None = None, **ids: list[int]) -> Case:
    """A direct ``heads`` request: zero vectors (H + C, D) with ``poke`` written into one element, and the
    optional statistics inputs ``stats`` (name -> rows) when given."""
    vectors = np.zeros((n_hist + n_cand, dim or served["dim"]), np.float32 if dtype == "FP32" else np.float64)
    if poke is not None:
        vectors[-1, 3] = poke
    values = {"history_category": [1] * n_hist, "history_subcategory": [1] * n_hist,
              "candidate_category": [1] * n_cand, "candidate_subcategory": [1] * n_cand} | ids
    inputs = [tensor_input("item_vectors", vectors, dtype)]
    inputs += [tensor_input(k, np.array(v, np.int64), "INT64") for k, v in values.items() if k != drop]
    inputs += [tensor_input(k, np.array(v, np.float32).reshape(-1, len(ITEM_STATS)) if k.endswith("_stats")
                            else np.array(v, np.float32), "FP32") for k, v in (stats or {}).items()]
    return "heads", inputs


def profile(served: dict[str, int], topic: int = 1, value: float = 1.0, extra: int = 0) -> list[float]:
    """A user_profile of the served width K (+ ``extra``): ``value`` at index ``topic``, zeros elsewhere."""
    out = [0.0] * (served["n_categories"] + extra)
    out[topic] = value
    return out


def encoder(ids: np.ndarray, mask: np.ndarray | None = None, dtype: str = "INT64") -> Case:
    mask = np.ones_like(ids) if mask is None else mask
    np_dtype = np.int64 if dtype == "INT64" else np.int32
    return "encoder", [tensor_input("input_ids", ids.astype(np_dtype), dtype),
                       tensor_input("attention_mask", mask.astype(np_dtype), dtype)]


def bad_inputs(served: dict[str, int]) -> dict[str, Case]:
    """The corpus: case name -> request. Limits and dimensions come from the served configs."""
    max_c, max_h, max_bytes, vocab = (served[k] for k in ("max_candidates", "max_history", "max_text_bytes",
                                                          "vocab_size"))
    ids = np.array([[101, 7592, 102]])                                             # (1, 3) [CLS] hello [SEP]
    return {
        # documented behaviour: served
        "cold_user_is_served": ensemble([], ["Stocks rally", "Team wins"]),
        "history_at_limit_is_served": ensemble([TITLE] * max_h, ["Stocks rally"]),
        "candidates_at_limit_are_served": ensemble([TITLE], ["Stocks rally"] * max_c),
        "text_at_byte_limit_is_served": ensemble([], ["x" * max_bytes]),
        "unknown_category_is_served": ensemble([TITLE], ["Stocks rally"], history_category=["no-such-category"],
                                               candidate_subcategory=["no-such-subcategory"]),
        "whitespace_category_is_served": ensemble([TITLE], ["Stocks rally"], candidate_category=["  "]),
        # counts
        "empty_candidates": ensemble([TITLE], []),
        "more_candidates_than_the_limit": ensemble([TITLE], ["Stocks rally"] * (max_c + 1)),
        "more_history_than_the_limit_is_rejected": ensemble([TITLE] * (max_h + 1), ["Stocks rally"]),
        # strings
        "empty_history_text": ensemble([""], ["Stocks rally"]),
        "whitespace_only_candidate_text": ensemble([TITLE], ["Stocks rally", " \t\n "]),
        "non_utf8_candidate_text": ensemble([TITLE], [b"\xff\xfe broken"]),
        "truncated_utf8_history_text": ensemble(["caf\xe9".encode()[:-1] + b"\xc3"], ["Stocks rally"]),
        "non_utf8_category": ensemble([TITLE], ["Stocks rally"], candidate_category=[b"\xc0\xaf"]),
        "text_over_byte_limit_by_one": ensemble([], ["x" * (max_bytes + 1)]),
        "text_of_1mb": ensemble([TITLE], ["y" * 2**20]),
        "category_of_1mb": ensemble([TITLE], ["Stocks rally"], history_category=["z" * 2**20]),
        # list alignment
        "candidate_categories_shorter_than_texts": ensemble([TITLE], ["Stocks rally", "Team wins"],
                                                            candidate_category=["sports"]),
        "history_subcategories_longer_than_texts": ensemble([TITLE], ["Stocks rally"],
                                                            history_subcategory=["a", "b"]),
        # tensors the contract does not allow (rejected by Triton before any model runs)
        "text_as_int64": ensemble_with(tensor_input("candidate_text", np.arange(2), "INT64")),
        "text_as_fp32": ensemble_with(tensor_input("history_text", np.ones(1, np.float32), "FP32")),
        "text_of_rank_2": ensemble_with(bytes_input_2d("candidate_text", [["Stocks", "Team"]])),
        "missing_input": ensemble([TITLE], ["Stocks rally"], drop="candidate_subcategory"),
        "unknown_input": ensemble_with(bytes_input("user_id", ["u1"])),
        # item statistics (optional FP32 (H, 3) / (C, 3) inputs): served when valid, else named with the index
        "statistics_are_served": ensemble([TITLE], ["Stocks rally", "Team wins"],
                                          stats={"history_stats": [row()], "candidate_stats": [row(), row(0, 0, 0)]}),
        "only_candidate_statistics_are_served": ensemble([], ["Stocks rally"], stats={"candidate_stats": [row()]}),
        "nan_candidate_stats": ensemble([TITLE], ["Stocks rally", "Team wins"],
                                        stats={"candidate_stats": [row(), row(clicks=float("nan"))]}),
        "inf_history_stats": ensemble([TITLE], ["Stocks rally"], stats={"history_stats": [row(float("inf"))]}),
        "negative_candidate_stats": ensemble([TITLE], ["Stocks rally"],
                                             stats={"candidate_stats": [row(history_users=-1)]}),
        "nan_collaborative_vector": ensemble([TITLE], ["Stocks rally"], stats={"candidate_stats": [row(cf0=np.nan)]}),
        "counts_only_stats_are_a_shape_error": ensemble([TITLE], ["Stocks rally"],
                                                        stats={"candidate_stats": [[1.0, 2.0, 3.0]]}),
        "candidate_stats_fewer_rows_than_texts": ensemble([TITLE], ["Stocks rally", "Team wins"],
                                                          stats={"candidate_stats": [row()]}),
        "history_stats_more_rows_than_texts": ensemble([TITLE], ["Stocks rally"],
                                                       stats={"history_stats": [row(), row()]}),
        "history_stats_for_a_cold_user": ensemble([], ["Stocks rally"], stats={"history_stats": [row()]}),
        "stats_of_wrong_width": ensemble([TITLE], ["Stocks rally"], stats={"candidate_stats": [[1.0, 2.0]]}),
        "stats_as_fp64": ensemble_with(tensor_input("candidate_stats", np.ones((2, len(ITEM_STATS))), "FP64")),
        "stats_of_rank_1": ensemble_with(tensor_input("candidate_stats", np.ones(6, np.float32), "FP32")),
        # the LLM user profile (optional FP32 (K,) input): served when valid, else named with the index
        "profile_is_served": ensemble([TITLE], ["Stocks rally"], stats={"user_profile": profile(served)}),
        "profile_for_a_cold_user_is_served": ensemble([], ["Stocks rally"], stats={"user_profile": profile(served)}),
        "nan_user_profile": ensemble([TITLE], ["Stocks rally"], stats={"user_profile": profile(served, 2, np.nan)}),
        "inf_user_profile": ensemble([TITLE], ["Stocks rally"], stats={"user_profile": profile(served, 1, np.inf)}),
        "user_profile_above_one": ensemble([TITLE], ["Stocks rally"], stats={"user_profile": profile(served, 1, 2.0)}),
        "negative_user_profile": ensemble([TITLE], ["Stocks rally"], stats={"user_profile": profile(served, 3, -1)}),
        "user_profile_one_too_long": ensemble([TITLE], ["Stocks rally"],
                                              stats={"user_profile": profile(served, extra=1)}),
        "user_profile_as_fp64": ensemble_with(tensor_input("user_profile", np.zeros(served["n_categories"]), "FP64")),
        "heads_with_profile_is_served": heads(served, stats={"user_profile": profile(served)}),
        "heads_nan_user_profile": heads(served, stats={"user_profile": profile(served, 1, np.nan)}),
        # heads: the float input (NaN/Inf) and the ids
        "heads_nan_item_vectors": heads(served, poke=float("nan")),
        "heads_inf_item_vectors": heads(served, poke=float("inf")),
        "heads_negative_inf_item_vectors": heads(served, poke=-float("inf")),
        "heads_item_vectors_as_fp64": heads(served, dtype="FP64"),
        "heads_item_vectors_of_wrong_width": heads(served, dim=served["dim"] + 1),
        "heads_fewer_vectors_than_items": heads(served, n_hist=1, n_cand=2, candidate_category=[1, 1, 1],
                                                candidate_subcategory=[1, 1, 1]),
        "heads_category_id_out_of_range": heads(served, history_category=[served["n_categories"]]),
        "heads_negative_subcategory_id": heads(served, candidate_subcategory=[1, -1]),
        "heads_no_candidates": heads(served, n_cand=0),
        "heads_missing_input": heads(served, drop="history_subcategory"),
        "heads_with_statistics_is_served": heads(served, stats={"history_stats": [row()],
                                                                "candidate_stats": [row(), row()]}),
        "heads_nan_history_stats": heads(served, stats={"history_stats": [row(exposures=float("nan"))]}),
        "heads_negative_candidate_stats": heads(served, stats={"candidate_stats": [row(), row(clicks=-3)]}),
        "heads_candidate_stats_of_wrong_length": heads(served, stats={"candidate_stats": [row()]}),
        # encoder: token ids
        "encoder_token_id_out_of_vocabulary": encoder(np.array([[101, vocab, 102]])),
        "encoder_negative_token_id": encoder(np.array([[101, -5, 102]])),
        "encoder_mask_shape_differs": encoder(ids, np.ones((1, 2), np.int64)),
        "encoder_more_tokens_than_max_length": encoder(np.full((1, served["max_length"] + 1), 1000)),
        "encoder_ids_as_int32": encoder(ids, dtype="INT32"),
        "encoder_ids_of_rank_1": ("encoder", [tensor_input("input_ids", ids[0], "INT64"),
                                             tensor_input("attention_mask", np.ones(3, np.int64), "INT64")]),
        # encoder: attention masks a tokenizer never writes (issue 27.4: the per-text encoder reads a row as its
        # first mask.sum() tokens, so a hole made it encode one thing and cache it under another's key)
        "encoder_right_padded_rows_are_served": encoder(np.array([[101, 7592, 102, 0], [101, 102, 0, 0]]),
                                                        np.array([[1, 1, 1, 0], [1, 1, 0, 0]])),
        "encoder_mask_with_a_hole": encoder(np.array([[101, 7592, 2088, 102]]), np.array([[1, 1, 0, 1]])),
        "encoder_mask_hole_in_the_second_row": encoder(np.array([[101, 7592, 102], [101, 7592, 102]]),
                                                       np.array([[1, 1, 1], [1, 0, 1]])),
        "encoder_mask_of_twos": encoder(ids, np.array([[1, 2, 1]])),
        "encoder_negative_mask": encoder(ids, np.array([[1, 1, -1]])),
        "encoder_mask_all_zeros": encoder(ids, np.zeros((1, 3), np.int64)),
    }


def recommend(history: list, candidates: list, new: dict | None = None, *, drop: str = "",
              **override: list) -> Case:
    """An id-path request: ids of indexed items (the session's catalog: N1, N2, ...) and new items with text."""
    new = new or {}
    values = {"history_id": history, "candidate_id": candidates, "new_item_id": list(new),
              "new_item_text": [t for t, *_ in new.values()], "new_item_category": [c for _, c, _ in new.values()],
              "new_item_subcategory": [s for *_, s in new.values()]} | override
    return "recommend", [bytes_input(k, v) for k, v in values.items() if k != drop]


def recommend_with(inp: grpcclient.InferInput) -> Case:
    _, inputs = recommend(["N1"], ["N2", "N3"])
    return "recommend", [*(i for i in inputs if i.name() != inp.name()), inp]


def id_path_cases(served: dict[str, int]) -> dict[str, Case]:
    """The `recommend` model (the id path): ids, new items and their alignment."""
    max_c, max_h, max_bytes = served["max_candidates"], served["max_history"], served["max_text_bytes"]
    fresh = {"fresh-1": ("Markets rally on rate cut hopes", "finance", "markets")}
    return {
        "ids_known_items_are_served": recommend(["N1", "N2"], ["N3", "N4"]),
        "ids_cold_user_is_served": recommend([], ["N3"]),
        "ids_new_item_with_text_is_served": recommend(["N1"], ["fresh-1", "N3"], fresh),
        "ids_new_item_as_history_is_served": recommend(["fresh-1"], ["N3"], fresh),
        "ids_unknown_candidate_without_text": recommend(["N1"], ["N3", "no-such-item"]),
        "ids_unknown_history_without_text": recommend(["no-such-item"], ["N3"]),
        "ids_no_candidates": recommend(["N1"], []),
        "ids_more_candidates_than_the_limit": recommend(["N1"], ["N3"] * (max_c + 1)),
        "ids_more_history_than_the_limit": recommend(["N1"] * (max_h + 1), ["N3"]),
        "ids_empty_id": recommend(["N1"], ["N3", ""]),
        "ids_id_over_64_bytes": recommend(["N1"], ["N3", "x" * 65]),
        "ids_non_utf8_id": recommend(["N1"], [b"\xff\xfe"]),
        "ids_new_item_text_missing": recommend(["N1"], ["fresh-1"], fresh, new_item_text=[]),
        "ids_new_item_category_list_longer": recommend(["N1"], ["fresh-1"], fresh, new_item_category=["a", "b"]),
        "ids_new_item_empty_text": recommend(["N1"], ["fresh-1"], {"fresh-1": ("", "", "")}),
        "ids_new_item_text_over_byte_limit": recommend(["N1"], ["fresh-1"],
                                                       {"fresh-1": ("x" * (max_bytes + 1), "", "")}),
        "ids_new_item_twice": recommend(["N1"], ["fresh-1"], fresh, new_item_id=["fresh-1", "fresh-1"],
                                        new_item_text=["a", "b"], new_item_category=["", ""],
                                        new_item_subcategory=["", ""]),
        "ids_unused_new_items_are_served": recommend(["N1"], ["N3"], fresh | {"fresh-2": ("t", "", "")}),
        "ids_missing_input": recommend(["N1"], ["N3"], drop="new_item_subcategory"),
        "ids_with_profile_is_served": recommend_with(fp32_input("user_profile", profile(served))),
        "ids_user_profile_above_one": recommend_with(fp32_input("user_profile", profile(served, 1, 1.5))),
        "ids_as_int64": recommend_with(tensor_input("candidate_id", np.arange(2), "INT64")),
        "ids_of_rank_2": recommend_with(bytes_input_2d("candidate_id", [["N2", "N3"]])),
    }


def fp32_input(name: str, values: list[float]) -> grpcclient.InferInput:
    return tensor_input(name, np.asarray(values, np.float32), "FP32")


def bytes_input_2d(name: str, rows: list[list[str]]) -> grpcclient.InferInput:
    arr = np.array([[s.encode() for s in row] for row in rows], dtype=np.object_)
    return tensor_input(name, arr, "BYTES")


def served_params(client: grpcclient.InferenceServerClient) -> dict[str, int]:
    """Limits and dimensions the corpus is built from, read from the served configs."""
    def params(model: str, cls):
        return cls.from_parameters(client.get_model_config(model).config.parameters)

    ens, hd, enc = params("genrec", ServedParams), params("heads", HeadsParams), params("encoder", EncoderParams)
    return {"max_candidates": ens.max_candidates, "max_history": ens.max_history, "max_text_bytes": ens.max_text_bytes,
            "max_length": ens.max_length, "dim": ens.dim, "n_categories": hd.n_categories,
            "vocab_size": enc.vocab_size}


def answer(client: grpcclient.InferenceServerClient, case: Case) -> dict[str, str]:
    """Status and message; Triton lists a request's inputs in hash-table order, so that list is sorted."""
    model, inputs = case
    try:
        client.infer(model, inputs, client_timeout=60)
    except InferenceServerException as exc:
        message = re.sub(r"Got input\(s\) \[([^\]]*)\]",
                         lambda m: f"Got input(s) [{','.join(sorted(m.group(1).split(',')))}]", exc.message())
        return {"status": str(exc.status()).removeprefix("StatusCode."), "message": message}
    return {"status": "OK"}


def reference_scores(client: grpcclient.InferenceServerClient, req: dict) -> np.ndarray:
    return client.infer("genrec", text_inputs(req["history"], req["candidates"])).as_numpy("scores")


# ---- bad input -------------------------------------------------------------------------------------
def test_bad_input_corpus_matches_golden_and_leaves_the_server_serving(server, requests_corpus):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    stubs = server.stub_processes()
    before = reference_scores(client, requests_corpus[3])
    cases = bad_inputs(served_params(client)) | id_path_cases(served_params(client))
    got = {name: answer(client, case) for name, case in cases.items()}

    if os.environ.get("GENREC_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert got.keys() == golden.keys(), "corpus and golden file list different cases"
    mismatches = {name: {"expected": golden[name], "got": got[name]} for name in got if got[name] != golden[name]}
    assert not mismatches, "answers differ from tests/golden/bad_inputs.json:\n" + json.dumps(mismatches, indent=2)
    # every rejection is INVALID_ARGUMENT: no stub crashed (INTERNAL) and nothing timed out
    assert {g["status"] for g in got.values()} == {"OK", "INVALID_ARGUMENT"}

    assert client.is_server_ready() and all(client.is_model_ready(m) for m in ("genrec", "tokenizer", "encoder",
                                                                               "heads", "recommend"))
    assert server.stub_processes() == stubs and server.failure() is None        # the same stubs, all alive
    np.testing.assert_array_equal(reference_scores(client, requests_corpus[3]), before)



@pytest.fixture(scope="module")
def int8_cached(artifacts, tmp_path_factory):
    """The INT8 text path with the encoder's vector cache on (batch-invariant per-text encoder)."""
    from genrec.model_repository.builder import RepositoryConfig, build_repository

    repo = build_repository(artifacts.root, tmp_path_factory.mktemp("repo") / "int8-cache",
                            RepositoryConfig(precision="int8", encoder_cache_mb=8, encoder_threads=1))
    with running_server(repo) as srv:
        yield srv


def test_golden_corpus_on_int8_and_no_crafted_mask_poisons_the_vector_cache(int8_cached, artifacts):
    """Issue 27.4, the review's reproduction: a direct `encoder` request whose mask has a hole (same sum as the
    title's length) was encoded with the hole but cached under the title's tokens, and the next user of that
    title through the ensemble got its vector (cosine 0.925). Sent first, on a cold cache: it must be refused,
    and the title's score through the ensemble must equal the in-process INT8 pipeline's. Then the text-path
    corpus answers on INT8 exactly as tests/golden/bad_inputs.json says."""
    from genrec.core.runtime import Pipeline

    client = grpcclient.InferenceServerClient(int8_cached.grpc_url)
    pipe = Pipeline(artifacts.root, "int8", threads=1)
    history, candidates = [TITLE], ["Stocks rally", "Team wins"]
    tok = pipe.tokenizer(candidates[:1])
    n = int(tok.attention_mask.sum())
    ids = np.zeros((1, n + 1), np.int64)
    ids[0, :n] = tok.input_ids[0, :n]
    mask = np.ones((1, n + 1), np.int64)
    mask[0, n - 1] = 0                                  # hide [SEP]; the sum stays n: the title's cache key
    crafted = answer(client, encoder(ids, mask))
    assert crafted["status"] == "INVALID_ARGUMENT" and "attention_mask[0]" in crafted["message"], crafted
    served = client.infer("genrec", [bytes_input(k, v) for k, v in texts(history, candidates).items()])
    want = pipe.recommend(history, candidates)["scores"]
    np.testing.assert_allclose(served.as_numpy("scores"), want, atol=1e-5, rtol=0)

    golden = json.loads(GOLDEN.read_text())
    got = {name: answer(client, case) for name, case in bad_inputs(served_params(client)).items()}
    mismatches = {name: {"expected": golden[name], "got": got[name]} for name in got if got[name] != golden[name]}
    assert not mismatches, "INT8 answers differ from tests/golden/bad_inputs.json:\n" + json.dumps(mismatches,
                                                                                                   indent=2)
    np.testing.assert_allclose(client.infer("genrec", [bytes_input(k, v) for k, v in texts(
        history, candidates).items()]).as_numpy("scores"), want, atol=1e-5, rtol=0)
    assert int8_cached.failure() is None

def test_unknown_category_scores_like_an_empty_one(server):
    """Unknown categories are the out-of-vocabulary bucket, exactly as an empty (unknown) category."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    h, c = [TITLE, "Stocks rally on earnings"], ["Team wins the final", "Storm hits the coast"]
    unknown = texts(h, c, history_category=["no-such-category"] * 2, candidate_category=["nope", "  "])
    scores = [client.infer("genrec", [bytes_input(k, v) for k, v in t.items()]).as_numpy("scores")
              for t in (texts(h, c), unknown)]
    np.testing.assert_array_equal(*scores)


# ---- faults ----------------------------------------------------------------------------------------
class Load:
    """Background traffic during a fault on both paths (text: `genrec`, ids: `recommend`): genrec clients
    with retries, and raw calls without."""

    def __init__(self, url: str, threads: int = 6):
        self.url, self.stop = url, threading.Event()
        self.client_results: list[tuple[float, str]] = []      # (seconds, "ok" or the error)
        self.raw_results: list[tuple[float, str]] = []
        self.pool = cf.ThreadPoolExecutor(threads)
        self.futures = [self.pool.submit(self._client_loop) for _ in range(threads - 2)]
        self.futures += [self.pool.submit(self._raw_loop) for _ in range(2)]

    def _timed(self, out: list, fn: Callable[[], object]) -> None:
        start = time.monotonic()
        try:
            fn()
            result = "ok"
        except GenrecClientError as exc:
            result = f"{exc.status} {exc}"
        except InferenceServerException as exc:
            result = f"{exc.status()} {exc.message()}"
        out.append((time.monotonic() - start, result))

    def _client_loop(self) -> None:
        client = RecommenderClient(self.url, timeout=30, retries=200, backoff_s=0.1, max_backoff_s=0.5)
        calls = (lambda: client.recommend([TITLE] * 3, ["Stocks rally", "Team wins"]),
                 lambda: client.recommend(history_ids=["N1", "N2"], candidate_ids=["N3", "N4"]))
        i = 0
        while not self.stop.is_set():
            self._timed(self.client_results, calls[i % 2])
            i += 1

    def _raw_loop(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        cases = (ensemble([TITLE] * 3, ["Stocks rally", "Team wins"]), recommend(["N1", "N2"], ["N3", "N4"]))
        i = 0
        while not self.stop.is_set():
            model, inputs = cases[i % 2]
            self._timed(self.raw_results, lambda m=model, x=inputs: client.infer(m, x, client_timeout=DEADLINE_S))
            i += 1
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        for f in self.futures:
            f.result()
        self.pool.shutdown()


def wait_for(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not true after {timeout_s}s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def supervised(fp32_repository):
    with running_server(fp32_repository, supervised=True) as srv:
        yield srv


@pytest.mark.parametrize("victim", ["encoder_0_0", "tokenizer_0_0", "recommend_0_0", "tritonserver"])
def test_fault_under_load_is_restarted_and_clients_recover(supervised, victim):
    client = grpcclient.InferenceServerClient(supervised.grpc_url)
    req = {"history": ([TITLE], ["sports"], [""]), "candidates": (["Stocks rally", "Team wins"], ["", ""], ["", ""])}
    before = reference_scores(client, req)
    old_stubs, restarts = supervised.stub_processes(), len(supervised.restarts)
    load = Load(supervised.grpc_url)
    try:
        time.sleep(1.5)
        pid = supervised.proc.pid if victim == "tritonserver" else next(
            p for p, name in old_stubs.items() if name == victim)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(supervised.restarts) > restarts, 30)
        time.sleep(2.0)                                        # traffic on the restarted server
    finally:
        load.finish()
    why = supervised.restarts[-1][1]
    assert why == ("tritonserver exited with code -9" if victim == "tritonserver"
                   else f"python-backend stub {victim} died")
    # the genrec client retried through the restart: every call succeeded
    assert load.client_results and {r for _, r in load.client_results} == {"ok"}, load.client_results
    # raw calls without retries failed fast with a clear error: the dead stub named, or the server unreachable
    for seconds, result in load.raw_results:
        assert seconds < DEADLINE_S, f"a request hung for {seconds:.1f}s"
        assert result == "ok" or result.startswith("StatusCode.UNAVAILABLE ") or (
            result.startswith("StatusCode.INTERNAL ") and f"Stub process '{victim}' is not healthy." in result), result
    assert supervised.failure() is None and set(supervised.stub_processes()).isdisjoint(old_stubs)
    np.testing.assert_array_equal(reference_scores(grpcclient.InferenceServerClient(supervised.grpc_url), req), before)


def test_unsupervised_dead_stub_fails_fast_while_triton_still_reports_ready(fp32_repository):
    """What Triton 2.51 does on its own when a python stub dies, and why the launcher supervises."""
    with running_server(fp32_repository, max_restarts=0, exit_timeout_s=1) as srv:   # a dead stub blocks unloading
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        inputs = ensemble([TITLE], ["Stocks rally"])[1]
        client.infer("genrec", inputs)
        assert sorted(srv.stub_processes().values()) == ["encoder_0_0", "heads_0_0", "recommend_0_0", "tokenizer_0_0"]
        os.kill(next(p for p, name in srv.stub_processes().items() if name == "heads_0_0"), signal.SIGKILL)
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(InferenceServerException) as err:
                client.infer("genrec", inputs, client_timeout=DEADLINE_S)
            assert time.monotonic() - start < 5
            assert err.value.status() == "StatusCode.INTERNAL"
            assert "Stub process 'heads_0_0' is not healthy." in err.value.message()
        assert client.is_server_ready() and client.is_model_ready("heads")     # Triton does not notice
        assert srv.failure() == "python-backend stub heads_0_0 died"           # the launcher does
        messages: list[str] = []
        assert not supervise(srv, lambda: False, out=messages.append)          # max_restarts=0: gives up at once
        assert "giving up" in messages[0]


def test_genrec_serve_restarts_a_dead_stub_and_stops_cleanly(fp32_repository):
    """The production path: `genrec serve` supervises its server, then stops on SIGTERM with exit code 0."""
    proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", "--repository", str(fp32_repository),
                             "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def expect(text: str, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if text in line:
                return line

    try:
        url = re.search(r"gRPC (\S+)", expect("tritonserver ready:")).group(1)
        stub = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                    if p.cmdline()[-2:-1] == ["encoder_0_0"])
        stub.kill()
        expect("python-backend stub encoder_0_0 died: restarting tritonserver")
        expect("tritonserver ready again (restart 1)")
        assert len(RecommenderClient(url, timeout=30).recommend([TITLE], ["Stocks rally"])) == 1
        proc.send_signal(signal.SIGTERM)
        expect("stopped (exit code 0)")
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:                     # the server runs in its own session: kill it explicitly
            for p in psutil.Process(proc.pid).children(recursive=True):
                p.kill()
            proc.kill()
            proc.wait()



def test_server_dies_with_a_killed_launcher(fp32_repository):
    """SIGKILL (or the OOM killer) on `genrec serve` must not leave tritonserver and its stubs serving."""
    proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", "--repository", str(fp32_repository),
                             "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    children: list[psutil.Process] = []
    try:
        for line in proc.stdout:
            if "tritonserver ready:" in line:
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any(p.name() == "tritonserver" for p in children), [p.name() for p in children]
        proc.kill()                                   # no chance to clean up
        proc.wait()
        _, alive = psutil.wait_procs(children, timeout=45)
        assert not alive, f"orphans still running after the launcher was killed: {[p.name() for p in alive]}"
    finally:
        for p in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        if proc.poll() is None:
            proc.kill()

# ---- safe defaults ---------------------------------------------------------------------------------
def test_every_listening_socket_is_loopback_by_default(server):
    ports = {server.cfg.grpc_port, server.cfg.http_port, server.cfg.metrics_port}
    listening = [c.laddr for c in psutil.Process(server.proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert {a.port for a in listening} == ports
    for a in listening:                             # gRPC listens on an IPv6 socket: ::ffff:127.0.0.1
        ip = ipaddress.ip_address(a.ip)
        assert (getattr(ip, "ipv4_mapped", None) or ip).is_loopback, a
    cmd = TritonServer(server.repository, ServerConfig()).command(Path("tritonserver"), Path("backends"))
    assert "--model-control-mode=none" in cmd and "--grpc-address=127.0.0.1" in cmd


# ---- exposure: TLS, restricted APIs (issue 27.5) ---------------------------------------------------------------
ADMIN = {GRPC_ADMIN_HEADER: "opens-the-admin-apis"}


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost, signed by it (PEM files)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool, san: list | None = None):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("genrec test CA", ca_key, "genrec test CA", ca_key, True)
    server = cert("127.0.0.1", key, "genrec test CA", ca_key, False,
                  [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


def _http(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _heads_only(fp32_repository: Path, out: Path) -> Path:
    """A repository of the one `heads` model (the quickest to load): what the exposure tests call."""
    out.mkdir()
    shutil.copytree(fp32_repository / "heads", out / "heads")
    return out


HEADS_INFER = json.dumps({"inputs": [
    {"name": "item_vectors", "shape": [2, 1], "datatype": "FP32", "data": [0.0, 0.0]}]}).encode()


def test_with_tls_plaintext_http_serves_only_health_and_grpc_only_over_tls(fp32_repository, tmp_path):
    certs = _certificates(tmp_path)
    repo = _heads_only(fp32_repository, tmp_path / "repo")
    with running_server(repo, grpc_ssl_cert=str(certs["cert"]), grpc_ssl_key=str(certs["key"]),
                        admin_key=ADMIN[GRPC_ADMIN_HEADER]) as srv:
        tls = grpcclient.InferenceServerClient(srv.grpc_url, ssl=True, root_certificates=str(certs["ca"]))
        assert tls.is_server_ready() and tls.is_model_ready("heads")
        served = {"dim": int(tls.get_model_config("heads").config.parameters["dim"].string_value)}
        _, inputs = heads({**served, "n_categories": 1})
        assert tls.infer("heads", inputs).as_numpy("scores").shape == (2,)
        with pytest.raises(InferenceServerException):               # the same port without TLS: refused
            grpcclient.InferenceServerClient(srv.grpc_url).is_server_live(client_timeout=5)
        base = srv.http_url
        assert _http(f"{base}/v2/health/ready") == 200 and _http(f"{base}/v2/health/live") == 200
        # everything else over plaintext HTTP: refused before any model runs, the admin key included
        for path, method, body in (("/v2/models/heads/infer", "POST", HEADS_INFER), ("/v2/models/heads", "GET", None),
                                   ("/v2/models/heads/config", "GET", None), ("/v2", "GET", None),
                                   ("/v2/models/stats", "GET", None), ("/v2/repository/index", "POST", b"{}"),
                                   ("/v2/systemsharedmemory/status", "GET", None)):
            for extra in ({}, {ADMIN_HEADER: ADMIN[GRPC_ADMIN_HEADER]}):
                assert _http(base + path, method, body, extra) == 403, (path, extra)
        # gRPC over TLS: the administrative APIs need the admin key
        with pytest.raises(InferenceServerException, match="restricted"):
            tls.get_system_shared_memory_status()
        assert tls.get_system_shared_memory_status(headers=ADMIN) is not None
        assert tls.is_server_ready()


def test_administrative_apis_are_closed_without_the_admin_key(server):
    """Without TLS too (the default server): no client can register shared memory (the server would read and
    write that /dev/shm region), control the repository, or change traces and logs."""
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    for call in (lambda: grpc.register_system_shared_memory("r", "/genrec-probe", 64),
                 grpc.get_system_shared_memory_status, grpc.get_cuda_shared_memory_status,
                 grpc.get_model_repository_index, lambda: grpc.unload_model("genrec"),
                 lambda: grpc.update_log_settings({"log_verbose_level": 1}), grpc.get_trace_settings):
        with pytest.raises(InferenceServerException, match="restricted"):
            call()
    assert grpc.is_model_ready("genrec")
    base = server.http_url
    for path, method, body in (("/v2/systemsharedmemory/region/r/register", "POST",
                                json.dumps({"key": "/genrec-probe", "offset": 0, "byte_size": 64}).encode()),
                               ("/v2/repository/index", "POST", b"{}"), ("/v2/logging", "GET", None),
                               ("/v2/trace/setting", "GET", None)):
        assert _http(base + path, method, body) == 403, path
    assert _http(f"{base}/v2/models/genrec/config") == 200                    # inference APIs stay open


# ---- signals (issue 27.11) -------------------------------------------------------------------------------------
SLOW_MODEL = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json
        p = {k: float(v["string_value"]) for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.finalize_s = p["finalize_s"]
        time.sleep(p["initialize_s"])

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x")
                                                             .as_numpy())]) for r in requests]

    def finalize(self):
        time.sleep(self.finalize_s)
'''


def _slow_repository(folder: Path, initialize_s: float, finalize_s: float) -> Path:
    model = folder / "slow"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(SLOW_MODEL)
    (model / "config.pbtxt").write_text(
        'name: "slow"\nbackend: "python"\nmax_batch_size: 0\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [ 1 ] }\noutput { name: "y" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        f'parameters {{ key: "initialize_s" value {{ string_value: "{initialize_s}" }} }}\n'
        f'parameters {{ key: "finalize_s" value {{ string_value: "{finalize_s}" }} }}\n')
    return folder


class Serve:
    """`genrec serve` in a subprocess, its output line by line."""

    def __init__(self, repo: Path, *extra: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", "--repository", str(repo),
                                      "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def expect(self, text: str, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            self.seen.append(line)
            if text in line:
                return line

    def tritonserver(self, timeout_s: float = 60) -> psutil.Process:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [p for p in psutil.Process(self.proc.pid).children() if p.name() == "tritonserver"]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError("no tritonserver started")

    def close(self) -> None:
        if self.proc.poll() is None:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                p.kill()
            self.proc.kill()
            self.proc.wait()


def _stub_started(triton: psutil.Process, timeout_s: float = 60) -> None:
    wait_for(lambda: any(STUB in " ".join(c.cmdline()) for c in triton.children()), timeout_s)


STUB = "triton_python_backend_stub"


def test_a_signal_while_genrec_serve_is_loading_stops_it_at_once(tmp_path):
    """SIGTERM during launch() (a model that takes 5 minutes to load): stopped within seconds, not after the
    180 s readiness timeout, and tritonserver with it."""
    serve = Serve(_slow_repository(tmp_path, initialize_s=300, finalize_s=0))
    try:
        triton = serve.tritonserver()
        _stub_started(triton)
        sent = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(30) == 0
        assert time.monotonic() - sent < 20
        serve.expect("received SIGTERM while starting: stopped before it was ready", timeout_s=5)
        psutil.wait_procs([triton], timeout=10)
        assert not triton.is_running() or triton.status() == psutil.STATUS_ZOMBIE
    finally:
        serve.close()


def test_a_second_signal_stops_genrec_serve_without_waiting(tmp_path):
    """The first SIGTERM waits for a graceful stop (here a model whose unload takes 5 minutes); the second
    kills tritonserver and its stubs at once (exit 128 + 15)."""
    serve = Serve(_slow_repository(tmp_path, initialize_s=0, finalize_s=300), "--exit-timeout-s", "120")
    try:
        serve.expect("tritonserver ready:")
        triton = serve.tritonserver()
        stubs = [c for c in triton.children() if STUB in " ".join(c.cmdline())]
        serve.proc.send_signal(signal.SIGTERM)
        serve.expect("received SIGTERM: stopping", timeout_s=10)
        time.sleep(1.0)
        assert serve.proc.poll() is None                          # still waiting for the graceful stop
        sent = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(20) == 128 + signal.SIGTERM
        assert time.monotonic() - sent < 10
        gone, alive = psutil.wait_procs([triton, *stubs], timeout=10)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    finally:
        serve.close()


# ---- soak ------------------------------------------------------------------------------------------
def test_15_second_soak(fp32_repository, tmp_path):
    """Short: what it proves (every kind of bad request answered, both paths served, nothing unexpected, RSS
    bounded) shows within seconds; `genrec bench soak` runs the real minutes."""
    from genrec.benchmarks.soak import SoakConfig, run_soak

    cfg = SoakConfig(repository=str(fp32_repository), concurrency=32, minutes=0.25, warmup_s=3, windows=3,
                     history_items=10, candidate_items=20, out=str(tmp_path / "soak.json"), max_rss_growth=0.5)
    report = run_soak(cfg, log=lambda _m: None)
    assert report["unexpected"] == 0, report["unexpected_examples"]
    assert report["ok"] > 0 and report["rejected"] > 0
    assert set(report["rejected_by_kind"]) >= {"no_candidates", "non_utf8_text", "nan_item_vectors",
                                               "ids_unknown_without_text", "ids_retrieval_k_zero"}
    assert report["ok_by_model"]["genrec"] > 0 and report["ok_by_model"]["recommend"] > 0    # both paths soaked
    assert set(report["rss"]) == {"tritonserver", "encoder_0_0", "tokenizer_0_0", "heads_0_0", "recommend_0_0"}
    assert report["passed"], report["reasons"]            # RSS over 15 s is noisy: the bound here is 50 %
    assert json.loads((tmp_path / "soak.json").read_text())["requests"] == report["requests"]


# ---- ports taken between probe and bind (issue 12 item 4) ---------------------------------------------------
def _listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_an_explicit_port_in_use_is_a_clear_error_naming_it(tmp_path):
    """The empty repository starts in ~1.5 s; what matters is the bind failure and its message."""
    with _listening() as taken:
        port = taken.getsockname()[1]
        server = TritonServer(tmp_path, ServerConfig(grpc_port=port, http_port=0, metrics_port=0))
        with pytest.raises(PortInUse, match=rf"GRPC port: 127\.0\.0\.1:{port} is already in use.*--grpc-port"):
            server.launch()
        assert server.proc.poll() is not None          # nothing left running


def test_an_automatic_port_taken_before_bind_is_drawn_again(tmp_path, monkeypatch):
    """The first port drawn for HTTP is taken by someone else before tritonserver binds it: the launcher
    draws new ports and the server comes up on them."""
    from genrec.server import launcher

    taken = _listening()
    draws = iter([taken.getsockname()[1]])
    real = launcher._free_port
    monkeypatch.setattr(launcher, "_free_port", lambda host: next(draws, None) or real(host))
    try:
        server = TritonServer(tmp_path, ServerConfig(grpc_port=0, http_port=0, metrics_port=0))
        assert taken.getsockname()[1] == server.cfg.grpc_port
        with server:
            assert server.is_ready() and server.cfg.grpc_port != taken.getsockname()[1]
    finally:
        taken.close()


def test_a_restart_that_fails_is_retried_within_the_restart_budget(tmp_path):
    """A restarted tritonserver that dies before it is ready (seen: SIGSEGV while the killed stub's shared memory
    was torn down on a loaded machine) costs one restart of the budget, not the server: the supervisor tries
    again. Real servers on an empty repository; the first restart meets a broken model, the second a good one
    (checked to fail when a failed restart ends supervision)."""
    import shutil

    repo = tmp_path / "repo"
    repo.mkdir()
    messages: list[str] = []
    with running_server(repo, max_restarts=3) as srv:
        bad = repo / "broken"
        bad.mkdir()
        (bad / "config.pbtxt").write_text("this is no model configuration")

        def out(message: str) -> None:
            messages.append(message)
            if "failed" in message and bad.exists():
                shutil.rmtree(bad)                         # the next attempt finds a good repository

        stop = threading.Event()
        watcher = threading.Thread(target=lambda: messages.append(supervise(srv, stop.is_set, out=out,
                                                                            interval_s=0.1)))
        watcher.start()
        srv.proc.kill()
        try:
            wait_for(lambda: any("ready again" in str(m) for m in messages) or False in messages, 120)
        finally:
            stop.set()
            watcher.join()
        assert srv.is_ready() and len(srv.restarts) == 2, messages
    assert messages[0] == "tritonserver exited with code -9: restarting tritonserver", messages
    assert messages[1].startswith("restart 1 failed: tritonserver exited with code 1 before it was ready"), messages
    assert messages[3] == "tritonserver ready again (restart 2)" and messages[-1] is True, messages


def test_a_restart_kills_without_a_sigterm_and_a_stop_still_asks_first(tmp_path):
    """restart() stops with timeout 0: SIGKILL alone. A SIGTERM first (as before) started Triton's graceful shutdown,
    whose model unload answered a request that slipped in before the SIGKILL with NOT_FOUND "has no available
    versions" (a raw call in the fault test above, on a loaded machine): not retried by clients. A stop with a
    timeout still sends SIGTERM and waits. A real child process; its Popen records the signals sent to it."""

    class Recorded(subprocess.Popen):
        sent: list[int] = []

        def send_signal(self, sig):               # Popen.kill() and terminate() come through here too
            self.sent.append(sig)
            super().send_signal(sig)

    child = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); print(flush=True)\n" \
            "while True: time.sleep(0.01)"
    srv = TritonServer(tmp_path)
    for timeout_s, want_signals, want_code in ((0, [signal.SIGKILL], -signal.SIGKILL), (5.0, [signal.SIGTERM], 0)):
        srv.proc = Recorded([sys.executable, "-c", child], stdout=subprocess.PIPE, start_new_session=True)
        srv.proc.stdout.readline()                # its SIGTERM handler is in place
        Recorded.sent = []
        assert srv.stop(timeout_s=timeout_s) == want_code, timeout_s
        assert Recorded.sent == want_signals, timeout_s
        srv.proc.stdout.close()
