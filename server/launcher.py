"""Start the real ``tritonserver`` (Triton 2.51, shipped inside the nvidia-pytriton wheel) from pip alone.

What the launcher takes care of (see the platform notes in the README):
1. copies the python-backend stub for the running Python into ``<backends>/python/`` (the only place the
   backend looks for it);
2. ``--backend-directory`` pointing at the wheel's backends;
3. ``PATH`` with this environment's ``bin`` first: the stub finds its Python environment only through PATH;
4. numpy < 2 in that environment (numpy 2 breaks BYTES inputs in the stub): checked, refused otherwise;
5. ``LD_LIBRARY_PATH`` with the wheel's ``nvidia_pytriton.libs`` and this Python's libpython;
6. a per-server python-backend shared-memory prefix, so stale ``/dev/shm`` regions it owns can be removed.

``running_server(repo)`` is the one context manager tests, benchmarks and the demo use: free ports,
readiness wait with timeout, a clear error with the server log tail, clean stop.

Supervision (``genrec serve`` always, ``running_server(..., supervised=True)`` on request): Triton 2.51's python
backend does not restart a stub that died. The server and the model stay READY while every request through
that model fails with INTERNAL "Stub process 'encoder_0_0' is not healthy." (measured), so readiness probes
cannot see it. ``supervise`` watches the server process and its stub processes and restarts the server on the
same ports when either dies.

Exposure (issue 27.5): every socket binds loopback unless ``--host`` says otherwise. Triton's administrative
APIs -- shared-memory registration (a client that registers a /dev/shm region makes the server read and write
it), model repository control, trace and log settings -- are restricted on gRPC and HTTP behind a header only
``--admin-key`` opens (default: a random key per start, i.e. closed). With TLS on gRPC, HTTP cannot be secured
(Triton 2.51's HTTP has no TLS): it then answers only health (live/ready, for probes and this launcher), every
other HTTP API, inference first, is refused. Per-model visibility does not exist in Triton (``inference`` is
one API for all models), so the composing models stay callable; they validate their inputs themselves.

Signals (27.11): ``serve_forever`` answers SIGINT/SIGTERM at once, also while the server is still loading
(``launch``) or being restarted: the start is abandoned and the server stopped; a second signal kills it
without waiting for in-flight requests.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from genrec.core.errors import UserError

SHM_DIR = Path("/dev/shm")
STUB_BINARY = "triton_python_backend_stub"


class ServerError(UserError, RuntimeError):
    """tritonserver failed to start, become ready, or stop; the message carries its log tail."""


class PortInUse(ServerError):
    """A port tritonserver was told to bind is taken (e.g. by another process between probe and bind)."""

    def __init__(self, service: str, address: str, log_tail: str):
        self.service, self.address = service, address
        flag = {"GRPC": "--grpc-port", "HTTP": "--http-port", "Metrics": "--metrics-port"}.get(service, "the port")
        super().__init__(f"tritonserver could not bind its {service} port: {address} is already in use by another "
                         f"process; free it or choose another with {flag} (0 = any free port)\n{log_tail}")


# tritonserver's own words when a bind fails, e.g.
# "failed to start GRPC service: Unavailable - Socket '127.0.0.1:8001' already in use"
_BIND_FAILED = re.compile(r"failed to start (\w+) service: .*?Socket '([^']+)' already in use")
# ports probed free can be taken before tritonserver binds them; automatic ports are re-drawn this often
PORT_ATTEMPTS = 3
# Triton's restricted-API groups (--grpc-restricted-protocol / --http-restricted-api, 2.51)
ADMIN_APIS = ("shared-memory", "model-repository", "trace", "logging")
ALL_APIS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
            "trace", "logging")
_PENDING = re.compile(r"^nv_inference_pending_request_count\{[^}]*\} (\S+)$", re.M)
_COMPLETED = re.compile(r"^nv_inference_request_(?:success|failure)\{[^}]*\} (\S+)$", re.M)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
DRAIN_QUIET_S = 1.0          # a server this long without queued, completed or executing requests is drained
DRAIN_IDLE_CPU_S = 0.05      # stub CPU seconds per quiet window that still count as idle (health checks)
ADMIN_HEADER = "genrec-admin"              # HTTP header name; gRPC clients send triton-grpc-protocol-genrec-admin
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"


class LaunchAborted(ServerError):
    """The launch or restart was abandoned because the caller asked to stop (a signal)."""


@dataclasses.dataclass
class ServerConfig:
    host: str = dataclasses.field(default="127.0.0.1", metadata={
        "help": "bind address for HTTP, gRPC and metrics; loopback unless you mean to expose it"})
    grpc_port: int = dataclasses.field(default=8001, metadata={"help": "gRPC port (0 = any free port)"})
    http_port: int = dataclasses.field(default=8000, metadata={"help": "HTTP/REST port (0 = any free port)"})
    metrics_port: int = dataclasses.field(default=8002, metadata={"help": "Prometheus metrics port (0 = any free)"})
    ready_timeout_s: float = dataclasses.field(default=180.0, metadata={
        "help": "seconds to wait for every model to load before giving up"})
    exit_timeout_s: int = dataclasses.field(default=10, metadata={
        "help": "seconds Triton waits for in-flight requests on shutdown"})
    log_verbose: int = dataclasses.field(default=0, metadata={"help": "Triton --log-verbose level"})
    grpc_ssl_cert: str = dataclasses.field(default="", metadata={
        "help": "PEM server certificate: enables TLS on gRPC (with --grpc-ssl-key)"})
    grpc_ssl_key: str = dataclasses.field(default="", metadata={"help": "PEM private key of --grpc-ssl-cert"})
    grpc_ssl_root_cert: str = dataclasses.field(default="", metadata={
        "help": "PEM CA bundle for mutual TLS (clients must present a certificate it signed)"})
    log_file: str = dataclasses.field(default="", metadata={
        "help": "where the server log goes (default: a temporary file, printed on failure)"})
    grpc_max_connection_age_ms: int = dataclasses.field(default=0, metadata={
        "help": "close each gRPC client connection after this many ms (in-flight calls get half as long again to "
                "finish): clients balancing over a DNS name of several replicas re-resolve it then and find new "
                "ones (0 = connections live on)"})
    admin_key: str = dataclasses.field(default="", metadata={
        "help": "value of the header that opens Triton's administrative APIs (shared-memory registration, model "
                "repository, trace and log settings), closed otherwise: gRPC metadata "
                f"{GRPC_ADMIN_HEADER}, HTTP header {ADMIN_HEADER} (HTTP only without TLS). Empty = a random key per "
                "start (closed). It is on tritonserver's command line: visible to local users of the machine"})
    max_restarts: int = dataclasses.field(default=5, metadata={
        "help": "restarts within 10 minutes when tritonserver exits or a python-backend stub dies (Triton 2.51 "
                "never restarts a dead stub); then the supervisor gives up (0 = never restart)"})


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"package {name!r} is not installed; install genrec[serve] (nvidia-pytriton==0.7.0)")
    return Path(next(iter(spec.submodule_search_locations)))


def triton_home() -> Path:
    """The Triton installation: nvidia-pytriton's, or GENREC_TRITON_HOME's (the NGC image's /opt/tritonserver)."""
    explicit = os.environ.get("GENREC_TRITON_HOME")
    return Path(explicit) if explicit else _package_dir("pytriton") / "tritonserver"


_SPAWNER = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrec-tritonserver-spawner")


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """preexec_fn for tritonserver: SIGTERM it when the launcher dies, however it dies (SIGKILL, OOM kill).

    It runs in a new session (so a terminal's Ctrl-C reaches only the launcher, which stops it gracefully),
    and Linux's parent-death signal ends it, and with it its stubs, when the launcher is gone. The signal
    follows the *thread* that forked, so every server is spawned from :data:`_SPAWNER`'s one thread, which
    lives as long as the process (a server started from a short-lived thread would die with that thread).
    Without it a killed launcher left an orphan serving on the ports. None where prctl does not exist.
    """
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)                 # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent_pid:                # the launcher died before prctl took effect
            os._exit(1)
    return preexec


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host != "0.0.0.0" else "127.0.0.1", 0))
        return s.getsockname()[1]


