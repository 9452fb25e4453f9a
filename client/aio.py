"""asyncio twin of RecommenderClient on tritonclient.grpc.aio (one channel, same checks and errors)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from genrec.client import common
from genrec.client.errors import GenrecClientError, Unavailable
from genrec.client.types import Recommendations, RecommendRequest


class AsyncRecommenderClient(common.ClientBase):
    """Same parameters and semantics as :class:`genrec.client.RecommenderClient`, awaitable."""

    GRPC = aioclient

    def __init__(self, url: str | Sequence[str], **settings):
        super().__init__(url, **settings)
        self._served_lock = asyncio.Lock()

    async def _call(self, fn, deadline: float):
        """Run ``fn(remaining_seconds)``; retry UNAVAILABLE with backoff while the deadline allows."""
        for attempt in itertools.count():
            remaining = self._retry.remaining(deadline)
            try:
                return await fn(remaining)
            except InferenceServerException as exc:
                await asyncio.sleep(self._retry.delay_after(exc, attempt, deadline))

    async def served(self, model: str | None = None, deadline: float | None = None) -> common.Served:
        """As the sync client's: fetched once; ``deadline`` is the calling request's."""
        model = model or self.model
        async with self._served_lock:
            if model not in self._served:
                spec = common.RECOMMEND if model == self.index_model else common.ENSEMBLE
                deadline = time.monotonic() + self.timeout if deadline is None else deadline
                metadata = await self._call(
                    lambda t: self._grpc.get_model_metadata(model, client_timeout=t), deadline)
                common.check_metadata(metadata, model, spec)
                config = (await self._call(
                    lambda t: self._grpc.get_model_config(model, client_timeout=t), deadline)).config
                version = metadata.versions[-1] if metadata.versions else ""
                self._served[model] = common.served_from_config(config, version)
            return self._served[model]

    check_contract = served

    async def recommend(self, history: Sequence[str] = (), candidates: Sequence[str] = (),
                        **fields) -> Recommendations:
        """As :meth:`genrec.client.RecommenderClient.recommend` (the same request factory), awaitable."""
        return await self.recommend_request(RecommendRequest(history, candidates, **fields))

    async def recommend_request(self, req: RecommendRequest) -> Recommendations:
        call = common.Call(self, req)
        call.prepare(await self.served(call.model, call.deadline))
        return call.decode(await self._call(call.infer_async(self._grpc), call.deadline))

    async def recommend_many(self, requests: Sequence[RecommendRequest], concurrency: int = 32,
                             return_exceptions: bool = False) -> list[Recommendations | GenrecClientError]:
        """At most ``concurrency`` calls in flight over one channel; results in request order."""
        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(req):
            async with sem:
                return await self.recommend_request(req)

        return await asyncio.gather(*(one(r) for r in requests), return_exceptions=return_exceptions)

    async def health(self) -> dict[str, bool]:
        try:
            t = min(self.timeout, 2.0)
            return {"live": await self._grpc.is_server_live(client_timeout=t),
                    "ready": await self._grpc.is_server_ready(client_timeout=t),
                    "model_ready": await self._grpc.is_model_ready(self.model, client_timeout=t)}
        except InferenceServerException:
            return {"live": False, "ready": False, "model_ready": False}

    async def wait_until_ready(self, timeout: float = 60.0) -> common.Served:
        deadline = time.monotonic() + timeout
        attempt = 0
        while time.monotonic() < deadline:
            if (await self.health())["model_ready"]:
                return await self.served()
            await asyncio.sleep(min(common.backoff_delay(attempt, 0.1, 1.0, self._retry.rng) + 0.05,
                                    max(0.0, deadline - time.monotonic())))
            attempt += 1
        raise Unavailable(f"{self.url}: model '{self.model}' not ready after {timeout}s")

    async def close(self) -> None:
        await self._grpc.close()

    async def __aenter__(self) -> AsyncRecommenderClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

