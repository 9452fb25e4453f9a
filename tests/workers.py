"""CPU threads one test process may use.

`make test` runs two pytest-xdist workers on a 2-core machine. A worker that asks torch or ONNX Runtime for two
threads while the other worker computes waits on its own spinning threads: one `genrec evaluate` of the tiny dev
split took 17.3 s at 2 threads against 11.1 s at 1 with the other core busy (11-29, this machine). Alone (plain
`pytest`) a test may use both cores.
"""

from __future__ import annotations

import os

UNDER_XDIST = bool(os.environ.get("PYTEST_XDIST_WORKER"))
THREADS = 1 if UNDER_XDIST else 2