def _child_pids(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (Triton launches stubs from its model-loading threads)."""
    out = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in children.read_text().split()]
    return out


def stub_processes(server_pid: int) -> dict[int, str]:
    """Live python-backend stubs of the tritonserver ``server_pid``: pid -> model instance name (``encoder_0_0``)."""
    stubs = {}
    for pid in _child_pids(server_pid):
        cmd = _cmdline(pid)
        if cmd and Path(cmd[0]).name == STUB_BINARY:
            stubs[pid] = cmd[-2]          # ... <ipc handle> <instance name> <runtime modeldir>
    return stubs


def _cmdline(pid: int) -> list[str]:
    """A process's arguments; empty for a zombie (a stub Triton never reaps) or a process that is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def prepare_environment() -> tuple[Path, Path, dict[str, str]]:
    """(tritonserver binary, backends dir, environment) with the python stub in place."""
    home = triton_home()
    binary = home / "bin" / "tritonserver"
    backends = home / "backends"
    if not binary.is_file():
        raise ServerError(f"{binary} not found: the nvidia-pytriton wheel is incomplete")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub_src = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    stub_dst = backends / "python" / "triton_python_backend_stub"
    if not stub_src.is_file():
        if not stub_dst.is_file():          # an installation with its stub in place (NGC) passes
            raise ServerError(f"no python-backend stub for Python {version} in {stub_src.parent.parent}")
    elif not stub_dst.is_file() or stub_dst.stat().st_size != stub_src.stat().st_size:
        tmp = stub_dst.with_name(f".stub.{os.getpid()}")
        shutil.copy2(stub_src, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, stub_dst)           # atomic: concurrent launchers never see half a file
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise ServerError(f"numpy {numpy.__version__} in {sys.prefix}: the Triton python-backend stub needs numpy<2 "
                          "(BYTES inputs fail and INT64 outputs come back empty with numpy 2)")
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    libs = [str(Path(sysconfig.get_config_var("LIBDIR") or "")), str(home.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_NUM_THREADS", "1")     # ORT sizes its own pools; keep stray OpenMP pools small
    check_stub(stub_dst, env)
    return binary, backends, env


_STUBS_CHECKED: set[tuple[str, str]] = set()


def check_stub(stub: Path, env: dict[str, str]) -> None:
    """Refuse, with the loader's own words, a python-backend stub that cannot start.

    Triton's python backend runs the stub without arguments before each model instance and expects exit status 1
    (its usage error). Any other status it takes for a missing execute bit and chmods the stub, which fails on a
    read-only root filesystem or for a non-owner, so the real cause (e.g. libpython3.11.so.1.0 missing: Debian's
    python3 does not depend on it) shows only as "Failed to give execute permission to triton_python_backend_stub"
    for every model. Checked once per stub and environment."""
    key = (str(stub), env.get("LD_LIBRARY_PATH", ""))
    if key in _STUBS_CHECKED:
        return
    try:
        ran = subprocess.run([str(stub)], env=env, capture_output=True, text=True, timeout=30)
    except OSError as err:
        raise ServerError(f"the python-backend stub {stub} cannot be run: {err}") from None
    if ran.returncode != 1:
        words = (ran.stderr or ran.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ServerError(f"the python-backend stub {stub} cannot start (exit status {ran.returncode}, Triton "
                          f"expects 1): {words[0]}")
    _STUBS_CHECKED.add(key)


class TritonServer:
    """One tritonserver process on a model repository."""

    def __init__(self, repository: str | Path, cfg: ServerConfig = ServerConfig()):
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist")
        self._asked = cfg                             # 0 ports in here are drawn again if taken at bind time
        self.cfg = self._draw_ports(cfg)
        self.shm_prefix = f"genrec-{uuid.uuid4().hex[:12]}-"
        self.proc: subprocess.Popen | None = None
        self.admin_key = cfg.admin_key or secrets.token_urlsafe(24)     # opens the administrative APIs
        self.should_stop: Callable[[], bool] = lambda: False   # checked while waiting: abandons a launch/restart
        self.stubs: dict[int, str] = {}               # stubs seen at readiness: pid -> model instance name
        self.restarts: list[tuple[float, str]] = []   # (time.monotonic(), why) of each supervised restart
        self._own_log = not cfg.log_file
        if cfg.log_file:
            self.log_path = Path(cfg.log_file)
        else:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)                              # only the name is needed; start() opens it for the child
            self.log_path = Path(name)

    @staticmethod
    def _draw_ports(cfg: ServerConfig) -> ServerConfig:
        """Free ports for the automatic (0) ones, distinct from each other and the given ones: probing one at a time
        can return a port twice (seen: "cannot listen to HTTP requests and GRPC requests at the same address")."""
        taken = {cfg.grpc_port, cfg.http_port, cfg.metrics_port} - {0}
        ports = {}
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(cfg, name)
            while not port or (port in taken and not getattr(cfg, name)):
                port = _free_port(cfg.host)
            taken.add(port)
            ports[name] = port
        return dataclasses.replace(cfg, **ports)

    # ---- addresses ------------------------------------------------------------------------------
    @property
    def _connect_host(self) -> str:
        return "127.0.0.1" if self.cfg.host in ("0.0.0.0", "::") else self.cfg.host

    @property
    def grpc_url(self) -> str:
        return f"{self._connect_host}:{self.cfg.grpc_port}"

    @property
    def tls(self) -> bool:
        return bool(self.cfg.grpc_ssl_cert or self.cfg.grpc_ssl_key)

    @property
    def http_url(self) -> str:
        return f"http://{self._connect_host}:{self.cfg.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._connect_host}:{self.cfg.metrics_port}/metrics"

    # ---- lifecycle ------------------------------------------------------------------------------
    def command(self, binary: Path, backends: Path) -> list[str]:
        c = self.cfg
        cmd = [str(binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
               "--model-control-mode=none", "--strict-readiness=true",
               f"--http-address={c.host}", f"--http-port={c.http_port}",
               f"--grpc-address={c.host}", f"--grpc-port={c.grpc_port}",
               f"--metrics-address={c.host}", f"--metrics-port={c.metrics_port}",
               "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
               "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
               f"--exit-timeout-secs={c.exit_timeout_s}", f"--log-verbose={c.log_verbose}",
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]
        if c.grpc_max_connection_age_ms > 0:
            cmd += [f"--grpc-max-connection-age={c.grpc_max_connection_age_ms}",
                    f"--grpc-max-connection-age-grace={c.grpc_max_connection_age_ms // 2}"]
        if self.tls:
            if not (c.grpc_ssl_cert and c.grpc_ssl_key):
                raise ServerError("TLS needs both --grpc-ssl-cert and --grpc-ssl-key")
            for flag in ("grpc_ssl_cert", "grpc_ssl_key", "grpc_ssl_root_cert"):
                path = getattr(c, flag)
                if path and not Path(path).is_file():
                    raise ServerError(f"--{flag.replace('_', '-')} {path}: no such file")
            cmd += ["--grpc-use-ssl=true", f"--grpc-server-cert={c.grpc_ssl_cert}",
                    f"--grpc-server-key={c.grpc_ssl_key}"]
            if c.grpc_ssl_root_cert:
                cmd += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={c.grpc_ssl_root_cert}"]
        return cmd + self.restriction_flags()

    def restriction_flags(self) -> list[str]:
        """Triton's restricted APIs: the administrative ones behind the admin key on both protocols; with TLS,
        every HTTP API but health behind a key nobody has (plaintext HTTP must not serve inference)."""
        grpc = f"--grpc-restricted-protocol={','.join(ADMIN_APIS)}:{ADMIN_HEADER}={self.admin_key}"
        if self.tls:
            closed = [api for api in ALL_APIS if api != "health"]
            http = f"--http-restricted-api={','.join(closed)}:{ADMIN_HEADER}={secrets.token_urlsafe(24)}"
        else:
            http = f"--http-restricted-api={','.join(ADMIN_APIS)}:{ADMIN_HEADER}={self.admin_key}"
        return [grpc, http]

    def start(self) -> TritonServer:
        if self.proc is not None and self.proc.poll() is None:
            raise ServerError("server already running")
        binary, backends, env = prepare_environment()
        log = open(self.log_path, "ab")
        try:
            # spawned from one long-lived thread: the parent-death signal follows the thread that forked
            self.proc = _SPAWNER.submit(subprocess.Popen, self.command(binary, backends), stdout=log,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                        preexec_fn=_die_with_parent(os.getpid())).result()
        finally:
            log.close()
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, timeout_s: float | None = None) -> TritonServer:
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.cfg.ready_timeout_s)
        while time.monotonic() < deadline:
            if self.should_stop():
                self.stop(timeout_s=5)                   # loading models: no requests to finish
                raise LaunchAborted("stopped before tritonserver was ready")
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                self.stop(timeout_s=0)                   # its stubs may still be loading
                bind = _BIND_FAILED.search(self.log_tail(400))
                if bind:
                    raise PortInUse(bind.group(1), bind.group(2), self.log_tail())
                raise ServerError(f"tritonserver exited with code {code} before it was ready\n{self.log_tail()}")
            if self.is_ready():
                self.stubs = self.stub_processes()
                return self
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"tritonserver was not ready after {timeout_s or self.cfg.ready_timeout_s:.0f}s\n"
                          f"{self.log_tail()}")

    def launch(self) -> TritonServer:
        """Start and wait until ready. A port taken between probe and bind is drawn again when it was
        automatic (port 0), up to ``PORT_ATTEMPTS`` times; a taken explicit port is ``PortInUse`` at once."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return self.start().wait_ready()
            except PortInUse as err:
                automatic = {"GRPC": self._asked.grpc_port, "HTTP": self._asked.http_port,
                             "Metrics": self._asked.metrics_port}.get(err.service) == 0
                if not automatic or attempt == PORT_ATTEMPTS:
                    raise
                self.cfg = self._draw_ports(self._asked)
        raise AssertionError("unreachable")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful: in-flight requests finish), SIGKILL after ``timeout_s``; remove owned shm.
        ``timeout_s`` <= 0: SIGKILL alone. A SIGTERM first, however short the wait after it, starts Triton's graceful
        shutdown, which unloads the models: a request arriving before the SIGKILL lands is answered NOT_FOUND "has no
        available versions" (seen under load in the fault test), not the UNAVAILABLE a client retries."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None and timeout_s > 0:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)       # the server itself; it stops its stubs
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout_s)
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(10)
            code = self.proc.returncode
            # stubs left behind by a crash or a kill share the server's process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.remove_stale_shm()
        return code

    def restart(self, why: str) -> TritonServer:
        """Kill and start again on the same ports. No grace period: the server is broken (requests through a
        dead stub fail anyway), and a hard stop gives clients UNAVAILABLE, which they retry, instead of the
        NOT_FOUND "has no available versions" a graceful stop answers while it unloads models."""
        self.restarts.append((time.monotonic(), why))
        self.stop(timeout_s=0)
        return self.start().wait_ready()

    # ---- python-backend stubs -------------------------------------------------------------------
    def stub_processes(self) -> dict[int, str]:
        """Live python-backend stubs of this server: pid -> model instance name (e.g. ``encoder_0_0``)."""
        return {} if self.proc is None else stub_processes(self.proc.pid)

    def failure(self) -> str | None:
        """Why this server cannot serve any more (its process or one of its stubs died), or None."""
        if self.proc is None or self.proc.poll() is not None:
            return f"tritonserver exited with code {None if self.proc is None else self.proc.returncode}"
        alive = self.stub_processes()
        dead = sorted(name for pid, name in self.stubs.items() if pid not in alive)
        return f"python-backend stub {', '.join(dead)} died" if dead else None

    def activity(self) -> tuple[float, float, float] | None:
        """What changes while a request is inside the server: requests queued at any model (Triton's pending
        gauge), requests completed by any model (success + failure counters), the python stubs' CPU seconds (a
        request executing in a stub). None when the metrics cannot be read (the server is gone)."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as r:
                text = r.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return None
        pending = sum(float(v) for v in _PENDING.findall(text))
        done = sum(float(v) for v in _COMPLETED.findall(text))
        cpu = 0.0
        for pid in self.stub_processes():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS        # utime + stime
        return pending, done, cpu

    def drain(self, timeout_s: float, *, should_abort: Callable[[], bool] = lambda: False,
              quiet_s: float = DRAIN_QUIET_S, interval_s: float = 0.1) -> bool:
        """Serve on until no request is in the server (nothing queued, nothing completed and the stubs idle for
        ``quiet_s``), at most ``timeout_s``; True when it went quiet. Needed because Triton 2.51's graceful stop
        makes every model refuse new requests at once, the next steps of an ensemble request already in flight
        included (triton-inference-server/server#6287): stopped while busy, in-flight requests fail UNAVAILABLE.
        Behind a Kubernetes Service new requests stop coming once the pod is terminating."""
        deadline = time.monotonic() + timeout_s
        ref, since = None, time.monotonic()
        while time.monotonic() < deadline and not should_abort():
            snap = self.activity()
            if snap is None:
                return True                                   # nothing left to drain
            now = time.monotonic()
            if ref is None or snap[0] > 0 or snap[1] != ref[1] or snap[2] - ref[2] > DRAIN_IDLE_CPU_S:
                ref, since = snap, now
            elif now - since >= quiet_s:
                return True
            time.sleep(interval_s)
        return False

    def remove_stale_shm(self) -> int:
        n = 0
        for p in SHM_DIR.glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
        return n

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "--- tritonserver log (tail) ---\n" + "\n".join(text[-lines:])

    def cleanup_log(self) -> None:
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> TritonServer:
        return self.launch()

    def __exit__(self, *exc) -> None:
        self.stop()


