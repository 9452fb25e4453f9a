"""The contract's typed wiring: every served model's config ``parameters`` round-trip through one dataclass, and the
ensemble's steps are wired from the graphs' own tensor names (no hand-written map)."""

from __future__ import annotations

import dataclasses

import pytest

from genrec.core import contract as c


def test_typed_parameters_round_trip_and_keep_defaults_for_missing_keys():
    p = c.RecommendParams(index_dir="/data/index", categories=("", "sports", "a \"quoted\" one"), retrieval_m=200,
                          stats_refresh_ms=0, lru_bytes=123)
    text = p.to_parameters()
    assert all(isinstance(v, str) for v in text.values()) and set(text) == {f.name for f in dataclasses.fields(p)}
    assert c.RecommendParams.from_parameters(text) == p
    # what the python backend hands a model: the config as JSON, {"key": {"string_value": ...}}
    assert c.RecommendParams.from_parameters({k: {"string_value": v} for k, v in text.items()}) == p
    older = c.RecommendParams.from_parameters({"index_dir": "/x"})       # a repository built before a key existed
    assert older.index_refresh_ms == c.RecommendParams.index_refresh_ms and older.index_dir == "/x"
    # a subclass reads the served facts of its parent's object; the client reads ServedParams from any of them
    assert c.ServedParams.from_parameters(p).categories == p.categories
    # comma-separated integers as repositories before the typed parameters wrote them
    assert c.TorchEncoderParams.from_parameters({"warmup_batches": "1,64,512"}).warmup_batches == (1, 64, 512)
    with pytest.raises(ValueError):
        c.HeadsParams.from_parameters({"dim": "not a number"})


def test_ensemble_wiring_comes_from_the_tensor_names():
    wiring = {name: (inputs, outputs) for name, inputs, outputs in c.ensemble_wiring()}
    assert list(wiring) == [s.name for s in c.ENSEMBLE_STEPS]
    # a tensor keeps its name across the ensemble, except the reads the contract names
    for step in c.ENSEMBLE_STEPS:
        inputs, outputs = wiring[step.name]
        renamed = {k: v for k, v in inputs.items() if k != v}
        assert renamed == c.ENSEMBLE_READS.get(step.name, {})
        assert outputs == {n: n for n in step.output_names}
    assert wiring["encoder"][0] == {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    produced = {n for _, outs in wiring.values() for n in outs.values()}
    assert set(c.ENSEMBLE.output_names) <= produced


def test_ensemble_wiring_refuses_what_does_not_fit():
    heads_reads = dict(c.ENSEMBLE_READS["heads"])
    del heads_reads["history_category"]          # the heads would read the BYTES ensemble input: a dtype mismatch
    with pytest.raises(ValueError, match="history_category.*INT64.*BYTES"):
        c.ensemble_wiring(reads={"heads": heads_reads})
    with pytest.raises(ValueError, match="no ensemble input or earlier step provides"):
        c.ensemble_wiring(steps=(c.ENCODER, c.HEADS))                 # no tokenizer: nothing makes input_ids
    with pytest.raises(ValueError, match="no step produces"):
        c.ensemble_wiring(steps=(c.TOKENIZER, c.ENCODER))           # no heads: the scores are never produced
    with pytest.raises(ValueError, match="name no input"):
        c.ensemble_wiring(reads={"heads": {**c.ENSEMBLE_READS["heads"], "no_such_input": "x"}})


def test_constants_are_defined_once():
    assert c.N_STATS == len(c.ITEM_STATS) and c.N_COUNTS == len(c.ITEM_COUNTS)
    assert c.ITEM_SOURCES[c.SOURCE_INDEX] == "index" and c.ITEM_SOURCES[c.SOURCE_CACHE] == "cache"
    assert c.ITEM_SOURCES[c.SOURCE_ENCODED] == "encoded"
    from genrec.core import requests, stats, statstore
    from genrec.model_repository.builder import RepositoryConfig

    assert requests.N_STATS is c.N_STATS and stats.N_STATS is c.N_STATS and statstore.N_STATS is c.N_STATS
    assert RepositoryConfig().max_candidates == c.MAX_CANDIDATES
