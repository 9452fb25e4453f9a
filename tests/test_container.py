"""The serving image, built and run as an operator would (issue 29.3, issue 27.10).

`make test` checks that server/Containerfile and server/Dockerfile are rendered from server/image.py, that the
Kubernetes Deployment runs the image's supervised entrypoint, and that a python-backend stub that cannot start is
refused with the loader's words. `make test-container` sets GENREC_CONTAINER_TEST=1 and runs the rest against a
real container (podman + runc): it builds the CPU image from a Debian rootfs and this checkout's wheels, runs it
non-root on a read-only root filesystem, and checks health and readiness, a request on each path (text, ids,
retrieval), the stub starting as Triton expects (no chmod), a python-backend stub killed inside the container
(readiness red, the supervisor restarts the server, ready again), and SIGTERM with requests in flight. Figures
(image build, start to ready, restart, drain) are printed as `[measured]` lines. Where podman cannot run
containers on a machine, the tests skip and say exactly what failed.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from workers import THREADS

from genrec.server import image

ROOT = Path(__file__).resolve().parent.parent
ENABLED = os.environ.get("GENREC_CONTAINER_TEST") == "1"
GRACE_S = 40                   # the Deployment's terminationGracePeriodSeconds
# the image build, training the model and the SIGTERM test's second container take longer than the suite's
# 900 s per test on the loaded 2-core machine (the first test pays for the module's fixtures)
pytestmark = pytest.mark.timeout(2400)
N_DRAIN, N_TEXTS = 4, 200      # the SIGTERM test's in-flight requests and texts in each (50 history, 150 candidates)
# decided before any fixture is set up: the session's model (a session fixture) is built only when it is needed
needs_container = pytest.mark.skipif(
    not ENABLED, reason="the container itself is tested by `make test-container` (GENREC_CONTAINER_TEST=1)")


def test_image_files_are_rendered_from_the_description():
    assert image.stale() == [], "run `python -m genrec.server.image render`"
    cpu, gpu = (ROOT / "server" / "Containerfile").read_text(), (ROOT / "server" / "Dockerfile").read_text()
    for text in (cpu, gpu):
        assert image._json(image.IMAGE.entrypoint()) in text and f"USER {image.IMAGE.uid}:" in text
    assert "nvcr.io/nvidia/tritonserver:" in gpu and ":latest" not in gpu
    install = next(ln for ln in gpu.splitlines() if "pip install" in ln and "--no-deps" not in ln)
    assert "GENREC_TRITON_HOME=/opt/tritonserver" in gpu
    assert "onnxruntime" in install and "nvidia-pytriton" not in install


def test_kubernetes_runs_the_supervised_entrypoint():
    """The Deployment and the InferenceService leave the image's entrypoint (tini + genrec serve, the supervisor)
    in place: no `command:` that would start tritonserver bare, and args the launcher understands."""
    from genrec.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    known = {s for a in serve._actions for s in a.option_strings}
    for name in ("deployment.yaml", "kserve-inferenceservice.yaml"):
        for doc in yaml.safe_load_all((ROOT / "server" / "k8s" / name).read_text()):
            if not doc:
                continue
            spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else \
                doc["spec"]["predictor"] if doc["kind"] == "InferenceService" else None
            if spec is None:
                continue
            (container,) = spec["containers"]
            assert "command" not in container, f"{name}: a command replaces the supervised entrypoint"
            flags = [a.split("=")[0] for a in container.get("args", []) if a.startswith("--")]
            assert set(flags) <= known, f"{name}: {set(flags) - known} are not flags of genrec serve"
            assert container["image"].split("/")[-1].startswith(image.IMAGE.name)


def test_a_stub_that_cannot_start_is_refused_with_the_loaders_words(tmp_path):
    """What broke every model in the image (libpython3.11 missing) made Triton report a failed chmod; the launcher
    runs the stub as Triton does first and names the real cause. Here: an unloadable libpython first on the
    library path, on the host."""
    from genrec.server.launcher import ServerError, check_stub, prepare_environment

    _binary, backends, env = prepare_environment()
    stub = backends / "python" / "triton_python_backend_stub"
    check_stub(stub, env)                                          # the real one starts (exit 1: its usage error)
    (tmp_path / "libpython3.11.so.1.0").write_bytes(b"")
    broken = {**env, "LD_LIBRARY_PATH": f"{tmp_path}:{env['LD_LIBRARY_PATH']}"}
    with pytest.raises(ServerError, match=r"cannot start \(exit status 127.*libpython3\.11\.so\.1\.0"):
        check_stub(stub, broken)


# ---- the real container ------------------------------------------------------------------------------------

def measured(what: str, seconds: float) -> None:
    """One measured figure, printed (`make test-container` runs pytest with -s) for docs/containers.md."""
    print(f"\n[measured] {what}: {seconds:.1f} s", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    """podman with the Debian base image, or a skip that names the command that failed and its error."""
    missing = [tool for tool in ("podman", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make test-container installs them with apt-get)")
    work = ROOT / "build" / "image"
    env = image.podman_env(work)
    t0 = time.monotonic()
    try:
        if image.ensure_base(work, env):
            measured("base image (mmdebstrap rootfs + podman import)", time.monotonic() - t0)
    except subprocess.CalledProcessError as err:       # e.g. no Debian mirror, or mmdebstrap without root
        pytest.skip(f"the base image cannot be built here: `{' '.join(map(str, err.cmd))}` exited {err.returncode} "
                    "(its error is printed above)")
    probe = ["podman", "run", "--rm", "--pull=never", image.BASE, "/bin/true"]
    ran = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120)
    if ran.returncode != 0:
        pytest.skip(f"containers cannot run here: `{' '.join(probe)}` exited {ran.returncode}: {ran.stderr.strip()}")
    return work, env


@pytest.fixture(scope="module")
def container_artifacts(tiny_data, tmp_path_factory):
    """A model of its own, FP32 only, one epoch: what the image serves needs no quality, and the session's model
    (4 epochs, three precisions gated) took the whole 900 s test timeout alone on the loaded 2-core machine."""
    from genrec.config import ModelConfig, TrainConfig
    from genrec.export import Artifacts, ExportConfig, export
    from genrec.train import train

    run, out = tmp_path_factory.mktemp("container-run"), tmp_path_factory.mktemp("container-artifacts")
    train(tiny_data / "train", run, ModelConfig(), TrainConfig(threads=THREADS, epochs=1), progress=False,
          log=lambda _m: None)
    export(run, out, ExportConfig(precision=("fp32",), latency=False, threads=THREADS), log=lambda _m: None)
    return Artifacts.load(out)


@pytest.fixture(scope="module")
def container_index(container_artifacts, tiny_data, tmp_path_factory):
    from genrec.core.index import IndexConfig, build_index
    from genrec.core.retrieval import RetrievalConfig, build_index_retrieval

    folder = build_index(tiny_data / "train" / "news.tsv", container_artifacts.root,
                         tmp_path_factory.mktemp("container-index") / "index",
                         IndexConfig(precision="fp32", threads=THREADS), progress=False, log=lambda _m: None)
    build_index_retrieval(folder, container_artifacts.root, RetrievalConfig(exact_below=0), log=lambda _m: None)
    return folder


@pytest.fixture(scope="module")
def built(podman, container_artifacts, container_index, item_stats_dir, tmp_path_factory):
    """The CPU image with a repository of the session's model (id path over an index with retrieval files)."""
    from genrec.model_repository.builder import RepositoryConfig, build_repository

    work, env = podman
    repo = build_repository(container_artifacts.root, tmp_path_factory.mktemp("container-repo") / "repo",
                            RepositoryConfig(precision="fp32", index=str(container_index), stats=str(item_stats_dir),
                                             recommend_instances=1))
    t0 = time.monotonic()
    tag = image.build(repo, work)
    measured("image build (wheels + podman build)", time.monotonic() - t0)
    return tag, env, [container_index, item_stats_dir]


