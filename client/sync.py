"""Synchronous, thread-safe gRPC client: one channel per client, retries on UNAVAILABLE only."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import threading
import time
from collections.abc import Sequence

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from genrec.client import common
from genrec.client.errors import GenrecClientError, Unavailable
from genrec.client.types import Recommendations, RecommendRequest


class RecommenderClient(common.ClientBase):
    """Ranks candidates for one user per call against the ``genrec`` ensemble.

    ``timeout`` is the whole call's deadline in seconds, retries included. ``retries`` applies to
    UNAVAILABLE only (server down, restarting, overloaded connection), with exponential backoff
    (``backoff_s`` doubling, capped at ``max_backoff_s``) and full jitter. ``ssl``/``root_certificates``
    (a PEM file path) enable TLS; ``compression`` is "gzip" or "deflate".

    Several replicas: ``url`` may be a list of ``host:port``, a comma-separated string of them, or a gRPC target
    (``dns:///genrec-headless:8001`` for a Kubernetes headless Service, ``ipv4:10.0.0.1:8001,10.0.0.2:8001``).
    gRPC itself balances them (``round_robin``: one connection per replica, requests only to connected ones); a
    call that gets UNAVAILABLE is retried (the client's one retry budget, ``retries``) and so picked again, onto
    another replica: a replica that dies costs no failed call while another is up; it gets traffic again once it
    is back (see :func:`genrec.client.common.grpc_target`). ``ssl`` left out: TLS when any TLS file is given.
    """

    GRPC = grpcclient

    def __init__(self, url: str | Sequence[str], **settings):
        super().__init__(url, **settings)
        self._lock = threading.Lock()

    # ---- plumbing -------------------------------------------------------------------------------
    def _call(self, fn, deadline: float):
        """Run ``fn(remaining_seconds)``; retry UNAVAILABLE with backoff while the deadline allows."""
        for attempt in itertools.count():
            remaining = self._retry.remaining(deadline)
            try:
                return fn(remaining)
            except InferenceServerException as exc:
                time.sleep(self._retry.delay_after(exc, attempt, deadline))

    def served(self, model: str | None = None, deadline: float | None = None) -> common.Served:
        """Contract check + limits of ``model`` (default: the text ensemble), fetched once (thread-safe).
        ``deadline`` (time.monotonic() based): the calling request's, so its first call has one deadline."""
        model = model or self.model
        with self._lock:
            if model in self._served:
                return self._served[model]
        spec = common.RECOMMEND if model == self.index_model else common.ENSEMBLE
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        metadata = self._call(lambda t: self._grpc.get_model_metadata(model, client_timeout=t), deadline)
        common.check_metadata(metadata, model, spec)
        config = self._call(lambda t: self._grpc.get_model_config(model, client_timeout=t), deadline).config
        served = common.served_from_config(config, metadata.versions[-1] if metadata.versions else "")
        with self._lock:
            self._served[model] = served
        return served

    check_contract = served

    # ---- API ------------------------------------------------------------------------------------
    def recommend(self, history: Sequence[str] = (), candidates: Sequence[str] = (), **fields) -> Recommendations:
        """One user's recommendations; ``fields`` are :class:`~genrec.client.RecommendRequest`'s (keywords, the
        one request factory of both clients). Texts (+ categories) go to the ``genrec`` ensemble; ids go to the
        ``recommend`` model, which reads indexed items' vectors
        and encodes only ``new_items`` (id -> text or (text, category[, subcategory])).

        Text path only: ``history_stats`` / ``candidate_stats`` give per item [exposures, clicks, history_users]
        raw counts, then the collaborative vector of ``genrec stats build`` (``genrec.core.contract.ITEM_STATS``; a row
        of the three counts alone is padded with zeros; one row per text; checked here with the server's
        messages). Left out, or an all-zero row, means "no statistics": the model uses its training prior.
        The id path reads statistics by id from the server's stats folder.

        Both paths, optional: ``profile`` the user's LLM interest topics (``genrec enrich users``; names from the
        served ``categories``), sent as ``user_profile``; left out = "no profile". ``generated`` (opt-in): LLM-
        written titles for a short history (``genrec enrich cold-users``), sent as its oldest items of unknown
        category (the server has no LLM); ``because`` indices count them (they come first).

        Ids without ``candidate_ids``: the server retrieves from its whole index (ANN over the user vector, then
        the heads re-rank) and returns the best ``k`` (default 10, at most the served ``retrieval_m``), never the
        user's history (unless ``include_history``) nor ``exclude_ids``, only ``categories`` when given; each
        item's ``item_id`` says which. No history: the model's cold-start answer (model_repository/README.md)."""
        return self.recommend_request(RecommendRequest(history, candidates, **fields))

    def recommend_request(self, req: RecommendRequest) -> Recommendations:
        call = common.Call(self, req)
        call.prepare(self.served(call.model, call.deadline))          # same checks and messages as the server
        return call.decode(self._call(call.infer(self._grpc), call.deadline))

    def recommend_many(self, requests: Sequence[RecommendRequest], concurrency: int = 8,
                       return_exceptions: bool = False) -> list[Recommendations | GenrecClientError]:
        """Many users over this client's one channel, ``concurrency`` calls in flight; results in order."""
        def one(req):
            try:
                return self.recommend_request(req)
            except GenrecClientError as exc:
                if return_exceptions:
                    return exc
                raise
        with cf.ThreadPoolExecutor(max(1, concurrency)) as pool:
            return list(pool.map(one, requests))

    def health(self) -> dict[str, bool]:
        try:
            t = min(self.timeout, 2.0)
            return {"live": self._grpc.is_server_live(client_timeout=t),
                    "ready": self._grpc.is_server_ready(client_timeout=t),
                    "model_ready": self._grpc.is_model_ready(self.model, client_timeout=t)}
        except InferenceServerException:
            return {"live": False, "ready": False, "model_ready": False}

    def wait_until_ready(self, timeout: float = 60.0) -> common.Served:
        """Poll until the server and model are ready, then check the contract; Unavailable on timeout."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while time.monotonic() < deadline:
            if self.health()["model_ready"]:
                return self.served()
            time.sleep(min(common.backoff_delay(attempt, 0.1, 1.0, self._retry.rng) + 0.05,
                           max(0.0, deadline - time.monotonic())))
            attempt += 1
        raise Unavailable(f"{self.url}: model '{self.model}' not ready after {timeout}s")

    def close(self) -> None:
        self._grpc.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