def supervise(server: TritonServer, should_stop: Callable[[], bool], *, interval_s: float = 0.5,
              window_s: float = 600.0, out: Callable[[str], None] = print) -> bool:
    """Restart ``server`` whenever it fails, until ``should_stop()`` (then True). False when it fails again
    after ``cfg.max_restarts`` restarts within ``window_s``: the caller gives up. A restart that fails (the new
    server crashes before it is ready: seen as a SIGSEGV while a killed stub's shared memory was still being
    torn down on a loaded machine) is one of those restarts, tried again after ``interval_s``, not the end."""
    while not should_stop():
        why = server.failure()
        if why is not None:
            now = time.monotonic()
            recent = sum(now - t < window_s for t, _ in server.restarts)
            if recent >= server.cfg.max_restarts:
                out(f"{why}; {recent} restarts in the last {window_s:.0f}s: giving up\n{server.log_tail()}")
                return False
            out(f"{why}: restarting tritonserver")
            try:
                server.restart(why)
            except LaunchAborted:
                break
            except ServerError as err:
                out(f"restart {len(server.restarts)} failed: {err}")
            else:
                out(f"tritonserver ready again (restart {len(server.restarts)})")
        time.sleep(interval_s)
    return True


@contextlib.contextmanager
def running_server(repository: str | Path, cfg: ServerConfig | None = None, *, supervised: bool = False,
                   **overrides) -> Iterator[TritonServer]:
    """A ready tritonserver on ``repository``; ports default to free ones. Stops it on exit.

    ``supervised``: a background thread restarts it when it or a python-backend stub dies (``server.restarts``
    says when and why)."""
    base = cfg or ServerConfig(grpc_port=0, http_port=0, metrics_port=0)
    server = TritonServer(repository, dataclasses.replace(base, **overrides))
    stop = threading.Event()
    watcher: threading.Thread | None = None
    try:
        server.launch()
        if supervised:
            watcher = threading.Thread(target=supervise, args=(server, stop.is_set), daemon=True,
                                       kwargs={"out": lambda m: print(f"[supervisor] {m}", file=sys.stderr)})
            watcher.start()
        yield server
    finally:
        stop.set()
        if watcher is not None:
            watcher.join()
        server.stop()
        server.cleanup_log()


