"""What the sync and async clients share: request encoding, response decoding, error mapping, backoff."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import socket
import time
from collections.abc import Sequence
from typing import Any

import grpc as grpc_module
import numpy as np
from tritonclient.utils import InferenceServerException

from genrec.client import wire
from genrec.client.errors import ContractMismatch, DeadlineExceeded, GenrecClientError, InvalidRequest, Unavailable
from genrec.client.types import Because, RankedItems, Recommendations, RecommendedItem, RecommendRequest
from genrec.core.contract import (
    CONTRACT_VERSION,
    ENSEMBLE,
    ITEM_SOURCES,
    ITEM_STATS,
    RECOMMEND,
    TASK_OUTPUTS,
    GraphSpec,
    ServedParams,
)
from genrec.core.profiles import generated_id, profile_vector
from genrec.core.requests import (
    RETRIEVAL_OPTIONS,
    IdRequest,
    Limits,
    RequestError,
    UserRequest,
    refuse_retrieval_options,
    validate,
    validate_ids,
    validate_profile,
    validate_retrieval,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024     # client channel limit; requests are far smaller (texts are capped)
CHANNEL_ARGS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                # reconnect quickly after a server restart (gRPC's default backoff grows to 120 s)
                ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000)]
# gRPC target schemes (grpc/doc/naming.md); a target with one is handed to gRPC as written
GRPC_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds")
EXPLAIN_TOP = 3                          # history items listed per candidate in ``because``
# items whose reasons are sorted row by row before the answer sorts its whole explanation matrix at once: a row
# costs ~2 us, the (100, 50) matrix ~70 us (issue 28), and services read the top 10
ROWS_ALONE = 16


@dataclasses.dataclass
class Served:
    """What the client learned from the served model's metadata and config."""

    version: str
    limits: Limits
    categories: list[str]
    retrieval_m: int = 0          # recommend: items retrieved before re-ranking (0 = no retrieval served)


def grpc_target(url: str | Sequence[str]) -> str:
    """One gRPC target for one server or several replicas.

    * a target with a scheme passes as written: ``dns:///genrec-headless:8001`` (every address the name resolves
      to, re-resolved when a connection drops), ``ipv4:10.0.0.1:8001,10.0.0.2:8001``, ``unix:/path``;
    * ``host:port`` passes as written (gRPC's default resolver is DNS: a name with several addresses is several
      replicas);
    * several endpoints, as a list or comma-separated (``"10.0.0.1:8001,10.0.0.2:8001"``), become one static
      ``ipv4:``/``ipv6:`` target; host names among them are resolved here, once (use ``dns:///NAME:PORT`` for a
      set of replicas that changes).
    gRPC balances the target's addresses itself (``round_robin``, see :func:`channel_args`)."""
    if isinstance(url, str):
        if url.split(":", 1)[0] in GRPC_SCHEMES:
            return url
        parts = url.split(",")
    else:
        parts = list(url)
    parts = [p.strip() for p in parts if p and p.strip()]
    if not parts:
        raise ValueError("no server address given (expected host:port, several of them, or a gRPC target such as "
                         "dns:///genrec-headless:8001)")
    if len(parts) == 1:
        return parts[0]
    v4: list[str] = []
    v6: list[str] = []
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{part!r}: expected host:port (IPv6 as [addr]:port)")
        host = host.removeprefix("[").removesuffix("]")
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:                         # a name: every address it has now
            try:
                infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise ValueError(f"{part!r}: cannot resolve {host!r}: {exc.strerror}") from None
            ips = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
            ips = [ip for ip in ips if ip.version == 4] or ips     # a name with both families (localhost): IPv4
        for ip in ips:
            (v4 if ip.version == 4 else v6).append(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
    if v4 and v6:
        raise ValueError(f"{parts}: a gRPC target holds IPv4 or IPv6 addresses, not both; give addresses of one "
                         "family or a dns:/// name")
    return f"ipv4:{','.join(dict.fromkeys(v4))}" if v4 else f"ipv6:{','.join(dict.fromkeys(v6))}"


def service_config() -> dict:
    """gRPC service config: ``round_robin`` over every address of the target (a connection per replica; requests
    go only to connected ones, a dropped one is reconnected in the background and gets traffic again once up).
    No gRPC retry policy: the client's own loop (:class:`RetryPolicy`) is the one retry budget of a call --
    ``retries`` extra attempts in all, within the call's deadline. (A gRPC policy inside that loop multiplied
    them: 4 x 4 = 16 RPCs per call with retries=3.) A retried call picks again, so it lands on another replica
    when the one it was on went away; gRPC's transparent retry of RPCs that never left the client stays on."""
    return {"loadBalancingConfig": [{"round_robin": {}}]}


def channel_args() -> list[tuple[str, Any]]:
    """The client channel's arguments: message limits, quick reconnects, round-robin (see
    :func:`service_config`)."""
    return [*CHANNEL_ARGS, ("grpc.lb_policy_name", "round_robin"), ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(service_config()))]


