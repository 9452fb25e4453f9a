"""A daemon thread that re-checks a served folder on an interval: live item statistics and the live index."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Refresher:
    """Calls ``check`` every ``refresh_ms`` until :meth:`close`; 0 = never (callers check by hand).

    A failing check is logged and the thread goes on: the poller must outlive any folder state.
    """

    def __init__(self, check: Callable[[], bool], refresh_ms: int, *, what: str, log: Callable[[str], None]):
        self.check, self.refresh_ms, self.what, self.log = check, refresh_ms, what, log
        self._stop = threading.Event()
        self._thread = None
        if refresh_ms > 0:
            self._thread = threading.Thread(target=self._run, name=f"genrec-refresh-{what.replace(' ', '-')}",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_ms / 1000.0):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the poller must outlive any folder state
                self.log(f"{self.what} refresh failed: {exc!r}")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
