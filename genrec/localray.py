"""A real Ray cluster on this machine, for the tests, the benchmark (benchmarks/index_build.py) and trying
``--ray`` on one box: a head and worker nodes, each a ``ray start --block`` process of its own.

Each node runs in its own process session, so stopping it (SIGTERM, then SIGKILL of its process group) ends
exactly the processes it started (GCS, raylet, workers) and nothing else of the machine's. Used as a context
manager: the nodes go whatever happens inside.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
OBJECT_STORE_BYTES = 80 * 2**20          # Ray's minimum is 75 MiB; chunks of vectors are small


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    """``workers`` worker nodes of ``cpus_per_node`` CPUs each, and a head with no CPUs (so every actor lands on
    a worker node, as on a real cluster whose head only coordinates)."""

    def __init__(self, workers: int = 2, cpus_per_node: int = 1, start_timeout_s: float = 60.0):
        self.workers, self.cpus_per_node, self.start_timeout_s = workers, cpus_per_node, start_timeout_s
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # short: Ray's unix socket paths live under it (107 characters at most)
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        self.nodes: list[subprocess.Popen] = []
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", TOKENIZERS_PARALLELISM="false",
                        OMP_NUM_THREADS="1", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
        self.env["PATH"] = f"{RAY.parent}{os.pathsep}{self.env.get('PATH', '')}"

    def _node(self, *args: str) -> None:
        log = open(Path(self.temp_dir) / f"node-{len(self.nodes)}.log", "wb")
        try:
            self.nodes.append(subprocess.Popen(
                [str(RAY), "start", "--block", "--disable-usage-stats", f"--object-store-memory={OBJECT_STORE_BYTES}",
                 *args], stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True))
        finally:
            log.close()

    def cpus(self) -> int:
        """CPUs the cluster reports (a node counts once its raylet registered), read by a short-lived driver."""
        code = (f"import ray,logging; ray.init(address={self.address!r}, logging_level=logging.ERROR, "
                "log_to_driver=False); print(int(ray.cluster_resources().get('CPU', 0)))")
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                                 env=self.env)
        except subprocess.TimeoutExpired:
            return -1
        return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else -1

    def _wait(self, cpus: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while self.cpus() != cpus:
            dead = [p.args for p in self.nodes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"node exited: {dead}" if dead else "timeout"
                raise RuntimeError(f"local Ray cluster did not reach {cpus} CPUs ({why})\n{self.log_tail()}")
            time.sleep(0.5)

    def start(self) -> LocalRayCluster:
        self._node("--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                   f"--temp-dir={self.temp_dir}", "--node-ip-address=127.0.0.1")
        self._wait(0)
        for i in range(self.workers):            # one at a time: two raylets registering at once race for names
            self._node(f"--address={self.address}", f"--num-cpus={self.cpus_per_node}",
                       "--node-ip-address=127.0.0.1")
            self._wait((i + 1) * self.cpus_per_node)
        return self

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in sorted(Path(self.temp_dir).glob("node-*.log")):
            with contextlib.suppress(OSError):
                out.append(f"--- {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def stop(self) -> None:
        """SIGTERM to each node's `ray start` (it stops the processes it started), SIGKILL of what is left of its
        process group after 10 s."""
        for proc in reversed(self.nodes):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.nodes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in self.nodes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)         # whatever of its session is left (workers, GCS)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
