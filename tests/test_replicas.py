"""One client across two REAL tritonservers: gRPC's round_robin spreads the calls, gRPC's retry policy moves a
call off a killed replica (no failed call), and the replica gets traffic again once it is back on its port.

Traffic per replica is read from each server's own Triton statistics (successful `genrec` inferences), never
from the client."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest
import tritonclient.grpc as grpcclient

from genrec.client import AsyncRecommenderClient, GenrecClientError, RecommenderClient, RecommendRequest
from genrec.client.common import channel_args, grpc_target, service_config
from genrec.server.launcher import ServerConfig, TritonServer

HISTORY = ["Quarterback injury hits playoff hopes", "Coach praises linebacker after victory"]
CANDIDATES = ["Stocks rally as investors cheer earnings", "Team wins the championship game"]


def successes(server: TritonServer) -> int:
    """Successful inferences of the `genrec` ensemble, as that server counts them (its statistics extension)."""
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = raw.get_inference_statistics("genrec", as_json=True, client_timeout=5)
        return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))
    finally:
        raw.close()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not true after {timeout_s}s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def replica_repository(artifacts, tmp_path_factory):
    """The text ensemble alone (no index): the quickest repository to load twice, INT8 with one encoder thread
    per server (two servers share the two cores)."""
    from genrec.model_repository.builder import RepositoryConfig, build_repository

    return build_repository(artifacts.root, tmp_path_factory.mktemp("repo") / "replica",
                            RepositoryConfig(precision="int8", encoder_threads=1, max_queue_delay_us=500))


AGE_MS = 1000        # the replicas close each client connection after 1 s (deployment.yaml: 60 s), as on Kubernetes


@pytest.fixture(scope="module")
def replicas(replica_repository):
    servers = [TritonServer(replica_repository, ServerConfig(grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=1,
                                                             grpc_max_connection_age_ms=AGE_MS)) for _ in range(2)]
    try:
        with cf.ThreadPoolExecutor(2) as pool:             # load both at once
            list(pool.map(TritonServer.launch, servers))
        yield servers
    finally:
        for srv in servers:
            srv.stop(timeout_s=5)
            srv.cleanup_log()


def test_targets_and_service_config():
    assert grpc_target("127.0.0.1:8001") == "127.0.0.1:8001"
    assert grpc_target("127.0.0.1:8001, 127.0.0.1:8011") == "ipv4:127.0.0.1:8001,127.0.0.1:8011"
    assert grpc_target(["localhost:8001", "127.0.0.1:8011"]) == "ipv4:127.0.0.1:8001,127.0.0.1:8011"
    assert grpc_target(["[::1]:8001", "[::1]:8011"]) == "ipv6:[::1]:8001,[::1]:8011"
    assert grpc_target("dns:///genrec-headless:8001") == "dns:///genrec-headless:8001"
    assert grpc_target("ipv4:10.0.0.1:8001,10.0.0.2:8001") == "ipv4:10.0.0.1:8001,10.0.0.2:8001"
    for bad, message in (("", "no server address"), (["127.0.0.1:1", "[::1]:2"], "IPv4 or IPv6"),
                         ("10.0.0.1,10.0.0.2:1", "expected host:port"),
                         ("nosuch.invalid:1,127.0.0.1:2", "cannot resolve 'nosuch.invalid'")):
        with pytest.raises(ValueError, match=message):
            grpc_target(bad)
    config = service_config()                   # no gRPC retry policy: the client's loop is the one budget
    assert config == {"loadBalancingConfig": [{"round_robin": {}}]}
    assert ("grpc.lb_policy_name", "round_robin") in channel_args()


def test_async_client_spreads_a_batch_over_both_replicas(replicas):
    a, b = replicas
    before = [successes(a), successes(b)]

    async def run():
        async with AsyncRecommenderClient(f"ipv4:{a.grpc_url},{b.grpc_url}", timeout=30) as client:
            reqs = [RecommendRequest(HISTORY, CANDIDATES) for _ in range(24)]
            return await client.recommend_many(reqs, concurrency=4)

    results = asyncio.run(run())
    assert len(results) == 24 and all(len(r) == 2 for r in results)
    got = [successes(a) - before[0], successes(b) - before[1]]
    assert sum(got) == 24 and min(got) >= 6, f"calls per replica {got}: not spread by round_robin"


class Load:
    """``threads`` callers sharing one sync client (one channel, as an online service holds it)."""

    def __init__(self, client: RecommenderClient, threads: int = 4):
        self.client, self.stop = client, threading.Event()
        self.results: list[str] = []                   # "ok" or the error of each call
        self.pool = cf.ThreadPoolExecutor(threads)
        self.futures = [self.pool.submit(self._loop) for _ in range(threads)]

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                assert len(self.client.recommend(HISTORY, CANDIDATES)) == 2
                self.results.append("ok")
            except GenrecClientError as exc:
                self.results.append(f"{exc.status} {exc}")

    def finish(self) -> list[str]:
        self.stop.set()
        for f in self.futures:
            f.result()
        self.pool.shutdown()
        return self.results


def test_connections_closed_by_max_age_cost_no_call_even_without_retries(replicas):
    """Kubernetes scale-out relies on servers closing connections (--grpc-max-connection-age) so that clients
    re-resolve the headless Service: gRPC moves new calls to the other connection while one is renewed, in-flight
    calls finish (grace), so this costs no call even with every retry off."""
    a, b = replicas
    client = RecommenderClient([a.grpc_url, b.grpc_url], timeout=30, retries=0)
    load = Load(client)
    time.sleep(3 * AGE_MS / 1000)                      # each connection closed and renewed ~3 times
    results = load.finish()
    client.close()
    failed = [r for r in results if r != "ok"]
    assert len(results) > 20 and not failed, failed[:5]


def test_a_killed_replica_costs_no_call_and_gets_traffic_again_when_back(replicas):
    a, b = replicas
    client = RecommenderClient([a.grpc_url, b.grpc_url], timeout=30, retries=20, backoff_s=0.05, max_backoff_s=0.5)
    start = [successes(a), successes(b)]
    load = Load(client)
    try:
        # both replicas serve: round_robin alternates the calls of the one channel
        wait_for(lambda: min(successes(a) - start[0], successes(b) - start[1]) >= 10, 30, "both replicas serve")
        spread = [successes(a) - start[0], successes(b) - start[1]]
        # b dies hard under load (calls in flight on it included): the rest go to a
        os.kill(b.proc.pid, signal.SIGKILL)
        b.stop(timeout_s=0)                            # reaps it and kills its python stubs
        on_a, calls = successes(a), len(load.results)
        wait_for(lambda: successes(a) - on_a >= 20, 30, "a takes the load alone")
        during = len(load.results) - calls
        # b comes back on the same ports; the channel reconnects to it in the background
        b.start().wait_ready(60)
        wait_for(lambda: successes(b) >= 10, 30, "the restarted replica gets traffic again")
        back = [successes(a), successes(b)]
        time.sleep(1.0)
        after = [successes(a) - back[0], successes(b) - back[1]]
    finally:
        results = load.finish()
        client.close()
    failed = [r for r in results if r != "ok"]
    print(f"\nreplicas: spread {spread} calls (a, b); {during} calls while b was down; after b's restart "
          f"{after} calls in 1 s; {len(results)} calls, {len(failed)} failed")
    assert not failed, failed[:5]
    assert min(spread) >= 0.3 * sum(spread), f"calls per replica {spread}: not spread by round_robin"
    assert during > 0 and min(after) > 0, (during, after)


def test_autoscaling_rule_reads_what_triton_exports(replicas):
    """The Prometheus adapter rule behind the HPA (server/k8s/prometheus-adapter-rules.yaml) names metrics and model
    labels; a live tritonserver serving genrec must export each of them, else the HPA scales on nothing."""
    import re
    import urllib.request
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "server" / "k8s" / "prometheus-adapter-rules.yaml"
    (rule,) = yaml.safe_load(yaml.safe_load(path.read_text())["data"]["config.yaml"])["rules"]
    hpa = yaml.safe_load((path.parent / "hpa.yaml").read_text())
    assert rule["name"]["as"] == hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert re.fullmatch(rule["name"]["matches"], rule["seriesQuery"].split("{")[0])
    with urllib.request.urlopen(replicas[0].metrics_url, timeout=5) as r:
        exported = r.read().decode()
    series = {(m, model) for m, model in re.findall(r'^(nv_\w+)\{model="(\w+)"', exported, re.M)}
    metrics = {m for m, _ in series}
    queried = set(re.findall(r"\b(nv_\w+)\{", rule["metricsQuery"]))
    assert queried == {"nv_inference_queue_duration_us", "nv_inference_request_success"}, queried
    assert queried <= metrics, f"not exported by tritonserver: {queried - metrics}"
    # the ensemble is excluded from the queue sum and counted as the requests; its composing models queue
    assert 'model!="genrec"' in rule["metricsQuery"] and 'model=~"genrec|recommend"' in rule["metricsQuery"]
    models = {model for m, model in series if m == "nv_inference_queue_duration_us"}
    assert {"genrec", "tokenizer", "encoder", "heads"} <= models, models
