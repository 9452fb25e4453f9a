"""The poller behind live statistics and the live index: it checks on its interval, survives a failing
check, and stops on close."""

from __future__ import annotations

import threading
import time

from genrec.core.refresh import Refresher


def test_refresher_checks_survives_failures_and_stops():
    calls, messages = [], []
    twice = threading.Event()

    def check() -> bool:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError("folder vanished")          # the first check fails: the poller must go on
        if len(calls) >= 3:
            twice.set()
        return True

    r = Refresher(check, 10, what="item index", log=messages.append)
    assert twice.wait(5), "the poller stopped after a failing check"
    r.close()
    n = len(calls)
    time.sleep(0.1)
    assert len(calls) == n                            # closed: no more checks
    assert messages[0] == "item index refresh failed: OSError('folder vanished')"


def test_zero_interval_never_starts_a_thread():
    before = threading.active_count()
    r = Refresher(lambda: True, 0, what="item statistics", log=print)
    assert r._thread is None and threading.active_count() == before
    r.close()