class Container:
    def __init__(self, tag: str, env: dict[str, str], mounts: list[Path], extra: list[str] = ()):
        self.env, self.name = env, f"genrec-test-{uuid.uuid4().hex[:8]}"
        self.http, self.grpc, self.metrics = _free_port(), _free_port(), _free_port()
        img = image.IMAGE
        cmd = ["podman", "run", "-d", "--name", self.name, "--read-only", "--shm-size=256m",
               "-p", f"127.0.0.1:{self.http}:{img.http_port}", "-p", f"127.0.0.1:{self.grpc}:{img.grpc_port}",
               "-p", f"127.0.0.1:{self.metrics}:{img.metrics_port}"]
        for m in mounts:
            cmd += ["-v", f"{m}:{m}:ro"]
        subprocess.run([*cmd, *extra, tag], env=env, check=True, capture_output=True, text=True, timeout=120)

    def podman(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, check=check,
                              timeout=timeout)

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.podman("exec", self.name, *args, check=check)

    def logs(self) -> str:
        p = self.podman("logs", self.name, check=False)
        return p.stdout + p.stderr

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 180) -> float:
        """Seconds until /v2/health/ready answers 200 (every model loaded: --strict-readiness)."""
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            if self.status("/v2/health/ready") == 200:
                return time.monotonic() - start
            state = self.podman("inspect", "-f", "{{.State.Status}}", self.name, check=False).stdout.strip()
            if state in ("exited", "stopped"):
                break
            time.sleep(0.5)
        pytest.fail(f"the container was not ready in {timeout:.0f} s\n{self.logs()[-4000:]}")

    def remove(self) -> None:
        self.podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture(scope="module")
