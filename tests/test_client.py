"""The gRPC client against a live tritonserver: round trips, async, errors, retries, deadlines, TLS."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from triton_helpers import text_inputs
from tritonclient.utils import InferenceServerException

from genrec.client import (
    AsyncRecommenderClient,
    ContractMismatch,
    DeadlineExceeded,
    InvalidRequest,
    RecommenderClient,
    RecommendRequest,
    Unavailable,
)
from genrec.core.contract import ITEM_STATS
from genrec.core.requests import Limits
from genrec.server.launcher import ServerConfig, TritonServer, running_server

ROOT = Path(__file__).resolve().parents[1]


def _req(r, top_k=None) -> RecommendRequest:
    (ht, hc, hs), (ct, cc, cs) = r["history"], r["candidates"]
    return RecommendRequest(ht, ct, hc, cc, hs, cs, top_k)


def test_round_trip_matches_in_process_ranking(server, pipeline, requests_corpus):
    client = RecommenderClient(server.grpc_url)
    r = requests_corpus[2]
    recs = client.recommend_request(_req(r))
    (ht, hc, hs), (ct, cc, cs) = r["history"], r["candidates"]
    ref = pipeline.recommend(ht, ct, hc, hs, cc, cs)
    assert [it.index for it in recs] == list(np.argsort(-ref["scores"], kind="stable"))
    assert [it.score for it in recs] == pytest.approx(sorted(ref["scores"], reverse=True), abs=1e-5)
    top = recs.items[0]
    assert set(top.tasks) == {"topic_affinity", "category_confidence"} and top.text == ct[top.index]
    assert len(top.because) == min(3, len(ht))
    assert top.because[0].weight == pytest.approx(float(ref["explanation"][top.index].max()), abs=1e-5)
    assert recs.model_name == "genrec" and recs.model_version == "1"
    assert sum(recs.user_topics.values()) == pytest.approx(1.0, abs=1e-4)
    assert len(client.recommend_request(_req(r, top_k=2))) == 2


def test_async_32_concurrent_requests(server, requests_corpus):
    reqs = [_req(r) for r in (requests_corpus * 2)[:32]]

    async def main():
        async with AsyncRecommenderClient(server.grpc_url, timeout=30) as client:
            return await client.recommend_many(reqs, concurrency=32)

    results = asyncio.run(main())
    sync = RecommenderClient(server.grpc_url)
    assert len(results) == 32
    for req, res in zip(reqs[:4], results[:4]):
        assert [it.index for it in res] == [it.index for it in sync.recommend_request(req)]


def test_invalid_request_same_message_locally_and_from_server(server, requests_corpus):
    client = RecommenderClient(server.grpc_url)
    r = requests_corpus[0]
    bad = dataclasses.replace(_req(r), candidate_categories=["sports"])      # wrong length
    with pytest.raises(InvalidRequest) as local:
        client.recommend_request(bad)
    (ht, hc, hs), (ct, _cc, cs) = r["history"], r["candidates"]
    with pytest.raises(InferenceServerException) as remote:
        raw = grpcclient.InferenceServerClient(server.grpc_url)
        raw.infer("genrec", text_inputs((ht, hc, hs), (ct, ["sports"], cs)))
    assert local.value.message in remote.value.message()


def _stats_input(name: str, value) -> grpcclient.InferInput:
    """The rows as the server takes them: S wide (count-only rows padded with a zero collaborative vector)."""
    arr = np.asarray(value, np.float32)
    arr = np.pad(arr, ((0, 0), (0, len(ITEM_STATS) - arr.shape[1])))
    inp = grpcclient.InferInput(name, list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    return inp


@pytest.mark.parametrize("field, value, expected", [
    ("candidate_stats", [[1, float("nan"), 0], [0, 0, 0]], "candidate_stats[0] clicks is nan"),
    ("candidate_stats", [[1, 0, 0], [0, 0, -2]], "candidate_stats[1] history_users is -2.0"),
    ("history_stats", [[float("inf"), 0, 0]], "history_stats[0] exposures is inf"),
    ("candidate_stats", [[1, 0, 0]], "candidate_stats has 1 rows but candidate_text has 2"),
    ("candidate_stats", [[0] * len(ITEM_STATS), [1, 1, 1, 0.5, float("inf"), *[0] * (len(ITEM_STATS) - 5)]],
     "candidate_stats[1] cf1 is inf; item statistics must be finite"),
])
def test_bad_statistics_same_message_locally_and_from_server(server, field, value, expected):
    client = RecommenderClient(server.grpc_url)
    req = RecommendRequest(["Coach praises linebacker"], ["Stocks rally", "Team wins"], **{field: value})
    with pytest.raises(InvalidRequest) as local:
        client.recommend_request(req)
    assert expected in local.value.message
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as remote:
        raw.infer("genrec", [*text_inputs((req.history, [""], [""]), (req.candidates, ["", ""], ["", ""])),
                             _stats_input(field, value)])
    assert remote.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert local.value.message in remote.value.message()
    assert raw.is_server_ready()


def test_statistics_round_trip_sync_and_async(server, pipeline, requests_corpus):
    r = requests_corpus[4]
    req = dataclasses.replace(_req(r), history_stats=r["history_stats"].tolist(),
                              candidate_stats=r["candidate_stats"].tolist())
    (ht, hc, hs), (ct, cc, cs) = r["history"], r["candidates"]
    ref = pipeline.recommend(ht, ct, hc, hs, cc, cs, history_stats=r["history_stats"],
                             candidate_stats=r["candidate_stats"])["scores"]
    recs = RecommenderClient(server.grpc_url).recommend_request(req)

    async def main():
        async with AsyncRecommenderClient(server.grpc_url, timeout=30) as client:
            return await client.recommend_request(req)

    for res in (recs, asyncio.run(main())):
        assert [it.score for it in res] == pytest.approx(sorted(ref, reverse=True), abs=1e-4)
    with pytest.raises(InvalidRequest, match="stats folder"):
        RecommenderClient(server.grpc_url).recommend(candidate_ids=["N1"], candidate_stats=[[1, 1, 1]])
    # rows of the three counts alone: the client pads a zero collaborative vector (= none), and that vector
    # matters: the same counts with the full rows score differently
    counts = dataclasses.replace(req, history_stats=r["history_stats"][:, :3].tolist(),
                                 candidate_stats=r["candidate_stats"][:, :3].tolist())
    padded = np.pad(r["candidate_stats"][:, :3], ((0, 0), (0, len(ITEM_STATS) - 3)))
    ref_counts = pipeline.recommend(ht, ct, hc, hs, cc, cs, history_stats=np.pad(r["history_stats"][:, :3],
                                    ((0, 0), (0, len(ITEM_STATS) - 3))), candidate_stats=padded)["scores"]
    got = RecommenderClient(server.grpc_url).recommend_request(counts)
    assert [it.score for it in got] == pytest.approx(sorted(ref_counts, reverse=True), abs=1e-4)
    assert np.abs(np.sort(ref_counts) - np.sort(ref)).max() > 1e-4


def test_server_invalid_argument_becomes_invalid_request(server):
    """A client whose cached limits are looser than the server's (e.g. the server was reconfigured)."""
    client = RecommenderClient(server.grpc_url)
    client._served["genrec"] = dataclasses.replace(client.served(), limits=Limits(max_candidates=1000))
    with pytest.raises(InvalidRequest) as err:
        client.recommend(["Coach praises linebacker"], [f"candidate {i}" for i in range(301)])
    assert err.value.status == "INVALID_ARGUMENT"
    assert "candidate_text has 301 items; the limit is 300" in err.value.message
    assert "Traceback" not in err.value.message