def status_name(exc: InferenceServerException) -> str:
    return str(exc.status() or "").removeprefix("StatusCode.")


def map_error(exc: InferenceServerException) -> GenrecClientError:
    status = status_name(exc)
    message = exc.message() or str(exc)
    if status == "INVALID_ARGUMENT":
        return InvalidRequest(message, status)
    if status == "UNAVAILABLE":
        return Unavailable(message, status)
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(f"deadline exceeded: {message}", status)
    return GenrecClientError(f"{status or 'error'}: {message}", status)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    return rng.uniform(0.0, min(cap, base * (2 ** attempt)))


class ClientBase:
    """What the sync and the async client share: settings, one channel (``GRPC`` is the tritonclient module that
    makes it), the served models' checked metadata, and the retry policy. They differ only in how they wait."""

    GRPC: Any = None

    def __init__(self, url: str | Sequence[str], *, timeout: float = 5.0, retries: int = 3, ssl: bool | None = None,
                 root_certificates: str | None = None, compression: str | None = None, model: str = "genrec",
                 index_model: str = "recommend", backoff_s: float = 0.1, max_backoff_s: float = 2.0,
                 private_key: str | None = None, certificate_chain: str | None = None):
        self.url, self.model, self.index_model = grpc_target(url), model, index_model
        self.timeout, self.retries = timeout, retries
        self.compression = compression
        self._grpc = self.GRPC.InferenceServerClient(
            self.url, ssl=tls_wanted(ssl, root_certificates, private_key, certificate_chain),
            root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain,
            channel_args=channel_args())
        self._served: dict[str, Served] = {}
        self._retry = RetryPolicy(self.url, timeout, retries, backoff_s, max_backoff_s)


def tls_wanted(ssl: bool | None, root_certificates: str | None, private_key: str | None,
               certificate_chain: str | None) -> bool:
    """Whether the channel is TLS: any TLS file implies it (a CA file without ``ssl=True`` used to give a
    plaintext channel, silently); ``ssl=False`` together with TLS files is refused, naming them."""
    files = [name for name, value in (("root_certificates", root_certificates), ("private_key", private_key),
                                      ("certificate_chain", certificate_chain)) if value]
    if ssl is False and files:
        raise ValueError(f"ssl=False with {', '.join(files)}: TLS files need TLS; leave ssl out (TLS is implied) "
                         "or drop the files")
    if bool(private_key) != bool(certificate_chain):
        raise ValueError("private_key and certificate_chain go together (the client's certificate for mutual TLS)")
    return bool(ssl) or bool(files)


@dataclasses.dataclass
class RetryPolicy:
    """One deadline per call; UNAVAILABLE retried ``retries`` times with jittered backoff, nothing else.
    Shared by the sync and the async client, which differ only in how they wait."""

    url: str
    timeout: float
    retries: int
    backoff_s: float
    max_backoff_s: float
    rng: random.Random = dataclasses.field(default_factory=random.Random)

    def remaining(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"deadline of {self.timeout}s exceeded before the call could complete")
        return left

    def delay_after(self, exc: InferenceServerException, attempt: int, deadline: float) -> float:
        """Seconds to wait before attempt ``attempt + 1``, or raise the client error for ``exc``."""
        err = map_error(exc)
        if not isinstance(err, Unavailable):
            raise err from None
        if attempt >= self.retries:
            raise Unavailable(f"{self.url} unavailable after {attempt + 1} attempts: {err.message}", err.status) \
                from None
        delay = backoff_delay(attempt, self.backoff_s, self.max_backoff_s, self.rng)
        return min(delay, max(0.0, deadline - time.monotonic()))


