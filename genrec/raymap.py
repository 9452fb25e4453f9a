"""Per-item offline jobs on a Ray cluster: chunks of a catalog mapped over actors, results back to the driver.

Ray does the distributed part: it places the actors on the cluster's nodes (``num_cpus`` each), restarts an actor
whose process or node died and retries its task there. What is here only connects to the cluster and keeps a
bounded number of chunks in flight (two per actor, through Ray's own ``ActorPool``), so a catalog of 100M items is
streamed, never held, by the driver. The driver writes every result itself, so the job's output and its resume
point stay where the single-process job keeps them.

Used by ``genrec index build --ray``; any later per-item job (e.g. LLM enrichment) is a worker class with
``run(key, payload) -> (key, result)`` and the same :func:`map_chunks`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

from genrec.core.errors import UserError

IN_FLIGHT_PER_WORKER = 2      # the next chunk waits at the actor while it encodes one: no idle gap per round trip
ACTOR_RESTARTS = 3            # a worker process (or its node) that dies is restarted this often by Ray
TASK_RETRIES = 3              # and the chunk it held is run again on the restarted actor


class RayUnavailable(UserError, RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs the ray package, which is not installed here: run `make install-ray` "
                             "(or pip install 'genrec[ray]')") from None
    return ray


@contextlib.contextmanager
def connected(address: str) -> Iterator[Any]:
    """The ``ray`` module connected to the cluster at ``address`` (``auto``, ``HOST:PORT`` of the head, or
    ``ray://HOST:10001``); disconnects afterwards, leaving the cluster running. A driver already connected (a
    notebook, a test) is used as it is."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"cannot connect to a Ray cluster at {address!r}: {exc}\n(start one with "
                             "`ray start --head` on the head node and `ray start --address HEAD:6379` on the "
                             "others; --ray auto finds the cluster this machine has joined)") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nothing listens on: ray.init waits minutes for such a head (measured: 3 min+)."""
    if address == "auto" or "://" in address:
        return                                    # auto: Ray finds the local cluster or says none runs
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnavailable(f"--ray {address!r}: expected auto, HOST:PORT of the head (ray start --head prints it) "
                             "or ray://HOST:10001")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot connect to a Ray cluster at {address!r}: {exc.strerror or exc} (start one "
                             "with `ray start --head` on the head node and `ray start --address HEAD:PORT` on the "
                             "others)") from None


def worker_count(ray: Any, cpus_per_worker: int, requested: int = 0, log: Callable[[str], None] = print) -> int:
    """Actors the cluster can run at once at ``cpus_per_worker`` CPUs each; ``requested`` (0 = all) is capped there:
    an actor that can never be placed would hold its chunks forever."""
    if cpus_per_worker < 1:
        raise ValueError(f"--ray-cpus-per-worker must be >= 1, got {cpus_per_worker}")
    cpus = int(ray.cluster_resources().get("CPU", 0))
    fits = cpus // cpus_per_worker
    if fits < 1:
        raise RayUnavailable(f"the Ray cluster has {cpus} CPUs: no room for a worker of {cpus_per_worker} CPUs")
    if requested and requested > fits:
        log(f"ray: {requested} workers asked, the cluster's {cpus} CPUs hold {fits} of {cpus_per_worker} CPUs each")
    return min(requested, fits) if requested else fits


def map_chunks(ray: Any, worker_cls: type, init_args: tuple, tasks: Iterable[tuple[Hashable, Any]],
               on_result: Callable[[Hashable, Any], None], *, workers: int, cpus_per_worker: int) -> list[Any]:
    """Run ``worker_cls(*init_args).run(key, payload) -> (key, result)`` on ``workers`` actors for every
    ``(key, payload)`` of ``tasks`` (consumed lazily), calling ``on_result(key, result)`` in the driver as results
    arrive (in completion order). Returns what each actor's ``describe()`` says (after the work), for reports.
    The actors are killed afterwards, also on failure."""
    from ray.util.actor_pool import ActorPool

    actor_cls = ray.remote(num_cpus=cpus_per_worker, max_restarts=ACTOR_RESTARTS,
                           max_task_retries=TASK_RETRIES)(worker_cls)
    actors = [actor_cls.remote(*init_args) for _ in range(workers)]
    try:
        pool = ActorPool([a for a in actors for _ in range(IN_FLIGHT_PER_WORKER)])
        for key, payload in tasks:
            while not pool.has_free():
                on_result(*pool.get_next_unordered())
            pool.submit(lambda actor, kv: actor.run.remote(*kv), (key, payload))
        while pool.has_next():
            on_result(*pool.get_next_unordered())
        return ray.get([a.describe.remote() for a in actors])
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