def test_contract_mismatch_names_the_difference(server):
    client = RecommenderClient(server.grpc_url, model="encoder")
    with pytest.raises(ContractMismatch) as err:
        client.recommend(["a"], ["b"])
    assert "missing input 'candidate_text'" in str(err.value)


def test_unavailable_after_retries():
    from genrec.server.launcher import _free_port

    client = RecommenderClient(f"127.0.0.1:{_free_port('127.0.0.1')}", retries=2, timeout=10, backoff_s=0.05)
    start = time.monotonic()
    with pytest.raises(Unavailable) as err:
        client.recommend(["a"], ["b"])
    assert "after 3 attempts" in str(err.value) and time.monotonic() - start < 10
    assert client.health() == {"live": False, "ready": False, "model_ready": False}


class UnavailableServer:
    """A real gRPC server on the Triton service's paths that answers every RPC UNAVAILABLE, and counts them."""

    def __init__(self):
        import concurrent.futures as cf

        import grpc

        self.calls: list[str] = []

        def answer(_request, context):
            context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded (test)")

        calls = self.calls

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):
                calls.append(details.method)
                return grpc.unary_unary_rpc_method_handler(answer)

        self.server = grpc.server(cf.ThreadPoolExecutor(4), handlers=[Handler()])
        self.url = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def close(self):
        self.server.stop(0)


