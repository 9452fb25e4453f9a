"""Helpers shared by the python-backend models."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import triton_python_backend_utils as pb_utils

from genrec.core.contract import ModelParams
from genrec.core.requests import RequestError

P = TypeVar("P", bound=ModelParams)


def model_params(args: dict[str, Any], cls: type[P]) -> P:
    """The model's config ``parameters`` as its typed contract object (``genrec.core.contract``: one dataclass per
    backend, written by the repository builder)."""
    return cls.from_parameters(json.loads(args["model_config"]).get("parameters", {}))


def version_dir(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"]) / str(args["model_version"])


def error(message: str, code=None) -> pb_utils.InferenceResponse:
    code = pb_utils.TritonError.INVALID_ARG if code is None else code
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def internal_error(model: str, exc: BaseException) -> pb_utils.InferenceResponse:
    pb_utils.Logger.log_error(f"{model}: {exc!r}\n{traceback.format_exc()}")
    return error(f"{model}: internal error: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)


def per_request(model: str, requests: list, fn: Callable[[Any], pb_utils.InferenceResponse]) -> list:
    """Run ``fn`` for each request; RequestError -> INVALID_ARGUMENT, anything else -> INTERNAL."""
    out = []
    for request in requests:
        try:
            out.append(fn(request))
        except RequestError as exc:
            out.append(error(f"{model}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - a request's failure must never take the stub down
            out.append(internal_error(model, exc))
    return out


def get_input(request, name: str, *, dtype=None, ndim: int | None = None) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise RequestError(f"missing input '{name}'")
    arr = tensor.as_numpy()
    if ndim is not None and arr.ndim != ndim:
        raise RequestError(f"input '{name}' must have rank {ndim}, got shape {list(arr.shape)}")
    if dtype is not None and arr.dtype != dtype:
        raise RequestError(f"input '{name}' must be {np.dtype(dtype).name}, got {arr.dtype.name}")
    return arr


def get_optional(request, name: str, *, dtype=None, ndim: int | None = None) -> np.ndarray | None:
    """An optional input (``optional: true`` in the config): None when the request left it out."""
    if pb_utils.get_input_tensor_by_name(request, name) is None:
        return None
    return get_input(request, name, dtype=dtype, ndim=ndim)


def response(outputs: dict[str, np.ndarray]) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])


class CacheMetrics:
    """Prometheus counters of a model instance's cache (served on Triton's metrics port): hits and misses in
    items, and the bytes it holds. ``prefix`` names the families: ``genrec_vector_cache`` (the encoder's item
    vectors) or ``genrec_token_cache`` (the tokenizer's token ids)."""

    def __init__(self, model: str, instance: str, prefix: str = "genrec_vector_cache", what: str = "item vectors"):
        counter = getattr(pb_utils.MetricFamily, "COUNTER", getattr(pb_utils, "COUNTER", None))
        gauge = getattr(pb_utils.MetricFamily, "GAUGE", getattr(pb_utils, "GAUGE", None))
        labels = {"model": model, "instance": instance}
        self.prefix = prefix
        # the families must outlive their metrics (Triton deletes a metric whose family is gone)
        self.families = [
            pb_utils.MetricFamily(name=f"{prefix}_hits_total", kind=counter,
                                  description=f"items whose {what} came from the cache"),
            pb_utils.MetricFamily(name=f"{prefix}_misses_total", kind=counter,
                                  description=f"items whose {what} the cache lacked (computed)"),
            pb_utils.MetricFamily(name=f"{prefix}_bytes", kind=gauge,
                                  description=f"bytes held by the cache of {what}")]
        self.hits, self.misses, self.bytes = (f.Metric(labels=labels) for f in self.families)

    def update(self, cache, before: tuple[int, int]) -> None:
        """``cache`` has ``hits``, ``misses`` (running totals) and ``nbytes``; ``before`` = totals before.
        A metrics failure is logged, never turned into a failed request."""
        try:
            if cache.hits > before[0]:
                self.hits.increment(cache.hits - before[0])
            if cache.misses > before[1]:
                self.misses.increment(cache.misses - before[1])
            self.bytes.set(cache.nbytes)
        except Exception as exc:  # noqa: BLE001
            pb_utils.Logger.log_warn(f"{self.prefix} metrics not updated: {exc!r}")
