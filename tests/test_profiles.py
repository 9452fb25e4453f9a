"""The LLM user profiler and cold-user generator (`genrec enrich users` / `cold-users`) and the user_profile input.

A real local LLM (SmolLM2-135M via llama.cpp) on a handful of users, the overlay the data reader applies, the
feature in the heads, and the served path (ensemble and id path) with and without a profile. Bad profiles are
in the golden corpus (tests/test_reliability.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from genrec.core.mind import NewsItem, load_split
from genrec.core.profiles import COLD_USERS_FILE, PROFILES_FILE, generated_id, profile_vector, read_overlay, topic_list
from genrec.enrich_users import UserEnrichConfig, enrich_cold_users, enrich_users, parse_generated, parse_profile

TOPICS = ["Drama", "Comedy", "Action", "Sci-Fi", "Children's", "Fantasy"]


def test_topic_list_comes_from_the_data_most_frequent_first():
    assert topic_list(["news", "sports", "sports", "", "finance", "news", "sports"]) == ["sports", "news", "finance"]
    assert topic_list(["Drama", "Comedy", "Drama"], size=1) == ["Drama"]


def test_profile_parser_keeps_only_topics_of_the_list():
    assert parse_profile('The user likes most is "Comedy," but also Drama', TOPICS) == (("Comedy", "Drama"), "ok")
    assert parse_profile("The user enjoys comedies and sci-fi.", TOPICS) == (("Comedy", "Sci-Fi"), "ok")
    assert parse_profile("Horror, Thriller and Westerns", TOPICS) == ((), "no topic from the list")
    assert parse_profile("action, children's, comedy, drama, sci-fi, fantasy", TOPICS)[1] == "recites the topic list"
    assert parse_profile("I'm sorry, I cannot help", TOPICS)[1] == "refusal or chat"
    assert parse_profile("  ", TOPICS)[1] == "empty"
    assert parse_profile("Action, Drama, Comedy, Fantasy", TOPICS)[0] == ("Action", "Drama", "Comedy")   # MAX_TOPICS


def test_generated_titles_parser_rejects_copies_and_chat():
    hist = [NewsItem("1", "Drama", "Drama", "Titanic (1997)", "")]
    assert parse_generated("The user would like: Titanic (1997) (Drama); Fargo (1996) (Crime); Heat (1995)", hist) \
        == (("Fargo (1996)", "Heat (1995)"), "ok")
    assert parse_generated("Titanic (1997); The (1997); Liar Liar (19", hist) == ((), "no usable title (copies the "
                                                                                   "history)")
    assert parse_generated("Here are three other titles that the user would like:", hist)[1] == "only a lead-in"


def test_profile_vector_is_the_one_feature_function():
    cats = ["", "comedy", "drama", "sci-fi"]                  # as the vocabulary and the served list have them
    assert profile_vector(["Drama", "Sci-Fi"], cats) == [0.0, 0.0, 1.0, 1.0]
    assert profile_vector([], cats) == [0.0] * 4              # no profile
    assert profile_vector(["Western"], cats) == [0.0] * 4     # not a category of this model: ignored


# a small catalog of our own (the synthetic set's titles are word salad a 135M model cannot profile)
CATALOG = {"Comedy": ["A clumsy waiter ruins a wedding", "Two roommates swap jobs for a week",
                      "A talking dog runs for mayor", "Stand-up comic tours small towns"],
           "Horror": ["A haunted house eats its guests", "The zombie outbreak at the mall",
                      "A cursed doll comes back at night", "Vampires take over a ski resort"],
           "Sci-Fi": ["Astronauts find a signal on Mars", "A robot learns to feel love",
                      "Time travellers stop a war", "A spaceship lost beyond the galaxy"]}


def write_catalog(folder, users: int = 6) -> None:
    """news.tsv + behaviors.tsv: user u likes the titles of one genre; users 0 and 1 have short histories."""
    folder.mkdir(parents=True)
    ids = {}
    with open(folder / "news.tsv", "w") as fh:
        for cat, titles in CATALOG.items():
            for t in titles:
                ids.setdefault(cat, []).append(f"M{len(ids.get(cat, [])) + 4 * list(CATALOG).index(cat)}")
                fh.write(f"{ids[cat][-1]}\t{cat}\t{cat}\t{t}\t\t\t\t\n")
    with open(folder / "behaviors.tsv", "w") as fh:
        for u in range(users):
            cat = list(CATALOG)[u % 3]
            other = ids[list(CATALOG)[(u + 1) % 3]]
            hist = ids[cat][:1] if u < 2 else ids[cat][:3]
            fh.write(f"{u + 1}\tU{u}\t11/15/2019 8:55:22 AM\t{' '.join(hist)}\t{ids[cat][3]}-1 {other[0]}-0\n")


@pytest.fixture(scope="module")
def enriched(tmp_path_factory):
    """A small catalog profiled and cold-user-enriched by the real local LLM (6 users each)."""
    data = tmp_path_factory.mktemp("profiles") / "train"
    write_catalog(data)
    cfg = UserEnrichConfig(limit=6, cold_threshold=2, history_in_prompt=5)
    users = enrich_users(data, cfg, progress=False, log=lambda _m: None)
    cold = enrich_cold_users(data, cfg, progress=False, log=lambda _m: None)
    return data, cfg, users, cold


def test_real_llm_profiles_users_from_the_topic_list_cached_and_resumable(enriched):
    data, cfg, report, _ = enriched
    assert report["selected"] == 6 and report["asked"] == 6 and report["failed_requests"] == 0
    assert report["enriched"] + report["fallbacks"] == 6 and report["enriched"] >= 1, report
    assert sum(report["fallback_reasons"].values()) == report["fallbacks"]          # every fallback has a reason
    profiles = read_overlay(data / PROFILES_FILE)
    assert len(profiles) == report["enriched"]
    assert all(set(topics) <= set(report["topics"]) and 1 <= len(topics) <= 3 for _, topics in profiles.values())
    again = enrich_users(data, cfg, progress=False, log=lambda _m: None)               # everything from the cache
    assert again["asked"] == 0 and again["from_cache"] == 6 and again["enriched"] == report["enriched"]
    # the reader overlays the profile where the history hash matches, and only there
    split = load_split(data)
    got = {imp.user_id: imp.profile for imp in split.impressions if imp.profile}
    assert set(got) == set(profiles) and all(got[u] == profiles[u][1] for u in got)
    user, (key, topics) = next(iter(profiles.items()))
    (data / PROFILES_FILE).write_text(f"{user}\t{'0' * 16}\t{topics[0]}\n")            # a stale history hash
    assert not any(imp.profile for imp in load_split(data).impressions)


def test_real_llm_writes_items_for_short_histories_only(enriched):
    data, cfg, _, report = enriched
    assert report["failed_requests"] == 0 and report["selected"] == min(6, report["selected"])
    assert set(report["not_selected"]) <= {f"history of {cfg.cold_threshold}+ items", "empty history"}
    cold = read_overlay(data / COLD_USERS_FILE)
    assert len(cold) == report["enriched"]
    split = load_split(data)
    for imp in split.impressions:
        if imp.generated:
            assert len(imp.history) < cfg.cold_threshold and imp.generated == cold[imp.user_id][1]


def test_training_extends_short_histories_and_fills_the_profile_matrix(enriched):
    from genrec.core.vocab import Vocab
    from genrec.tables import ImpressionArrays, ItemTable

    data, *_ = enriched
    split = load_split(data)
    imps = list(split.impressions)
    imps[0] = type(imps[0])(**{**imps[0].__dict__, "profile": ("Horror",), "generated": ("A made-up title",)})
    cats = Vocab.build(n.category for n in split.news.values())
    names = ["", *cats.to_list()]
    table = ItemTable.from_news(split.news, cats, cats, False, generated=imps)
    arr = ImpressionArrays.build(imps, table, 50, categories=names, generated=True)
    assert arr.profile.shape == (len(imps), len(names)) and arr.profile[0, names.index("horror")] == 1.0
    assert arr.profile[0].sum() == 1.0
    first = table.ids[arr.history[0, 0]]
    assert first == generated_id("A made-up title") and table.category[arr.history[0, 0]] == 0
    assert (arr.history[0] > 0).sum() == len(imps[0].history) + 1
    plain = ImpressionArrays.build(imps, table, 50, categories=names, generated=False)
    assert (plain.history[0] > 0).sum() == len(imps[0].history)


def test_heads_use_the_profile_only_when_configured(trained_run):
    import torch

    from genrec.checkpoint import Checkpoint
    from genrec.core.contract import N_STATS

    ckpt = Checkpoint.load(trained_run)
    heads = ckpt.build_model().heads.eval()
    k, d = heads.cfg.n_categories, heads.cfg.dim
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, 3, d, generator=g), torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.long),
            torch.ones(1, 3, dtype=torch.long), torch.randn(1, 4, d, generator=g),
            torch.tensor([[1, 2, 3, 1]]), torch.ones(1, 4, dtype=torch.long), torch.zeros(1, 3, N_STATS),
            torch.zeros(1, 4, N_STATS))
    prof = torch.zeros(1, k)
    prof[0, 2] = 1.0
    with torch.no_grad():
        none = heads(*args, None)["click_logit"]
        zeros = heads(*args, torch.zeros(1, k))["click_logit"]
        some = heads(*args, prof)
    torch.testing.assert_close(none, zeros)                                     # absent == "no profile"
    assert heads.cfg.profiles and (some["click_logit"] - none).abs().max() > 1e-4
    # the leave-one-out explanation stays exact with a profile (it does not depend on the history)
    assert torch.isfinite(some["explanation"]).all()
    heads.cfg.profiles = False
    try:
        with torch.no_grad():
            torch.testing.assert_close(heads(*args, prof)["click_logit"], none)  # ablation: blind to profiles
    finally:
        heads.cfg.profiles = True


def test_served_profile_and_generated_titles_equal_in_process(server, pipeline, requests_corpus):
    """The ensemble and the id path with and without user_profile: served = in-process, a profile moves the
    scores, and an absent one equals zeros. Generated titles go in as the oldest history texts."""
    from genrec.client import RecommenderClient

    cats = ["", *pipeline.assets.category_vocab.to_list()]
    topics = [cats[1], cats[3]]
    vec = np.asarray(profile_vector(topics, cats), np.float32)
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    with RecommenderClient(server.grpc_url) as client:
        for req in requests_corpus[:4]:
            (ht, hc, hs), (ct, cc, cs) = req["history"], req["candidates"]
            ref_none = pipeline.recommend(ht, ct, hc, hs, cc, cs)["scores"]
            ref_prof = pipeline.recommend(ht, ct, hc, hs, cc, cs, user_profile=vec)["scores"]
            assert np.abs(ref_prof - ref_none).max() > 1e-4, "the profile does not reach the scores"
            for profile, ref in ((None, ref_none), (topics, ref_prof)):
                got = client.recommend(ht, ct, history_categories=hc, history_subcategories=hs,
                                       candidate_categories=cc, candidate_subcategories=cs, profile=profile)
                scores = np.array([it.score for it in sorted(got.items, key=lambda it: it.index)])
                np.testing.assert_allclose(scores, ref, atol=1e-5, rtol=0)
                by_id = client.recommend(history_ids=req["history_ids"], candidate_ids=req["candidate_ids"],
                                         profile=profile)
                assert len(by_id.items) == len(ct)
            # raw request with zeros == without (documented "no profile" value)
            zeros = grpcclient.InferInput("user_profile", [len(cats)], "FP32")
            zeros.set_data_from_numpy(np.zeros(len(cats), np.float32))
            from triton_helpers import text_inputs

            a = raw.infer("genrec", text_inputs(req["history"], req["candidates"])).as_numpy("scores")
            b = raw.infer("genrec", [*text_inputs(req["history"], req["candidates"]), zeros]).as_numpy("scores")
            np.testing.assert_array_equal(a, b)
        # the id path: a profile changes the scores there too
        r = requests_corpus[0]
        plain = client.recommend(history_ids=r["history_ids"], candidate_ids=r["candidate_ids"])
        prof = client.recommend(history_ids=r["history_ids"], candidate_ids=r["candidate_ids"], profile=topics)
        assert max(abs(a.score - b.score) for a, b in zip(sorted(plain.items, key=lambda i: i.index),
                                                          sorted(prof.items, key=lambda i: i.index))) > 1e-4
        # cold user, opt-in generated titles: sent as history texts of unknown category, oldest first
        (ct, cc, cs) = r["candidates"]
        gen = ["A film about a robot who learns to paint", "Space explorers find a lost city"]
        got = client.recommend([], ct, candidate_categories=cc, candidate_subcategories=cs, generated=gen)
        ref = pipeline.recommend(gen, ct, ["", ""], ["", ""], cc, cs)["scores"]
        scores = np.array([it.score for it in sorted(got.items, key=lambda it: it.index)])
        np.testing.assert_allclose(scores, ref, atol=1e-5, rtol=0)
        assert got.items[0].because and got.items[0].because[0].text in gen
        by_id = client.recommend(history_ids=[], candidate_ids=r["candidate_ids"], generated=gen)
        assert {b.text for it in by_id.items for b in it.because} <= set(gen)


def test_client_rejects_a_topic_the_model_does_not_know(server, pipeline):
    from genrec.client import InvalidRequest, RecommenderClient

    known = pipeline.assets.category_vocab.to_list()[0]
    with RecommenderClient(server.grpc_url) as client, pytest.raises(InvalidRequest, match=r"profile\[1\] 'no-such"):
        client.recommend(["a title"], ["another"], profile=[known, "no-such-topic"])


def test_ray_fan_out_gives_the_in_process_answers(enriched, tmp_path):
    """`enrich users --ray` on a REAL local Ray cluster (a head and one worker node): every answer is the one the
    in-process run cached (greedy decoding), the outputs are the same, and the driver wrote them."""
    import json

    pytest.importorskip("ray", reason="genrec[ray] is not installed")
    from genrec.cli import main
    from genrec.localray import LocalRayCluster

    data, cfg, report, _ = enriched
    fresh = tmp_path / "train"
    write_catalog(fresh)
    with LocalRayCluster(workers=1, cpus_per_node=1) as cluster:
        assert main(["enrich", "users", "--data", str(fresh), "--limit", "6", "--history-in-prompt", "5",
                     "--ray", cluster.address, "--ray-chunk", "2", "--quiet"]) == 0
    got = json.loads((fresh / "enrich_users_report.json").read_text())
    assert got["ray"] == cluster.address and got["asked"] == 6 and got["failed_requests"] == 0

    def answers(folder):
        return {r["id"]: r["answer"] for r in map(json.loads, (folder / "enrich_cache.jsonl").read_text().splitlines())
                if r["task"] == "users"}

    assert answers(fresh) == answers(data)
    assert len(read_overlay(fresh / PROFILES_FILE)) == report["enriched"]   # (the other test rewrote data's file)


def test_profile_validation_names_what_and_where():
    from genrec.core.requests import RequestError, validate_profile

    cats = ["", "comedy", "drama"]
    assert validate_profile(None, cats) is None                                   # absent = no profile
    np.testing.assert_array_equal(validate_profile([0, 1, 0.5], cats), np.array([0, 1, 0.5], np.float32))
    for bad, match in (([0, np.nan, 0], r"user_profile\[1\] \('comedy'\) is nan"),
                       ([0, 0, np.inf], r"user_profile\[2\] \('drama'\) is inf"),
                       ([0, 1.5, 0], r"user_profile\[1\] \('comedy'\) is 1.5; profile weights must be finite and in"),
                       ([0, 0, -0.1], r"user_profile\[2\] \('drama'\) is -0.1"),
                       ([0, 1], r"user_profile must have shape \[3\].*got \[2\]"),
                       ([[0, 1, 0]], r"must have shape \[3\]")):
        with pytest.raises(RequestError, match=match):
            validate_profile(bad, cats)


def test_client_sends_generated_titles_as_the_oldest_history_and_topics_as_the_profile():
    from genrec.client import wire
    from genrec.client.common import Served, encode_inputs, prepare
    from genrec.client.types import RecommendRequest
    from genrec.core.requests import Limits

    served = Served("1", Limits(max_history=3), ["", "comedy", "drama"], 0)
    req = RecommendRequest(["real 1", "real 2"], ["cand"], history_categories=["drama", "drama"],
                           generated=["gen 1", "gen 2"], profile=["Drama"])
    user = prepare(req, served.limits, served)
    assert user.history_text == ["gen 2", "real 1", "real 2"]               # the real history is kept first
    assert user.history_category == ["", "drama", "drama"]
    np.testing.assert_array_equal(user.user_profile, [0, 0, 1])
    assert "user_profile" in {t.name for t in encode_inputs(user, wire.Tensors(), req).specs}
    plain = prepare(RecommendRequest(["real 1"], ["cand"]), served.limits, served)
    assert plain.user_profile is None and "user_profile" not in {
        t.name for t in encode_inputs(plain, wire.Tensors()).specs}          # absent: old servers keep working
    ids = prepare(RecommendRequest(history_ids=["N1"], candidate_ids=["N2"], generated=["gen 1"], profile=["comedy"]),
                  served.limits, served)
    assert ids.history_id == [generated_id("gen 1"), "N1"] and ids.new_items[generated_id("gen 1")][0] == "gen 1"
    np.testing.assert_array_equal(ids.user_profile, [0, 1, 0])