def test_one_retry_budget_counts_rpcs_against_an_unavailable_server():
    """Issue 27.12: gRPC's service-config retry (4 attempts) ran inside the client's own loop (4 attempts): 16 RPCs
    per call with retries=3. One budget: retries + 1 RPCs, sync and async."""
    srv = UnavailableServer()
    try:
        client = RecommenderClient(srv.url, retries=3, timeout=20, backoff_s=0.01, max_backoff_s=0.02)
        with pytest.raises(Unavailable, match="after 4 attempts"):
            client.recommend(["a"], ["b"])
        sync_calls = list(srv.calls)
        srv.calls.clear()

        async def run():
            async with AsyncRecommenderClient(srv.url, retries=2, timeout=20, backoff_s=0.01,
                                              max_backoff_s=0.02) as aclient:
                with pytest.raises(Unavailable, match="after 3 attempts"):
                    await aclient.recommend(history_ids=["N1"], candidate_ids=["N2"])

        asyncio.run(run())
        async_calls = list(srv.calls)
    finally:
        srv.close()
    assert sync_calls == ["/inference.GRPCInferenceService/ModelMetadata"] * 4, sync_calls
    assert async_calls == ["/inference.GRPCInferenceService/ModelMetadata"] * 3, async_calls


def test_deadline_shorter_than_the_request(server):
    client = RecommenderClient(server.grpc_url, timeout=0.02)
    client_ok = RecommenderClient(server.grpc_url)
    client._served["genrec"] = client_ok.served()    # the deadline applies to the recommendation itself
    texts = [f"A long candidate title number {i} about markets, sports and weather today" for i in range(300)]
    with pytest.raises(DeadlineExceeded):
        client.recommend(texts[:50], texts)
    assert client_ok.health()["ready"]


def test_server_restart_inside_retry_window_is_survived(fp32_repository):
    cfg = ServerConfig(grpc_port=0, http_port=0, metrics_port=0)
    first = TritonServer(fp32_repository, cfg)
    first.start().wait_ready()
    fixed = first.cfg                                   # the same ports for the second life
    client = RecommenderClient(first.grpc_url, timeout=60, retries=30, backoff_s=0.2, max_backoff_s=1.0)
    assert len(client.recommend(["Coach praises linebacker"], ["Stocks rally", "Team wins"])) == 2
    first.stop()
    second = TritonServer(fp32_repository, fixed)

    def restart():
        time.sleep(1.0)
        second.start()

    t = threading.Thread(target=restart)
    t.start()
    try:
        recs = client.recommend(["Coach praises linebacker"], ["Stocks rally", "Team wins"])
        assert len(recs) == 2
    finally:
        t.join()
        second.stop()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "server.crt", tmp / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_round_trip_with_self_signed_certificate(fp32_repository, tmp_path):
    cert, key = _self_signed(tmp_path)
    with running_server(fp32_repository, grpc_ssl_cert=str(cert), grpc_ssl_key=str(key)) as srv:
        url = f"localhost:{srv.cfg.grpc_port}"
        secure = RecommenderClient(url, ssl=True, root_certificates=str(cert), timeout=10)
        assert len(secure.recommend(["Coach praises linebacker"], ["Stocks rally", "Team wins"])) == 2
        # issue 27.5: a CA file alone implies TLS (it gave a plaintext channel, which this server refuses)
        implied = RecommenderClient(url, root_certificates=str(cert), timeout=10, retries=0)
        assert len(implied.recommend(["Coach praises linebacker"], ["Stocks rally", "Team wins"])) == 2
        with pytest.raises(ValueError, match="ssl=False with root_certificates"):
            RecommenderClient(url, ssl=False, root_certificates=str(cert))
        with pytest.raises(ValueError, match="private_key and certificate_chain go together"):
            AsyncRecommenderClient(url, private_key=str(key))
        plain = RecommenderClient(url, retries=0, timeout=3)
        with pytest.raises((Unavailable, DeadlineExceeded)):
            plain.recommend(["a"], ["b"])


BLOCKER = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {'torch', 'transformers', 'onnx', 'onnxruntime', 'tokenizers', 'optimum',
                                  'safetensors', 'sentence_transformers'}:
            raise ImportError(f'{name} is blocked in this test')
sys.meta_path.insert(0, Block())
"""


def test_client_works_without_torch(server, tmp_path):
    script = BLOCKER + f"""
from genrec.client import RecommenderClient
recs = RecommenderClient({server.grpc_url!r}).recommend(["Coach praises linebacker"], ["Stocks rally", "Team wins"])
assert len(recs) == 2
from genrec.cli import main
sys.exit(main(["recommend", "--url", {server.grpc_url!r}, "--history", "Coach praises linebacker",
               "--candidates-file", {str(tmp_path / 'c.tsv')!r}, "--json"]))
