"""`make quality` resumes finished runs only when they come from the same code and settings."""

from __future__ import annotations

import json

from genrec.benchmarks.quality import code_fingerprint, finished_run


def test_a_finished_run_is_reused_only_for_the_same_code_and_settings(tmp_path):
    code = code_fingerprint()
    assert len(code) == 64 and code == code_fingerprint()
    key = {"code": code, "overrides": {"baseline_init": 0.0}, "text": "title", "threads": 1}
    done = tmp_path / "quality_run.json"
    assert finished_run(done, key) is None                                  # never ran
    done.write_text(json.dumps({"seed": 0, "group_auc": 0.65, "key": key}))
    assert finished_run(done, key)["group_auc"] == 0.65
    assert finished_run(done, {**key, "code": "0" * 64}) is None           # the model code changed since
    assert finished_run(done, {**key, "overrides": {}}) is None            # another variant's settings
    done.write_text(json.dumps({"seed": 0, "group_auc": 0.65}))             # written before runs carried a key
    assert finished_run(done, key) is None


def test_the_table_reports_every_regime_with_its_new_share():
    from genrec.benchmarks.quality import _summary, markdown

    def run(seed, auc):
        split = {"known": {"group_auc": auc + 0.01}, "mixed": {"group_auc": auc - 0.02}, "new": {"group_auc": 0.55}}
        return {"seed": seed, "group_auc": auc, "mrr": 0.4, "ndcg@10": 0.8, "val_group_auc": auc, "seconds": 60.0,
                "baselines": {"ctr_popularity": 0.6, "popularity": 0.58},
                "new_items": {"candidate_share": 0.302, "click_share": 0.301, "model": split,
                              "baselines": {"ctr_popularity": {"known": {"group_auc": 0.63}, "new": {"group_auc": 0.5}},
                                            "popularity": {"known": {"group_auc": 0.61}}}},
                "explanation_faithfulness": 3.0, "explanation_category_match": 0.4,
                "explanation_category_match_random": 0.2}

    runs = [run(0, 0.63), run(1, 0.64)]
    row = {"dataset": "ml-100k-new", "variant": "+ baseline start (default)", "runs": runs, **_summary(runs)}
    text = markdown({"config": {"seeds": [0, 1]}, "rows": [row]})
    assert "**ml-100k-new**: 30.2 % of test candidates new (30.1 % of clicks)" in text
    assert "| baseline: ctr popularity | 0.6000 | 0.6300 | - | 0.5000 |" in text
    assert ("| + baseline start (default) | **0.6350 ± 0.0071** | 0.6450 ± 0.0071 | 0.6150 ± 0.0071 | "
            "0.5500 ± 0.0000 |") in text
    assert "+0.0350 vs ctr popularity" in text