def container(built):
    tag, env, mounts = built
    t0 = time.monotonic()
    c = Container(tag, env, mounts)
    try:
        c.wait_ready()
        measured("container start (podman run) to ready", time.monotonic() - t0)
        yield c
    finally:
        c.remove()


def _requests(tiny_data, index_dir):
    from genrec.core.index import ItemIndex
    from genrec.core.mind import load_split

    split, index = load_split(tiny_data / "dev"), ItemIndex(index_dir)
    imp = next(i for i in split.impressions if len(i.history) >= 3 and len(i.candidates) >= 3
               and (index.rows([c.encode() for c in i.candidates + i.history]) >= 0).all())
    news = _news(tiny_data)
    return imp, [news[h].title for h in imp.history], [news[c].title for c in imp.candidates]


def _news(tiny_data):
    """The catalog the container's index was built from (the training split's news)."""
    from genrec.core.mind import load_split

    return load_split(tiny_data / "train").news


@needs_container
def test_health_user_and_read_only_root(container):
    assert container.status("/v2/health/live") == 200 and container.status("/v2/health/ready") == 200
    for model in ("genrec", "tokenizer", "encoder", "heads", "recommend"):
        assert container.status(f"/v2/models/{model}/ready") == 200, model
    assert container.exec("python3", "-c", "import os; print(os.getuid(), os.geteuid())").stdout.split() == \
        [str(image.IMAGE.uid)] * 2
    probe = container.exec("python3", "-c", "open('/opt/genrec/probe', 'w')", check=False)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{container.metrics}/metrics", timeout=5) as r:
        assert b"nv_inference_request_success" in r.read()