"""
    (tmp_path / "c.tsv").write_text("Stocks rally\tfinance\nTeam wins\tsports\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["items"]) == 2 and out["model_name"] == "genrec"


def test_readme_client_example_runs_as_written(server):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- client-example.*?-->\s*```python\n(.*?)```", readme, re.S).group(1)
    assert len(block.strip().splitlines()) <= 12
    env = dict(os.environ, GENREC_URL=server.grpc_url)
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("<-") == 2


def test_first_call_has_one_deadline_sync_and_async(server, requests_corpus):
    """Metadata, config and inference of a fresh client's first call share the call's one deadline (issue 12.5):
    with one deadline each, the first call could take twice ``timeout``."""
    req = _req(requests_corpus[0])

    def spy(client):
        seen, real = [], client._call

        def call(fn, deadline):
            seen.append(deadline)
            return real(fn, deadline)
        client._call = call
        return seen

    with RecommenderClient(server.grpc_url, timeout=30) as client:          # nothing fetched yet
        seen = spy(client)
        client.recommend_request(req)
    assert len(seen) == 3 and len(set(seen)) == 1, seen

    async def main():
        async with AsyncRecommenderClient(server.grpc_url, timeout=30) as client:
            seen = spy(client)
            await client.recommend_request(req)
            return seen
    seen = asyncio.run(main())
    assert len(seen) == 3 and len(set(seen)) == 1, seen


def _reference(result, top_k=None):
    """What the client answered before its fast path (tritonclient's InferResult, one row at a time): per ranked
    candidate (index, score, tasks, because as (history index, weight))."""
    scores, expl = result.as_numpy("scores"), result.as_numpy("explanation")
    order = np.argsort(-scores, kind="stable")[:top_k]
    out = []
    for c in order:
        weights = expl[c] if expl.size else np.zeros(0)
        top = np.argsort(-weights, kind="stable")[:3]
        out.append((int(c), float(scores[c]), {n: float(result.as_numpy(n)[c]) for n in ("topic_affinity",
                                                                                       "category_confidence")},
                    [(int(h), float(weights[h])) for h in top]))
    return out


def _answer(recs):
    return [(it.index, it.score, it.tasks, [(b.history_index, b.weight) for b in it.because]) for it in recs]


def test_fast_path_answers_exactly_what_tritonclient_decodes_on_the_same_requests(server, tiny_data,
                                                                                  requests_corpus):
    """Issue 28: the client builds the KServe message itself and reads outputs as views of the response bytes.
    On the same requests (id path and text path) its answers equal, bit for bit, what tritonclient's own
    InferInput / InferResult path gives decoded the way the client always did; explain=False gives the same
    scores and tasks without explanations (and asks the server for one output fewer)."""
    from triton_helpers import bytes_input

    from genrec.core.mind import load_split

    split = load_split(tiny_data / "dev")
    news = {line.split("\t")[0] for line in (tiny_data / "train" / "news.tsv").read_text().splitlines()}
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    client = RecommenderClient(server.grpc_url)
    checked = 0
    for imp in split.impressions[:6]:
        hist = [h for h in imp.history if h in news][-50:]
        cands = [c for c in imp.candidates if c in news]
        inputs = [bytes_input("history_id", hist), bytes_input("candidate_id", cands),
                  *(bytes_input(n, []) for n in ("new_item_id", "new_item_text", "new_item_category",
                                                  "new_item_subcategory"))]
        want = _reference(raw.infer("recommend", inputs))
        assert _answer(client.recommend(history_ids=hist, candidate_ids=cands)) == want
        lean = client.recommend(history_ids=hist, candidate_ids=cands, explain=False, top_k=5)
        assert [a[:3] for a in _answer(lean)] == [w[:3] for w in want[:5]]
        assert all(not it.because for it in lean)
        checked += 1
    assert checked == 6
    r = requests_corpus[2]
    want = _reference(raw.infer("genrec", text_inputs(r["history"], r["candidates"])))
    assert _answer(client.recommend_request(_req(r))) == want

    async def run():
        async with AsyncRecommenderClient(server.grpc_url) as aclient:
            return await aclient.recommend_request(dataclasses.replace(_req(r), explain=False))

    assert [a[:3] for a in _answer(asyncio.run(run()))] == [w[:3] for w in want]


def _id_answer(c: int, h: int, seed: int = 0):
    """A recommend answer for ``h`` history ids and ``c`` candidate ids, as the server sends it (KServe message)."""
    from tritonclient.grpc import service_pb2

    from genrec.client import wire
    from genrec.core.contract import RECOMMEND

    rng = np.random.default_rng(seed)
    arrays = {"scores": rng.normal(size=c).round(1), "topic_affinity": rng.random(c), "category_confidence":
              rng.random(c), "explanation": rng.normal(size=(c, h)).round(1), "user_topics": rng.random(5),
              "item_source": np.zeros(h + c), "truncated": rng.random(h + c) < 0.2}
    resp = service_pb2.ModelInferResponse()
    for t in RECOMMEND.outputs:
        if t.name in arrays:
            a = np.ascontiguousarray(arrays[t.name], dtype=wire.NUMPY[t.dtype])
            resp.outputs.add(name=t.name, datatype=t.dtype, shape=list(a.shape))
            resp.raw_output_contents.append(a.tobytes())
    return wire.Result(resp)


def test_answer_items_are_built_when_read_and_equal_the_eager_decoding(monkeypatch):
    """Issue 28: an answer's items are built on first access (a service reads the top few of C); what it reads
    equals the eager decoding (the ``_reference`` above, ties included: scores and weights rounded to share values),
    slices are tuples, an item read twice is one object, and the items are a tuple to every tuple operation
    (``in``, ``+``, ``==``, unpacking, pickle, copy, ``dataclasses.asdict`` -> JSON)."""
    import copy
    import pickle

    from genrec.client import RankedItems, common
    from genrec.client.types import RecommendedItem

    built = []

    class Counted(RecommendedItem):
        def __init__(self, *args):
            built.append(args[0])
            super().__init__(*args)

    monkeypatch.setattr(common, "RecommendedItem", Counted)
    c, h = 100, 50
    result = _id_answer(c, h)
    req = RecommendRequest(history_ids=[f"h{i}" for i in range(h)], candidate_ids=[f"c{i}" for i in range(c)])
    served = common.Served("1", Limits(), ["", "a", "b", "c", "d"])
    recs = common.decode(result, common.prepare(req, served.limits, served), req, served, "recommend", 0.0)
    assert isinstance(recs.items, RankedItems) and isinstance(recs.items, tuple) and len(recs) == c and built == []
    top = recs.items[:10]
    assert isinstance(top, tuple) and len(built) == 10
    assert recs.items[0] is top[0] and recs.items[-1] is recs.items[c - 1] and len(built) == 11
    with pytest.raises(IndexError):
        recs.items[c]
    want = _reference(result)
    assert _answer(top) == want[:10]
    assert _answer(recs) == want and sorted(built) == list(range(c))
    assert all(it.item_id == f"c{it.index}" and it.truncated == bool(result.as_numpy("truncated")[h + it.index])
               for it in recs)
    assert [b.item_id for b in recs.items[0].because] == [f"h{j}" for j, _ in want[0][3]]
    assert recs.items == tuple(recs.items) and recs == dataclasses.replace(recs, items=tuple(recs.items))
    monkeypatch.undo()                                  # the public item type again (a local class cannot pickle)
    plain = common.decode(result, common.prepare(req, served.limits, served), req, served, "recommend", 0.0)
    assert pickle.loads(pickle.dumps(plain.items)) == tuple(plain.items) and _answer(plain) == want
    first, *rest = plain.items
    assert first in plain.items and len(rest) == c - 1 and plain.items.index(rest[0]) == 1
    assert plain.items + () == tuple(plain.items) == () + plain.items and type(copy.deepcopy(plain.items)) is tuple
    as_json = json.loads(json.dumps(dataclasses.asdict(plain)))
    assert [(i["index"], i["score"]) for i in as_json["items"]] == [(w[0], w[1]) for w in want]
    assert list(recs.user_topics) and recs.user_topics == dict(sorted(recs.user_topics.items(), key=lambda kv: -kv[1]))


def test_bytes_tensors_are_encoded_as_tritonclient_serializes_them():
    """The fast path's BYTES encoding (length prefixes prebuilt for short elements) equals tritonclient's own
    serialization for str and bytes, multi-byte UTF-8, empty elements and elements past the prebuilt prefixes."""
    from tritonclient.utils import serialize_byte_tensor

    from genrec.client import wire

    values = ["N1", b"raw", "", "caf\u00e9 \u2615", "x" * 1023, "y" * 1024, b"z" * 70000, "N" * 5]
    want = serialize_byte_tensor(np.array([v.encode() if isinstance(v, str) else v for v in values],
                                          dtype=np.object_)).item()
    assert wire.bytes_raw(values) == want
    assert wire.bytes_values(wire.bytes_raw(values)) == [v.encode() if isinstance(v, str) else v for v in values]
