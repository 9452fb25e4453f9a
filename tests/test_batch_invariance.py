"""Batch invariance (issue 12 item 1): a text's vector and a user's scores do not depend on what else is in
the batch. Triton's dynamic batcher merges users' requests into one encoder batch padded to the longest
text; ORT dynamic quantization with one activation scale per batch (the old INT8 recipe) made INT8 vectors
depend on those batch-mates (max |d| ~0.03 next to long texts)."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from triton_helpers import text_inputs
from workers import THREADS

from genrec.benchmarks.replay import cache_counters
from genrec.checkpoint import Checkpoint
from genrec.core.artifacts import ServingAssets
from genrec.core.index import IndexConfig, ItemIndex, build_index
from genrec.core.mind import load_split
from genrec.core.runtime import CachedEncoder, OrtEncoder
from genrec.core.text import item_text
from genrec.export import ParityError
from genrec.export.convert import INT8_RECIPES, to_int8
from genrec.export.parity import batch_invariance, gate
from genrec.model_repository.builder import RepositoryConfig, build_repository
from genrec.server.launcher import running_server

TOL = 1e-6
QUEUE_DELAY_US = 400_000      # long enough that concurrent requests are merged into one encoder execution


@pytest.fixture(scope="module")
def news(tiny_data):
    return load_split(tiny_data / "train").news


@pytest.fixture(scope="module")
def tokenizer(artifacts):
    return ServingAssets.load(artifacts.assets).tokenizer()


def long_texts(news, n: int) -> list[str]:
    """n texts of at least max_length tokens (several titles joined): the worst batch-mates for a batch scale."""
    titles = [it.title for it in news.values()]
    return [" ".join(titles[i * 4: i * 4 + 4]) for i in range(n)]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_encoder_text_alone_equals_text_inside_a_batch_of_long_texts(artifacts, news, tokenizer, precision):
    enc = OrtEncoder(artifacts.graph(precision, "encoder"), threads=THREADS)
    probes = [it.title for it in list(news.values())[-6:]]
    mates = long_texts(news, 20)
    alone = np.concatenate([enc(t.input_ids, t.attention_mask) for t in map(tokenizer, ([p] for p in probes))])
    batch = tokenizer([*mates[:10], *probes, *mates[10:]])
    assert batch.input_ids.shape[1] == tokenizer.max_length > max(tokenizer([p]).input_ids.shape[1] for p in probes)
    inside = enc(batch.input_ids, batch.attention_mask)[10:16]
    np.testing.assert_allclose(inside, alone, atol=TOL, rtol=0)
    # and padded to max_length alone (what the native-ORT repository's fixed padding and the index build do)
    padded = tokenizer(probes, pad_to=tokenizer.max_length)
    np.testing.assert_allclose(enc(padded.input_ids, padded.attention_mask), alone, atol=TOL, rtol=0)


def test_gate_fails_the_per_batch_int8_recipe(artifacts, trained_run, news, tokenizer, tmp_path):
    """The pre-issue-12 recipe (one activation scale per batch) fails the gate's batch-invariance check."""
    lm = Checkpoint.load(trained_run).lm_config
    path = to_int8(artifacts.graph("fp32", "encoder"), tmp_path / "per_batch.onnx",
                   INT8_RECIPES["per_batch_per_channel_reduce_range_fused"],
                   bert={"num_heads": lm["num_attention_heads"], "hidden_size": lm["hidden_size"]})
    texts = [it.title for it in news.values()][:200]
    value = batch_invariance(OrtEncoder(path, threads=THREADS), tokenizer, texts)
    assert value > 1e-3
    with pytest.raises(ParityError) as err:
        gate("int8", {"batch_invariance_max_abs_diff": value}, {"batch_invariance_max_abs_diff": TOL})
    assert err.value.check == "batch_invariance_max_abs_diff"
    shipped = batch_invariance(OrtEncoder(artifacts.graph("int8", "encoder"), threads=THREADS), tokenizer, texts)
    assert shipped <= TOL


@pytest.fixture(scope="module")
def int8_index(artifacts, tiny_data, tmp_path_factory):
    return build_index(tiny_data / "train" / "news.tsv", artifacts.root, tmp_path_factory.mktemp("index") / "int8",
                       IndexConfig(precision="int8", threads=THREADS), progress=False, log=lambda _m: None)


@pytest.fixture(scope="module")
def int8_server(artifacts, int8_index, tmp_path_factory):
    """The INT8 repository (text ensemble + id path) with a long queue delay, so concurrent requests merge."""
    repo = build_repository(artifacts.root, tmp_path_factory.mktemp("repo") / "int8",
                            RepositoryConfig(precision="int8", max_queue_delay_us=QUEUE_DELAY_US,
                                             index=str(int8_index), recommend_instances=1,
                                             encoder_cache_mb=0))       # every text really encoded here
    with running_server(repo) as srv:
        yield srv


def _encoder_executions(client) -> int:
    return client.get_inference_statistics("encoder").model_stats[0].execution_count


def _merged(client, jobs) -> list:
    """Run ``jobs`` (callables) concurrently until one round is served by a single encoder execution
    (every request merged with all the others); return that round's results."""
    for _ in range(3):
        before = _encoder_executions(client)
        with cf.ThreadPoolExecutor(len(jobs)) as pool:
            results = [f.result() for f in [pool.submit(job) for job in jobs]]
        if _encoder_executions(client) - before == 1:
            return results
    pytest.fail(f"{len(jobs)} concurrent requests were never merged into one encoder execution")