@needs_container
def test_a_request_on_each_path(container, tiny_data, container_index, item_stats_dir):
    from genrec.client import RecommenderClient
    from genrec.core.statstore import StatsTable

    imp, history, candidates = _requests(tiny_data, container_index)
    news, table = _news(tiny_data), StatsTable.read(item_stats_dir)
    hist, cands = list(imp.history), list(imp.candidates)
    with RecommenderClient(f"127.0.0.1:{container.grpc}", timeout=30) as client:
        # the text path with what the id path reads from its index and stats folder (categories, statistics)
        text = client.recommend(history=history, candidates=candidates,
                                history_categories=[news[h].category for h in hist],
                                history_subcategories=[news[h].subcategory for h in hist],
                                candidate_categories=[news[c].category for c in cands],
                                candidate_subcategories=[news[c].subcategory for c in cands],
                                history_stats=table.lookup(hist), candidate_stats=table.lookup(cands))
        ids = client.recommend(history_ids=hist, candidate_ids=cands)
        retrieved = client.recommend(history_ids=hist, k=5)
    assert len(text.items) == len(candidates) and len(ids.items) == len(candidates)
    assert {it.item_id for it in ids.items} == set(cands)
    assert len(retrieved.items) == 5 and not {it.item_id for it in retrieved.items} & set(hist)
    # FP32: the id path scores what the text path scores (the same model behind both)
    assert [it.index for it in ids.items] == [it.index for it in text.items]
    assert max(abs(a.score - b.score) for a, b in zip(ids.items, text.items)) < 1e-4


@needs_container
def test_the_stub_starts_as_triton_expects(container):
    """Triton's python backend runs the stub without arguments before each model instance and chmods it unless
    that exits 1 -- impossible here (read-only root, not the owner). Inside the container the stub exits 1 and
    cannot be written: the models load without the chmod."""
    where = container.exec("python3", "-c", "from genrec.server.launcher import triton_home; "
                           "print(triton_home() / 'backends/python/triton_python_backend_stub')").stdout.strip()
    ran = container.exec("sh", "-c", f"LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu {where}", check=False)
    assert ran.returncode == 1 and "Expected 9 arguments" in ran.stdout + ran.stderr, ran
    writable = container.exec("python3", "-c", f"import os; print(os.access({where!r}, os.W_OK))").stdout.strip()
    assert writable == "False"


@needs_container
def test_a_stub_that_cannot_start_stops_the_container_with_the_cause(built):
    """libpython3.11 hidden (what the image lacked when every model failed with "Failed to give execute permission
    to triton_python_backend_stub"): the launcher names the loader's error and the container exits 1."""
    tag, env, mounts = built
    lib = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"
    c = Container(tag, env, mounts, extra=["-v", f"/dev/null:{lib}:ro"])
    try:
        code = c.podman("wait", c.name, timeout=120).stdout.strip()
        logs = c.logs()
        assert code == "1", (code, logs[-3000:])
        assert "python-backend stub" in logs and "cannot start" in logs and "libpython3.11.so.1.0" in logs, logs
    finally:
        c.remove()


STUBS = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")[:-1]
    except OSError:
        continue
    if cmd and cmd[0].endswith(b"triton_python_backend_stub"):
        print(pid, cmd[-2].decode())
