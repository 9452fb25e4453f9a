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

from genrec.artifacts import ServingAssets
from genrec.checkpoint import Checkpoint
from genrec.data.mind import load_split
from genrec.export import ParityError
from genrec.export.convert import INT8_RECIPES, to_int8
from genrec.export.parity import batch_invariance, gate
from genrec.index import IndexConfig, ItemIndex, build_index
from genrec.model_repository.builder import RepositoryConfig, build_repository
from genrec.runtime import OrtEncoder
from genrec.server.launcher import running_server
from genrec.text import item_text

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
    enc = OrtEncoder(artifacts.graph(precision, "encoder"), threads=2)
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
    value = batch_invariance(OrtEncoder(path, threads=2), tokenizer, texts)
    assert value > 1e-3
    with pytest.raises(ParityError) as err:
        gate("int8", {"batch_invariance_max_abs_diff": value}, {"batch_invariance_max_abs_diff": TOL})
    assert err.value.check == "batch_invariance_max_abs_diff"
    shipped = batch_invariance(OrtEncoder(artifacts.graph("int8", "encoder"), threads=2), tokenizer, texts)
    assert shipped <= TOL


@pytest.fixture(scope="module")
def int8_index(artifacts, tiny_data, tmp_path_factory):
    return build_index(tiny_data / "train" / "news.tsv", artifacts.root, tmp_path_factory.mktemp("index") / "int8",
                       IndexConfig(precision="int8", threads=2), progress=False, log=lambda _m: None)


@pytest.fixture(scope="module")
def int8_server(artifacts, int8_index, tmp_path_factory):
    """The INT8 repository (text ensemble + id path) with a long queue delay, so concurrent requests merge."""
    repo = build_repository(artifacts.root, tmp_path_factory.mktemp("repo") / "int8",
                            RepositoryConfig(precision="int8", max_queue_delay_us=QUEUE_DELAY_US,
                                             index=str(int8_index), recommend_instances=1))
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
