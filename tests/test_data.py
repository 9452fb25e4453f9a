from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from genrec.core.mind import MAX_HISTORY, MindFormatError, iter_behaviors, iter_news, load_split
from genrec.data.synth import SynthConfig, synthesize

NEWS = (
    "N1\tsports\tsoccer\tGoal in the last minute\tA late winner.\thttp://x\t[]\t[]\n"
    "N2\tfinance\tmarkets\tStocks rally\t\thttp://x\t[]\t[]\n"          # empty abstract
    "N3\tnews\tpolitics\tSenate votes\n"                                 # short line: title, no abstract
)


def write(tmp_path: Path, news: str, behaviors: str) -> Path:
    (tmp_path / "news.tsv").write_text(news)
    (tmp_path / "behaviors.tsv").write_text(behaviors)
    return tmp_path


def test_news_fields_and_empty_abstract(tmp_path):
    items = list(iter_news(write(tmp_path, NEWS, "") / "news.tsv"))
    assert [n.news_id for n in items] == ["N1", "N2", "N3"]
    assert items[1].abstract == "" and items[2].abstract == ""
    assert items[0].category == "sports" and items[0].subcategory == "soccer"


def test_behaviors_empty_history_labels_and_unlabelled(tmp_path):
    beh = ("1\tU1\t11/15/2019 8:55:22 AM\t\tN1-1 N2-0\n"
           "2\tU2\t11/15/2019 1:05:00 PM\tN1 N2\tN3-0 N1-1\n")
    imps = list(iter_behaviors(write(tmp_path, NEWS, beh) / "behaviors.tsv"))
    assert imps[0].history == () and imps[0].labels == (1, 0)
    assert imps[1].history == ("N1", "N2") and imps[1].candidates == ("N3", "N1")
    assert imps[1].time.hour == 13
    (tmp_path / "behaviors.tsv").write_text("7\tU9\t11/16/2019 9:00:00 AM\tN1\tN2 N3\n")
    test_imp = next(iter_behaviors(tmp_path / "behaviors.tsv"))
    assert test_imp.labels is None and test_imp.candidates == ("N2", "N3")


def test_history_cut_to_most_recent_50(tmp_path):
    hist = " ".join(f"N{i}" for i in range(1, 71))
    imp = next(iter_behaviors(write(tmp_path, NEWS, f"1\tU1\t11/15/2019 8:55:22 AM\t{hist}\tN1-1\n") / "behaviors.tsv"))
    assert len(imp.history) == MAX_HISTORY and imp.history[0] == "N21" and imp.history[-1] == "N70"
    assert imp.history_truncated == 20


@pytest.mark.parametrize("line, fragment", [
    ("1\tU1\t11/15/2019 8:55:22 AM\tN1\n", "expected 5 tab-separated fields"),
    ("1\tU1\tyesterday\tN1\tN1-1\n", "bad time 'yesterday'"),
    ("1\tU1\t11/15/2019 8:55:22 AM\tN1\t\n", "has no candidates"),
    ("1\tU1\t11/15/2019 8:55:22 AM\tN1\tN1-1 N2\n", "mixes labelled and unlabelled"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, fragment):
    path = write(tmp_path, NEWS, "1\tU1\t11/15/2019 8:55:22 AM\t\tN1-1\n" + line) / "behaviors.tsv"
    with pytest.raises(MindFormatError) as err:
        list(iter_behaviors(path))
    assert f"{path}:2:" in str(err.value) and fragment in str(err.value)


def test_skip_bad_lines_counts_and_reports(tmp_path):
    beh = "1\tU1\t11/15/2019 8:55:22 AM\t\tN1-1 N2-0\nbroken line\n3\tU3\t11/15/2019 8:55:22 AM\tN1\tN2-1 N3-0\n"
    split = load_split(write(tmp_path, NEWS + "bad\n", beh), skip_bad_lines=True)
    assert len(split.impressions) == 2 and len(split.news) == 3
    news_rep, beh_rep = split.reports
    assert (news_rep.skipped, beh_rep.skipped, beh_rep.read) == (1, 1, 2)
    assert "behaviors.tsv:2" in beh_rep.summary()


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="news.tsv"):
        load_split(tmp_path)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.tsv")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_synth_is_deterministic_and_seed_sensitive(tmp_path):
    cfg = SynthConfig(users=60, items=120, seed=3)
    synthesize(tmp_path / "a", cfg)
    synthesize(tmp_path / "b", cfg)
    synthesize(tmp_path / "c", SynthConfig(users=60, items=120, seed=4))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_synth_looks_like_mind(tiny_data):
    train = load_split(tiny_data / "train")
    dev = load_split(tiny_data / "dev")
    assert train.has_labels and dev.has_labels
    news = list(train.news.values())
    words = np.array([len(n.title.split()) for n in news])
    assert 10 <= np.median(words) <= 16
    assert len({n.category for n in news}) >= 15
    assert len({n.subcategory for n in news}) >= 60
    sizes = [len(i.candidates) for i in train.impressions]
    assert min(sizes) >= 1 and max(sizes) <= 300
    labels = np.concatenate([i.labels for i in train.impressions])
    assert 0.02 < labels.mean() < 0.10
    assert all(sum(i.labels) >= 1 for i in train.impressions)        # every impression has a click
    assert any(not i.history for i in train.impressions)               # cold users exist
    assert min(i.time for i in dev.impressions) > max(i.time for i in train.impressions)
