"""The CLI answers user mistakes with one `genrec: error:` line and a documented exit code, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from genrec.core.errors import EXIT_USER_ERROR


def genrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genrec.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, says", [
    (("train", "--data", "/nonexistent", "--out", "/tmp/genrec-never"), "/nonexistent/news.tsv not found"),
    (("evaluate", "--data", "/nonexistent", "--checkpoint", "/nonexistent"), "no checkpoint at /nonexistent"),
    (("serve", "--repository", "/nonexistent"), "/nonexistent does not exist"),
    (("stats", "build", "--behaviors", "/nonexistent", "--out", "/tmp/genrec-never"), "/nonexistent"),
])
def test_user_errors_are_one_line_without_traceback(args, says):
    out = genrec(*args)
    assert out.returncode == EXIT_USER_ERROR, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("genrec: error: ") and says in lines[-1]
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback():
    out = genrec("--debug", "evaluate", "--data", "/nonexistent", "--checkpoint", "/nonexistent")
    assert out.returncode != 0 and "Traceback" in out.stderr and "CheckpointError" in out.stderr
