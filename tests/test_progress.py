"""Progress bars written to a log are a few plain lines, not thousands of carriage-return redraws."""

from __future__ import annotations

import io

from genrec.core.progress import progress


def test_progress_off_a_terminal_writes_few_plain_lines():
    log = io.StringIO()
    bar = progress(range(2000), file=log, desc="epoch 1/8", unit="step", leave=False)
    for i in bar:
        bar.set_postfix(loss=f"{i:.4f}")
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and 1 <= len(lines) <= 3, lines            # the start, maybe one timed line, the end
    assert lines[-1].startswith("epoch 1/8: 100%") and "2000/2000" in lines[-1]