def test_served_scores_alone_equal_scores_merged_with_other_requests(int8_server, requests_corpus, news):
    url = int8_server.grpc_url
    client = grpcclient.InferenceServerClient(url)
    req = requests_corpus[0]
    outputs = ("scores", "explanation", "topic_affinity", "category_confidence", "user_topics")
    alone_res = client.infer("genrec", text_inputs(req["history"], req["candidates"]))
    alone = {k: alone_res.as_numpy(k) for k in outputs}
    mates = long_texts(news, 64)

    def other(i: int):
        texts = mates[i * 8: i * 8 + 8]
        return grpcclient.InferenceServerClient(url).infer(
            "genrec", text_inputs((texts[:3], ["news"] * 3, [""] * 3), (texts[3:], ["sports"] * 5, [""] * 5)))

    def target():
        return grpcclient.InferenceServerClient(url).infer("genrec", text_inputs(req["history"], req["candidates"]))

    merged = _merged(client, [target, *(lambda i=i: other(i) for i in range(8))])[0]
    for k in outputs:
        np.testing.assert_allclose(merged.as_numpy(k), alone[k], atol=TOL, rtol=0, err_msg=k)


def test_index_vectors_equal_served_vectors(int8_server, int8_index, news, tokenizer):
    """Vectors of the index build (batches of 128, length-sorted) = the encoder's served vectors for the same
    items, while Triton merges them with other requests' long texts."""
    url = int8_server.grpc_url
    index = ItemIndex(int8_index)
    ids = list(news)[:40]
    rows = index.rows([i.encode() for i in ids])
    assert (rows >= 0).all()
    texts = [item_text(news[i].title, news[i].abstract, index.manifest["use_abstract"]) for i in ids]
    mates = long_texts(news, 48)

    def encode(batch: list[str]):
        tok = tokenizer(batch)
        inputs = [grpcclient.InferInput("input_ids", list(tok.input_ids.shape), "INT64"),
                  grpcclient.InferInput("attention_mask", list(tok.attention_mask.shape), "INT64")]
        inputs[0].set_data_from_numpy(tok.input_ids)
        inputs[1].set_data_from_numpy(tok.attention_mask)
        return grpcclient.InferenceServerClient(url).infer("encoder", inputs).as_numpy("item_vectors")

    jobs = [lambda k=k: encode(texts[k * 10: k * 10 + 10]) for k in range(4)]
    jobs += [lambda k=k: encode(mates[k * 8: k * 8 + 8]) for k in range(6)]
    served = np.concatenate(_merged(grpcclient.InferenceServerClient(url), jobs)[:4])
    np.testing.assert_allclose(served, index.vectors[rows], atol=TOL, rtol=0)


# ---- the text path's vector cache (correct only because INT8 encoding is batch-invariant) ----------------
def test_cached_vectors_equal_fresh_ones(artifacts, news, tokenizer):
    enc = OrtEncoder(artifacts.graph("int8", "encoder"), threads=THREADS)
    assert enc.rows_independent
    cached = CachedEncoder(enc, 1 << 20)
    titles = list(dict.fromkeys(item_text(n.title) for n in news.values()))[:40]
    first = tokenizer(titles[:20])
    np.testing.assert_array_equal(cached(first.input_ids, first.attention_mask),
                                  enc(first.input_ids, first.attention_mask))
    assert (cached.hits, cached.misses) == (0, 20)
    # repeats in another order, padded wider by long new texts, one repeated twice in the same call
    mixed = [titles[5], *long_texts(news, 3), titles[0], titles[5], titles[30]]
    tok = tokenizer(mixed)
    got = cached(tok.input_ids, tok.attention_mask)
    for row, text in enumerate(mixed):                       # each equals the text encoded alone, bit for bit
        alone = tokenizer([text])
        np.testing.assert_array_equal(got[row], enc(alone.input_ids, alone.attention_mask)[0])
    assert (cached.hits, cached.misses) == (3, 20 + 4)
    with pytest.raises(ValueError, match="independent"):
        CachedEncoder(OrtEncoder(artifacts.graph("fp32", "encoder"), threads=1), 1 << 20)


def test_text_path_cache_serves_repeats_and_reports_metrics(artifacts, requests_corpus, tmp_path):
    repo = build_repository(artifacts.root, tmp_path / "repo", RepositoryConfig(precision="int8", encoder_cache_mb=8))
    req = requests_corpus[2]
    n_texts = len(req["history"][0]) + len(req["candidates"][0])
    outputs = ("scores", "explanation", "topic_affinity", "category_confidence", "user_topics")
    with running_server(repo) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        first = client.infer("genrec", text_inputs(req["history"], req["candidates"]))
        after_first = cache_counters(srv.metrics_url)
        again = client.infer("genrec", text_inputs(req["history"], req["candidates"]))
        after_again = cache_counters(srv.metrics_url)
    distinct = len(set(req["history"][0]) | set(req["candidates"][0]))
    assert after_first["genrec_vector_cache_misses_total"] == distinct
    assert after_first["genrec_vector_cache_hits_total"] == n_texts - distinct
    assert after_again["genrec_vector_cache_hits_total"] - after_first["genrec_vector_cache_hits_total"] == n_texts
    assert after_again["genrec_vector_cache_misses_total"] == distinct and after_again["genrec_vector_cache_bytes"] > 0
    for k in outputs:                                         # cached = fresh: the same scores, bit for bit
        np.testing.assert_array_equal(again.as_numpy(k), first.as_numpy(k), err_msg=k)
    # the tokenizer's token-id cache: each distinct text tokenized once, the repeat all hits
    assert after_first["genrec_token_cache_misses_total"] == distinct
    assert after_first["genrec_token_cache_hits_total"] == n_texts - distinct
    assert after_again["genrec_token_cache_hits_total"] - after_first["genrec_token_cache_hits_total"] == n_texts
    assert after_again["genrec_token_cache_bytes"] > 0
