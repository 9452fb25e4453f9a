"""The serving image, built and run as an operator would (issue 29.3, issue 27.10).

`make test` checks only that server/Containerfile and server/Dockerfile are rendered from server/image.py and
that the Kubernetes Deployment runs the image's supervised entrypoint. `make test-container` (which .ci/run calls
after `make test`) sets GENREC_CONTAINER_TEST=1 and runs the rest against a real container: it builds the CPU image
with podman from a Debian rootfs and this checkout's wheels, runs it non-root on a read-only root filesystem, and
checks health and readiness, a request on each path (text, ids, retrieval), a python-backend stub killed inside the
container (the supervisor restarts the server), and SIGTERM draining in-flight requests within the grace period.
Where podman cannot run containers on a machine, the tests skip and say exactly what failed.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from genrec.server import image

ROOT = Path(__file__).resolve().parent.parent
ENABLED = os.environ.get("GENREC_CONTAINER_TEST") == "1"
GRACE_S = 40                   # the Deployment's terminationGracePeriodSeconds
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


# ---- the real container ------------------------------------------------------------------------------------

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
    image.ensure_base(work, env)
    probe = ["podman", "run", "--rm", "--pull=never", image.BASE, "/bin/true"]
    ran = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120)
    if ran.returncode != 0:
        pytest.skip(f"containers cannot run here: `{' '.join(probe)}` exited {ran.returncode}: {ran.stderr.strip()}")
    return work, env


@pytest.fixture(scope="module")
def container_index(fp32_index, artifacts, tmp_path_factory):
    from genrec.core.retrieval import RetrievalConfig, build_index_retrieval

    folder = tmp_path_factory.mktemp("container-index") / "index"
    shutil.copytree(fp32_index, folder)
    build_index_retrieval(folder, artifacts.root, RetrievalConfig(exact_below=0), log=lambda _m: None)
    return folder


@pytest.fixture(scope="module")
def built(podman, artifacts, container_index, item_stats_dir, tmp_path_factory):
    """The CPU image with a repository of the session's model (id path over an index with retrieval files)."""
    from genrec.model_repository.builder import RepositoryConfig, build_repository

    work, env = podman
    repo = build_repository(artifacts.root, tmp_path_factory.mktemp("container-repo") / "repo",
                            RepositoryConfig(precision="fp32", index=str(container_index), stats=str(item_stats_dir),
                                             recommend_instances=1))
    tag = image.build(repo, work)
    return tag, env, [container_index, item_stats_dir]


class Container:
    def __init__(self, tag: str, env: dict[str, str], mounts: list[Path]):
        self.env, self.name = env, f"genrec-test-{uuid.uuid4().hex[:8]}"
        self.http, self.grpc, self.metrics = _free_port(), _free_port(), _free_port()
        img = image.IMAGE
        cmd = ["podman", "run", "-d", "--name", self.name, "--read-only", "--shm-size=256m",
               "-p", f"127.0.0.1:{self.http}:{img.http_port}", "-p", f"127.0.0.1:{self.grpc}:{img.grpc_port}",
               "-p", f"127.0.0.1:{self.metrics}:{img.metrics_port}"]
        for m in mounts:
            cmd += ["-v", f"{m}:{m}:ro"]
        subprocess.run([*cmd, tag], env=env, check=True, capture_output=True, text=True, timeout=120)

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

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status("/v2/health/ready") == 200:
                return
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
    c = Container(tag, env, mounts)
    try:
        c.wait_ready()
        yield c
    finally:
        c.remove()


def _requests(tiny_data, index_dir):
    from genrec.core.index import ItemIndex
    from genrec.core.mind import load_split

    split, index = load_split(tiny_data / "dev"), ItemIndex(index_dir)
    imp = next(i for i in split.impressions if len(i.history) >= 3 and len(i.candidates) >= 3
               and (index.rows([c.encode() for c in i.candidates + i.history]) >= 0).all())
    news = split.news
    return imp, [news[h].title for h in imp.history], [news[c].title for c in imp.candidates]


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
def test_a_request_on_each_path(container, tiny_data, container_index):
    from genrec.client import RecommenderClient

    imp, history, candidates = _requests(tiny_data, container_index)
    with RecommenderClient(f"127.0.0.1:{container.grpc}", timeout=30) as client:
        text = client.recommend(history=history, candidates=candidates)
        ids = client.recommend(history_ids=list(imp.history), candidate_ids=list(imp.candidates))
        retrieved = client.recommend(history_ids=list(imp.history), k=5)
    assert len(text.items) == len(candidates) and len(ids.items) == len(candidates)
    assert {it.item_id for it in ids.items} == set(imp.candidates)
    assert len(retrieved.items) == 5 and not {it.item_id for it in retrieved.items} & set(imp.history)
    # FP32: the id path scores what the text path scores (the same model behind both)
    by_text = {c: it.score for c, it in zip(candidates, sorted(text.items, key=lambda it: it.index))}
    by_id = {it.item_id: it.score for it in ids.items}
    assert max(abs(by_text[candidates[i]] - by_id[c]) for i, c in enumerate(imp.candidates)) < 1e-3


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
    imp, history, candidates = _requests(tiny_data, container_index)
    deadline, restarted = time.monotonic() + 60, False
    while time.monotonic() < deadline:
        if "restarting tritonserver" in container.logs() and container.status("/v2/health/ready") == 200:
            restarted = True
            break
        time.sleep(0.5)
    assert restarted, container.logs()[-4000:]
    with RecommenderClient(f"127.0.0.1:{container.grpc}", timeout=30) as client:
        assert len(client.recommend(history=history, candidates=candidates).items) == len(candidates)
    after = _stubs(container)
    assert encoder not in after and any(n.startswith("encoder") for n in after.values())


@needs_container
def test_sigterm_drains_in_flight_requests_and_exits_in_time(built, tiny_data, container_index):
    """SIGTERM to the container (what `podman stop` and Kubernetes send): requests already in flight complete,
    the container exits 0 within the grace period."""
    from genrec.client import GenrecClientError, RecommenderClient

    tag, env, mounts = built
    c = Container(tag, env, mounts)
    try:
        c.wait_ready()
        imp, history, candidates = _requests(tiny_data, container_index)
        client = RecommenderClient(f"127.0.0.1:{c.grpc}", timeout=60, retries=0)
        client.recommend(history=history, candidates=candidates)         # contract fetched, warm
        signalled = []

        def call(i: int):
            start = time.monotonic()
            try:
                client.recommend(history=history * 8, candidates=candidates * 20)
                return start, "ok"
            except GenrecClientError as err:
                return start, type(err).__name__

        with cf.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(call, i) for i in range(8)]
            time.sleep(0.3)                                  # all eight are in flight
            signalled.append(time.monotonic())
            c.podman("kill", "--signal", "TERM", c.name)
            results = [f.result() for f in futures]
        code = c.podman("wait", c.name, timeout=GRACE_S + 20).stdout.strip()
        took = time.monotonic() - signalled[0]
        client.close()
        logs = c.logs()
        in_flight = [outcome for start, outcome in results if start < signalled[0]]
        assert in_flight and all(o == "ok" for o in in_flight), (results, logs[-3000:])
        assert code == "0" and took < GRACE_S, (code, took, logs[-3000:])
        assert "received SIGTERM" in logs
    finally:
        c.remove()