def serve_forever(repository: str | Path, cfg: ServerConfig, *, out=print) -> int:
    """Foreground server for ``genrec serve``: ready, supervised (restarted when it or a python-backend stub
    dies, up to ``cfg.max_restarts`` times in 10 minutes), until SIGINT/SIGTERM; then a clean stop (exit 0).

    A signal is answered at once in every phase: while the server loads or restarts, the start is abandoned;
    while it serves, in-flight requests finish (up to ``exit_timeout_s``). A second signal kills tritonserver
    and its stubs immediately (exit 128 + the signal)."""
    state: dict[str, object] = {"signal": None, "forced": None}

    def handle(signum, _frame):
        if state["signal"] is None:
            state["signal"] = signum                     # the loops poll this: a launch is abandoned too
            return
        state["forced"] = signum                         # the second one: no more waiting
        if server.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.proc.pid, signal.SIGKILL)

    server = TritonServer(repository, cfg)          # a missing repository: the CLI's one-line user error
    stopping = lambda: state["signal"] is not None            # noqa: E731
    server.should_stop = stopping
    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.launch()
        except LaunchAborted:
            out(f"received {signal.Signals(state['signal']).name} while starting: stopped before it was ready")
            return _exit_code(state)
        out(f"tritonserver ready: gRPC {server.grpc_url}  HTTP {server.http_url}  metrics {server.metrics_url}\n"
            f"log: {server.log_path}  (Ctrl-C to stop; twice to stop at once)")
        if not supervise(server, stopping, out=out):
            return 1
        out(f"received {signal.Signals(state['signal']).name}: stopping (in-flight requests finish first; "
            "a second signal stops at once)")
        # serve until nothing is in flight, then Triton's own stop (which fails an ensemble caught mid-way)
        started = time.monotonic()
        quiet = server.drain(cfg.exit_timeout_s, should_abort=lambda: state["forced"] is not None)
        took = time.monotonic() - started
        if state["forced"] is None:
            out(f"drained in {took:.1f} s" if quiet else
                f"still busy after {took:.0f} s (--exit-timeout-s): stopping with requests in flight")
        code = server.stop(timeout_s=max(5.0, cfg.exit_timeout_s - took))
        out(f"stopped (exit code {code})" if state["forced"] is None else
            f"received {signal.Signals(state['forced']).name} again: killed (exit code {code})")
        return _exit_code(state)
    except ServerError as err:
        out(str(err))
        return 1
    finally:
        server.stop(timeout_s=0 if state["forced"] is not None else 30.0)
        for s, h in old.items():
            signal.signal(s, h)


def _exit_code(state: dict[str, object]) -> int:
    forced = state["forced"]
    return 0 if forced is None else 128 + int(forced)
