"""Console tables stay whole off a terminal (issue 29.4): in a log or a pipe nothing is cut at 80 columns."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from genrec.printing import plain_table, print_metrics, print_recommendations

LONG = "東京の新しいカフェが話題に 若者に人気のスイーツ店 ランキング 2024年版 完全ガイド and a café in Zürich"
BECAUSE = "Coach praises linebacker after victory in the championship game of the year, again"


def _recs():
    item = SimpleNamespace(score=1.234, tasks={"topic_affinity": 0.5}, category="lifestyle", text=LONG,
                           because=[SimpleNamespace(weight=0.31, text=BECAUSE),
                                    SimpleNamespace(weight=-0.02, text="Stocks rally")])
    cold = SimpleNamespace(score=0.2, tasks={}, category=None, text="Short one", because=[])
    return SimpleNamespace(model_name="genrec", model_version="1", latency_ms=12.3, items=[item, cold],
                           user_topics={"sports": 0.8})


def test_recommendations_in_a_log_keep_every_text_whole():
    code = (f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}]\n"
            "from test_printing import _recs\nfrom genrec.printing import print_recommendations\n"
            "print_recommendations(_recs(), title='a user with history')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"COLUMNS": "80", "PATH": ""}).stdout          # a pipe: what a log file gets
    lines = out.splitlines()
    assert any(f"[lifestyle] {LONG}" in ln for ln in lines), out           # not cut, not wrapped, no ellipsis
    assert any(f"+0.31  {BECAUSE}" in ln for ln in lines) and any("-0.02  Stocks rally" in ln for ln in lines)
    assert "…" not in out and not set("┏━┃│└─╇") & set(out), out
    header = next(ln for ln in lines if ln.lstrip().startswith("#"))
    row = next(ln for ln in lines if "[lifestyle]" in ln)
    # columns line up by display width (wide characters count two)
    assert header.index("because you read") == row.index("+0.31") + sum(
        1 for ch in row[:row.index("+0.31")] if "\u3000" <= ch <= "\u9fff" or "\u30a0" <= ch <= "\u30ff")


def test_plain_table_aligns_multiline_cells():
    text = plain_table("t", [("a", "right"), ("b", "left")], [["1", "x\ny"], ["22", "z"]])
    assert text.splitlines() == ["t", " a  b", "--  -", " 1  x", "    y", "22  z"]


def test_metrics_off_a_terminal_are_plain():
    buf = io.StringIO()
    print_metrics({"group_auc": 0.75123, "baselines": {"random": 0.5}}, file=buf)
    assert buf.getvalue().splitlines() == ["evaluation", "metric               value", "---------  ---------------",
                                           "group_auc           0.7512", "baselines  {'random': 0.5}"]


def test_a_terminal_still_gets_the_rich_table():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    buf = Tty()
    print_recommendations(_recs(), file=buf)
    assert "┃" in buf.getvalue() or "│" in buf.getvalue()