def check_metadata(metadata: Any, model: str, spec: GraphSpec = ENSEMBLE) -> None:
    """Compare the served model's inputs/outputs with the contract; name every difference."""
    def table(tensors) -> dict[str, tuple[str, int]]:
        return {t.name: (t.datatype, len(t.shape)) for t in tensors}

    want_in = {t.name: (t.dtype, len(t.dims)) for t in spec.inputs}
    want_out = {t.name: (t.dtype, len(t.dims)) for t in spec.outputs}
    got_in, got_out = table(metadata.inputs), table(metadata.outputs)
    problems = []
    for kind, want, got in (("input", want_in, got_in), ("output", want_out, got_out)):
        for name in want.keys() - got.keys():
            problems.append(f"missing {kind} '{name}'")
        for name in got.keys() - want.keys():
            if kind == "input":
                problems.append(f"unexpected {kind} '{name}'")
        for name in want.keys() & got.keys():
            if want[name] != got[name]:
                problems.append(f"{kind} '{name}' is {got[name][0]} rank {got[name][1]}, "
                                f"expected {want[name][0]} rank {want[name][1]}")
    if problems:
        raise ContractMismatch(f"model '{model}' does not serve contract {CONTRACT_VERSION}: "
                               + "; ".join(sorted(problems)))


def served_from_config(config: Any, version: str) -> Served:
    params = ServedParams.from_parameters(config.parameters)
    if "contract_version" in config.parameters and params.contract_version != CONTRACT_VERSION:
        raise ContractMismatch(f"server speaks {params.contract_version}, this client {CONTRACT_VERSION}")
    limits = Limits.from_parameters(config.parameters)
    return Served(version, limits, list(params.categories), params.retrieval_m)


def spec_for(req: RecommendRequest) -> GraphSpec:
    return RECOMMEND if req.by_id else ENSEMBLE


def with_generated(req: RecommendRequest, limits: Limits) -> RecommendRequest:
    """``req`` with its LLM-written titles (``generated``) as the oldest history items, as training saw them:
    unknown category, no statistics; on the id path as new items (id = genrec.core.profiles.generated_id). The real
    history is kept first: only as many titles as the history limit leaves room for go."""
    if not req.generated:
        return req
    n_real = len(req.history_ids or ()) if req.by_id else len(req.history)
    titles = list(req.generated)[max(0, len(req.generated) - max(0, limits.max_history - n_real)):]
    if not titles:
        return req
    if req.by_id:
        ids = [generated_id(t) for t in titles]
        return dataclasses.replace(req, history_ids=[*ids, *(req.history_ids or ())], generated=None,
                                   new_items={**dict(zip(ids, titles)), **(req.new_items or {})})

    def pad(values, fill):
        return None if values is None else [*([fill] * len(titles)), *values]

    return dataclasses.replace(req, history=[*titles, *req.history], generated=None,
                               history_categories=pad(req.history_categories, ""),
                               history_subcategories=pad(req.history_subcategories, ""),
                               history_stats=pad(req.history_stats, [0.0] * len(ITEM_STATS)))


def profile_input(req: RecommendRequest, served: Served | None):
    """The user_profile tensor of ``req.profile`` (topic names) over the served categories; None when absent."""
    if req.profile is None:
        return None
    if served is None or not served.categories:
        raise RequestError("profile: the server does not advertise its categories (an older build): leave it out")
    known = {c.strip().lower() for c in served.categories if c}
    for i, topic in enumerate(req.profile):
        if not isinstance(topic, str) or topic.strip().lower() not in known:
            raise RequestError(f"profile[{i}] {topic!r} is not a category of this model (see its `categories`)")
    return validate_profile(profile_vector(req.profile, served.categories), served.categories)


def retrieval_options(req: RecommendRequest) -> list[str]:
    """Which retrieval options ``req`` sets, by their tensor names (RETRIEVAL_OPTIONS)."""
    return [name for name, given in zip(RETRIEVAL_OPTIONS, (req.k is not None, bool(req.exclude_ids),
                                                             req.categories is not None, req.include_history))
            if given]


def prepare(req: RecommendRequest, limits: Limits, served: Served | None = None) -> UserRequest | IdRequest:
    try:
        if not req.retrieves:                          # candidates given: ranked as sent, nothing dropped silently
            refuse_retrieval_options(retrieval_options(req))
        req = with_generated(req, limits)
        profile = profile_input(req, served)
        if req.retrieves and served is not None:       # the server's checks of k and the filters, here first
            validate_retrieval(None if req.k is None else [req.k], req.exclude_ids, req.categories,
                               [req.include_history], served.retrieval_m,
                               {c: i for i, c in enumerate(served.categories) if i > 0})
        if req.by_id:
            if req.history or req.candidates:
                raise RequestError("send either texts (history/candidates) or ids (history_ids/candidate_ids), "
                                   "not both")
            if req.history_stats is not None or req.candidate_stats is not None:
                raise RequestError("history_stats/candidate_stats go with texts; on the id path the server reads "
                                   "item statistics from its stats folder")
            new = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in (req.new_items or {}).items()}
            user = validate_ids(list(req.history_ids or ()), list(req.candidate_ids or ()), list(new),
                                [v[0] for v in new.values()], [v[1] if len(v) > 1 else "" for v in new.values()],
                                [v[2] if len(v) > 2 else "" for v in new.values()], limits,
                                retrieval=req.retrieves)
            user.user_profile = profile
            return user
        return validate(list(req.history), list(req.candidates), req.history_categories, req.history_subcategories,
                        req.candidate_categories, req.candidate_subcategories, limits,
                        history_stats=req.history_stats, candidate_stats=req.candidate_stats,
                        user_profile=profile, categories=served.categories if served is not None else None)
    except RequestError as exc:
        raise InvalidRequest(str(exc), "INVALID_ARGUMENT") from None


