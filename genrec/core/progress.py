"""Progress bars that suit where the output goes: tqdm on a terminal, a few plain lines in a log file.

tqdm redraws its bar with carriage returns many times a second; written to a file (``make demo > log``, CI)
that is thousands of updates on one line. Off a terminal, :func:`progress` prints a line at most every
``LOG_INTERVAL_S`` seconds and one when the bar closes.
"""

from __future__ import annotations

import sys
from typing import Any

LOG_INTERVAL_S = 30.0


class _Lines:
    """A tqdm output file that turns each redraw into one plain line (and drops the blank clears)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, **kwargs: Any):
    """``tqdm(iterable, **kwargs)`` on a terminal; off one, the same bar as occasional plain lines."""
    from tqdm import tqdm

    stream = kwargs.pop("file", sys.stderr)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, file=stream, **kwargs)
    class LogBar(tqdm):
        """Postfix updates wait for the next timed line instead of forcing one each."""

        def set_postfix(self, ordered_dict=None, refresh=True, **kw):
            super().set_postfix(ordered_dict, refresh=False, **kw)

        def set_postfix_str(self, s="", refresh=True):
            super().set_postfix_str(s, refresh=False)

    kwargs.update(file=_Lines(stream), mininterval=max(LOG_INTERVAL_S, kwargs.get("mininterval", 0.0)),
                  maxinterval=max(LOG_INTERVAL_S, kwargs.get("maxinterval", 0.0)), leave=True, ascii=True,
                  dynamic_ncols=False, ncols=100)
    return LogBar(iterable, **kwargs)
