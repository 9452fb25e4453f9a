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