"""


def _stubs(container: Container) -> dict[int, str]:
    """Live python-backend stubs inside the container: pid -> model instance (the image has no ps)."""
    out = container.exec("python3", "-c", STUBS).stdout.split()
    return {int(pid): name for pid, name in zip(out[::2], out[1::2])}


@needs_container
def test_a_stub_killed_inside_the_container_is_restarted(container, tiny_data, container_index):
    from genrec.client import RecommenderClient

    before = _stubs(container)
    encoder = next(pid for pid, name in before.items() if name.startswith("encoder"))
    container.exec("python3", "-c", f"import os, signal; os.kill({encoder}, signal.SIGKILL)")
    killed = time.monotonic()
    imp, history, candidates = _requests(tiny_data, container_index)
    # what readiness shows: Triton alone stays green with a dead stub; the supervisor sees the stub gone (within
    # its 0.5 s poll), kills and restarts the server -- red while the models load again -- then green
    seen, deadline = [], killed + 60
    while time.monotonic() < deadline:
        code = container.status("/v2/health/ready")
        if not seen or seen[-1][1] != code:
            seen.append((time.monotonic() - killed, code))
        if code == 200 and any(c != 200 for _, c in seen) and "restarting tritonserver" in container.logs():
            break
        time.sleep(0.1)
    assert [c == 200 for _, c in seen][-2:] == [False, True], (seen, container.logs()[-4000:])
    assert "python-backend stub encoder_0_0 died: restarting tritonserver" in container.logs()
    red = next(t for t, c in seen if c != 200)
    measured("stub SIGKILLed -> readiness red", red)
    measured("stub SIGKILLed -> ready again (supervised restart)", seen[-1][0])
    with RecommenderClient(f"127.0.0.1:{container.grpc}", timeout=30) as client:
        assert len(client.recommend(history=history, candidates=candidates).items) == len(candidates)
    after = _stubs(container)
    assert encoder not in after and any(n.startswith("encoder") for n in after.values())


@needs_container
def test_sigterm_drains_in_flight_requests_and_exits_in_time(built, tiny_data, container_index):
    """SIGTERM to the container (what `podman stop` and Kubernetes send): requests already in flight complete,
    the container exits 0 within the grace period. Triton 2.51 alone fails them: its graceful stop makes the
    ensemble's composing models refuse the next step of every in-flight request (UNAVAILABLE "Server is stopping,
    scheduler for model has stopped accepting new inference requests", triton-inference-server/server#6287); the
    launcher serves on until nothing is in flight (TritonServer.drain), then stops Triton."""
    from genrec.client import GenrecClientError, RecommenderClient

    tag, env, mounts = built
    c = Container(tag, env, mounts)
    try:
        c.wait_ready()
        imp, history, candidates = _requests(tiny_data, container_index)
        client = RecommenderClient(f"127.0.0.1:{c.grpc}", timeout=60, retries=0)
        client.recommend(history=history, candidates=candidates)         # contract fetched, warm
        titles = [n.title for n in _news(tiny_data).values()]
        limits = client.served().limits
        signalled = []

        def call(i: int):
            # 200 texts no other request sent (no cache hits): seconds of work each, all four well inside the 30 s
            # exit timeout even on the loaded 2-core machine (eight of the largest requests were not: SIGKILLed)
            texts = [f"{t} {i}" for t in titles[:N_TEXTS]]
            start = time.monotonic()
            try:
                client.recommend(history=texts[:limits.max_history], candidates=texts[limits.max_history:])
                return start, time.monotonic(), "ok"
            except GenrecClientError as err:
                return start, time.monotonic(), type(err).__name__

        with cf.ThreadPoolExecutor(N_DRAIN) as pool:
            futures = [pool.submit(call, i) for i in range(N_DRAIN)]
            # all sent, none done yet (checked below): the smallest of them took 0.86 s on a quiet 2-core machine,
            # so the signal comes 0.2 s after the sends (1 s was enough only on a loaded one)
            time.sleep(0.2)
            signalled.append(time.monotonic())
            c.podman("kill", "--signal", "TERM", c.name)
            results = [f.result() for f in futures]
        code = c.podman("wait", c.name, timeout=GRACE_S + 20).stdout.strip()
        took = time.monotonic() - signalled[0]
        client.close()
        logs = c.logs()
        # every request was sent before the signal and answered after it: all in flight when it came
        assert all(start < signalled[0] < end for start, end, _ in results), (signalled, results)
        assert all(outcome == "ok" for _, _, outcome in results), (results, logs[-3000:])
        assert code == "0" and took < GRACE_S, (code, took, logs[-3000:])
        assert "received SIGTERM" in logs and "drained in" in logs and "stopped (exit code 0)" in logs, logs[-3000:]
        drained = float(re.search(r"drained in ([\d.]+) s", logs).group(1))
        measured(f"SIGTERM with {N_DRAIN} requests in flight -> drained (every one answered)", drained)
        measured("SIGTERM -> container exited 0", took)
    finally:
        c.remove()