def _fields(user: UserRequest | IdRequest) -> dict[str, list[str]]:
    if isinstance(user, UserRequest):
        return {t.name: getattr(user, t.name) for t in ENSEMBLE.inputs if t.dtype == "BYTES"}
    new = user.new_items
    return {"history_id": user.history_id, "candidate_id": user.candidate_id, "new_item_id": list(new),
            "new_item_text": [v[0] for v in new.values()], "new_item_category": [v[1] for v in new.values()],
            "new_item_subcategory": [v[2] for v in new.values()]}


def bytes_input(infer_input_cls, name: str, values: Sequence[str | bytes], dtype: str = "BYTES"):
    """A BYTES tensor of UTF-8 encoded ``values`` (bytes pass as given) for tritonclient's grpc or aio API (the
    soak and the tests' raw requests; the clients themselves build :mod:`genrec.client.wire` messages)."""
    arr = np.array([v.encode("utf-8") if isinstance(v, str) else v for v in values], dtype=np.object_)
    arr = arr.reshape(len(values))
    inp = infer_input_cls(name, list(arr.shape), dtype)
    inp.set_data_from_numpy(arr)
    return inp


def encode_inputs(user: UserRequest | IdRequest, tensors: wire.Tensors, req: RecommendRequest | None = None):
    """The request's tensors (named as the contract names them) added to ``tensors``."""
    for name, values in _fields(user).items():
        if not (name == "candidate_id" and not values):            # absent = retrieve (optional input)
            tensors.add_bytes(name, values)
    if req is not None and req.retrieves:
        if req.k is not None:
            tensors.add_array("k", "INT32", np.array([req.k], dtype=np.int32))
        if req.exclude_ids:
            tensors.add_bytes("exclude_id", list(req.exclude_ids))
        if req.categories is not None:
            tensors.add_bytes("restrict_category", list(req.categories))
        if req.include_history:
            tensors.add_array("include_history", "BOOL", np.array([True]))
    optional = ("history_stats", "candidate_stats", "user_profile") if isinstance(user, UserRequest) else (
        "user_profile",)
    for name in optional:                      # optional: sent only when given (absent = zeros = the prior)
        value = getattr(user, name)
        if value is not None:
            tensors.add_array(name, "FP32", value)
    return tensors


