"""The real-time id path: item index (build, resume, encoder stamp) and the `recommend` model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from triton_helpers import bytes_input
from tritonclient.utils import InferenceServerException

from genrec.client import InvalidRequest, RecommenderClient
from genrec.data.mind import load_split
from genrec.index import IndexConfig, IndexMismatch, ItemIndex, build_index
from genrec.model_repository.builder import RepositoryConfig, build_repository
from genrec.server.launcher import ServerError, running_server


class Interrupt(Exception):
    pass


def test_build_is_resumable_and_matches_a_fresh_build(artifacts, tiny_data, fp32_index, tmp_path):
    catalog = tiny_data / "train" / "news.tsv"
    cfg = IndexConfig(precision="fp32", chunk_size=100, threads=2)

    def stop_after_three(rows: int) -> None:
        if rows >= 300:
            raise Interrupt

    with pytest.raises(Interrupt):
        build_index(catalog, artifacts.root, tmp_path / "ix", cfg, progress=False, log=lambda _m: None,
                    on_chunk=stop_after_three)
    with pytest.raises(IndexMismatch, match="incomplete \\(300 of"):
        ItemIndex(tmp_path / "ix")
    messages: list[str] = []
    encoded: list[int] = []
    build_index(catalog, artifacts.root, tmp_path / "ix", cfg, progress=False, log=messages.append,
                on_chunk=encoded.append)
    assert any("resuming at row 300" in m for m in messages)
    assert encoded[0] == 400                                  # the first 300 rows were not encoded again
    resumed, fresh = ItemIndex(tmp_path / "ix"), ItemIndex(fp32_index)
    assert len(resumed) == len(fresh) == len(load_split(tiny_data / "train").news)
    np.testing.assert_allclose(np.asarray(resumed.vectors), np.asarray(fresh.vectors), atol=1e-5)
    assert resumed.rows([b"N1", b"N5", b"missing"]).tolist()[:2] == fresh.rows([b"N1", b"N5"]).tolist()
    assert resumed.rows([b"missing"]).tolist() == [-1]


def test_index_from_another_encoder_is_refused(artifacts, fp32_index, fp32_repository, tiny_data, tmp_path):
    int8_index = build_index(tiny_data / "train" / "news.tsv", artifacts.root, tmp_path / "int8",
                             IndexConfig(precision="int8"), progress=False, log=lambda _m: None)
    # at repository build time
    with pytest.raises(IndexMismatch, match="was built by encoder"):
        build_repository(artifacts.root, tmp_path / "repo", RepositoryConfig(precision="fp32", index=str(int8_index)))
    # and by the server itself, when the index under a built repository changes
    repo = tmp_path / "repo2"
    shutil.copytree(fp32_repository, repo)
    swapped = tmp_path / "swapped"
    shutil.copytree(int8_index, swapped)
    cfg = (repo / "recommend" / "config.pbtxt").read_text()
    (repo / "recommend" / "config.pbtxt").write_text(cfg.replace(str(fp32_index.resolve()), str(swapped.resolve())))
    with pytest.raises(ServerError) as err:
        with running_server(repo, ready_timeout_s=90):
            pass
    assert "was built by encoder" in str(err.value) and "Rebuild the index" in str(err.value)


def _news(tiny_data):
    return load_split(tiny_data / "train").news


def test_id_path_scores_equal_the_text_path(server, tiny_data, requests_corpus):
    news = _news(tiny_data)
    split = load_split(tiny_data / "dev")
    client = RecommenderClient(server.grpc_url)
    checked = 0
    for imp in split.impressions[:8]:
        hist = [h for h in imp.history if h in news]
        cands = [c for c in imp.candidates if c in news]
        by_id = client.recommend(history_ids=hist, candidate_ids=cands)
        by_text = client.recommend([news[h].title for h in hist], [news[c].title for c in cands],
                                   history_categories=[news[h].category for h in hist],
                                   history_subcategories=[news[h].subcategory for h in hist],
                                   candidate_categories=[news[c].category for c in cands],
                                   candidate_subcategories=[news[c].subcategory for c in cands])
        assert [it.index for it in by_id] == [it.index for it in by_text]
        np.testing.assert_allclose([it.score for it in by_id], [it.score for it in by_text], atol=1e-5)
        for a, b in zip(by_id.items[:3], by_text.items[:3]):
            np.testing.assert_allclose([x.weight for x in a.because], [x.weight for x in b.because], atol=1e-5)
        assert all(it.source == "index" for it in by_id)
        checked += 1
    assert checked == 8


def test_new_items_are_encoded_then_cached_with_the_same_scores(server, tiny_data):
    news = _news(tiny_data)
    ids = list(news)[:12]
    client = RecommenderClient(server.grpc_url)
    fresh = {"brand-new-1": ("Coach praises linebacker after playoff victory", "sports", "football_nfl"),
             "brand-new-2": ("Stocks rally as investors cheer strong earnings", "finance", "markets")}
    first = client.recommend(history_ids=ids[:6], candidate_ids=[*ids[6:], *fresh], new_items=fresh)
    second = client.recommend(history_ids=ids[:6], candidate_ids=[*ids[6:], *fresh], new_items=fresh)
    src1 = {it.item_id: it.source for it in first}
    src2 = {it.item_id: it.source for it in second}
    assert src1["brand-new-1"] == "encoded" and src2["brand-new-1"] == "cache"
    assert src1[ids[6]] == "index"
    by_text = client.recommend([news[h].title for h in ids[:6]], [*(news[c].title for c in ids[6:]),
                                                                   *(v[0] for v in fresh.values())],
                               history_categories=[news[h].category for h in ids[:6]],
                               history_subcategories=[news[h].subcategory for h in ids[:6]],
                               candidate_categories=[*(news[c].category for c in ids[6:]), "sports", "finance"],
                               candidate_subcategories=[*(news[c].subcategory for c in ids[6:]), "football_nfl",
                                                        "markets"])
    want = {it.index: it.score for it in by_text}
    for recs in (first, second):
        for it in recs:
            assert it.score == pytest.approx(want[it.index], abs=1e-5)
    assert second.items[0].text or second.items[0].source == "index"


def test_unknown_id_without_text_is_invalid(server, tiny_data):
    news = _news(tiny_data)
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = [bytes_input("history_id", list(news)[:2]), bytes_input("candidate_id", ["N1", "no-such-item"]),
              *(bytes_input(n, []) for n in ("new_item_id", "new_item_text", "new_item_category",
                                              "new_item_subcategory"))]
    with pytest.raises(InferenceServerException) as err:
        raw.infer("recommend", inputs)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "candidate_id[1] 'no-such-item' is not in the index; send its text in new_item_*" in err.value.message()
    client = RecommenderClient(server.grpc_url)
    with pytest.raises(InvalidRequest, match="not both"):
        client.recommend(["a text"], candidate_ids=["N1"])
    with pytest.raises(InvalidRequest, match="new_item_id\\[0\\] is 65 bytes"):
        client.recommend(candidate_ids=["N1"], new_items={"x" * 65: "some text"})
    assert raw.is_server_ready()