def decode(result: Any, user: UserRequest | IdRequest, req: RecommendRequest, served: Served, model: str,
           latency_ms: float) -> Recommendations:
    scores = result.as_numpy("scores")                      # (C,)
    tasks = {name: result.as_numpy(name) for name in TASK_OUTPUTS}
    explanation = result.as_numpy("explanation")            # (C, H); None when the caller asked for none
    topics = result.as_numpy("user_topics")                 # (K,)
    if isinstance(user, IdRequest):
        hist_ids, cand_ids = user.history_id, user.candidate_id
        if req.retrieves:                                   # the server chose the candidates: their ids
            cand_ids = [i.decode("utf-8") for i in result.as_numpy("item_id")]
        new = user.new_items
        hist_text = [new[i][0] if i in new else "" for i in hist_ids] if new else [""] * len(hist_ids)
        cand_text = [new[i][0] if i in new else "" for i in cand_ids] if new else [""] * len(cand_ids)
        cand_cat = [new[i][1] if i in new else "" for i in cand_ids] if new else [""] * len(cand_ids)
        source = [ITEM_SOURCES[s] for s in result.as_numpy("item_source").tolist()]     # (H + C,)
    else:
        hist_ids, cand_ids = [""] * len(user.history_text), [""] * len(user.candidate_text)
        hist_text, cand_text, cand_cat = user.history_text, user.candidate_text, user.candidate_category
        source = [""] * (len(hist_ids) + len(cand_ids))
    truncated = result.as_numpy("truncated").tolist()       # (H + C,)
    n_hist = len(hist_ids)
    order = np.argsort(-scores, kind="stable")
    if req.top_k is not None:
        order = order[: max(0, req.top_k)]
    order = order.tolist()
    score_list = scores.tolist()
    task_lists = {k: v.tolist() for k, v in tasks.items()}
    explain = explanation is not None and explanation.size > 0
    item, because = RecommendedItem, Because
    best: list[tuple[list[list[int]], list[list[float]]]] = []    # every row's best history items, sorted once
    rows_read = [0]

    def reasons_of(c: int) -> tuple[list[int], list[float]]:
        # a service reads the top few items: their rows are sorted one by one; past ROWS_ALONE reads, the whole
        # (C, H) matrix once (the same stable order, row by row, either way)
        if best:
            return best[0][0][c], best[0][1][c]
        rows_read[0] += 1
        if rows_read[0] > ROWS_ALONE:
            top = np.argsort(-explanation, axis=1, kind="stable")[:, :EXPLAIN_TOP]
            best.append((top.tolist(), np.take_along_axis(explanation, top, axis=1).tolist()))
            return best[0][0][c], best[0][1][c]
        row = explanation[c]
        top = np.argsort(-row, kind="stable")[:EXPLAIN_TOP]
        return top.tolist(), row[top].tolist()

    def make(c: int) -> RecommendedItem:      # candidate c's item, built when the caller first reads it
        reasons = ()
        if explain:
            top, weights = reasons_of(c)
            reasons = tuple([because(h, hist_text[h], w, hist_ids[h]) for h, w in zip(top, weights)])
        return item(c, cand_text[c], cand_cat[c], score_list[c], {k: v[c] for k, v in task_lists.items()}, reasons,
                    truncated[n_hist + c], cand_ids[c], source[n_hist + c])

    names = served.categories if len(served.categories) == len(topics) else [str(i) for i in range(len(topics))]
    profile = dict(sorted(((names[i] or "<unknown>", p) for i, p in enumerate(topics.tolist())),
                          key=lambda kv: -kv[1]))
    return Recommendations(RankedItems(order, make), model, served.version, profile,
                           tuple(i for i in range(n_hist) if truncated[i]), latency_ms)


# what a call asks for when the caller wants no explanations (RecommendRequest.explain=False): every output but
# the (C, H) explanation matrix; by_id -> the recommend model's outputs, else the genrec ensemble's
ANSWER_OUTPUTS = {by_id: tuple(t.name for t in spec.outputs if t.name != "explanation")
                  for by_id, spec in ((True, RECOMMEND), (False, ENSEMBLE))}


class Call:
    """One ``recommend`` call, the same for the sync and the async client (they differ only in how they wait):
    its model, one deadline for all of it, the checked request, its KServe message (:mod:`genrec.client.wire`:
    built once, reused by every retry), then its decoded answer."""

    def __init__(self, client: ClientBase, req: RecommendRequest):
        self.client, self.req = client, req
        self.model = client.index_model if req.by_id else client.model
        self.start = time.perf_counter()
        self.deadline = time.monotonic() + client.timeout               # one deadline for the whole call

    def prepare(self, served: Served) -> None:
        self.check(served)
        self.encode()

    def check(self, served: Served) -> None:
        """The server's checks and messages, here first (InvalidRequest)."""
        self.served = served
        self.user = prepare(self.req, served.limits, served)

    def encode(self) -> None:
        tensors = wire.Tensors()
        encode_inputs(self.user, tensors, self.req)
        self.message = tensors.request(self.model, None if self.req.explain else ANSWER_OUTPUTS[self.req.by_id])

    def infer(self, grpc):
        """The RPC on the client's channel (tritonclient's stub), as ``fn(remaining_seconds)`` for the client's
        retry loop; returns a :class:`wire.Result`."""
        stub, compression = grpc._client_stub, wire.COMPRESSION[self.client.compression]

        def call(timeout: float):
            try:
                return wire.Result(stub.ModelInfer(self.message, timeout=timeout, compression=compression))
            except grpc_module.RpcError as exc:
                raise wire.server_error(exc) from None
        return call

    def infer_async(self, grpc):
        """:meth:`infer` for the asyncio client (tritonclient.grpc.aio's channel): ``await fn(remaining)``."""
        stub, compression = grpc._client_stub, wire.COMPRESSION[self.client.compression]

        async def call(timeout: float):
            try:
                return wire.Result(await stub.ModelInfer(self.message, timeout=timeout, compression=compression))
            except grpc_module.RpcError as exc:
                raise wire.server_error(exc) from None
        return call

    def decode(self, result) -> Recommendations:
        return decode(result, self.user, self.req, self.served, self.model, (time.perf_counter() - self.start) * 1e3)
