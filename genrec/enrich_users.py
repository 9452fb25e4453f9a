"""``genrec enrich users`` and ``genrec enrich cold-users``: GENRE's user profiler and personalised generator.

* users (the profiler): the LLM turns a user's history (item titles and categories) into interest topics. The
  topics come from a fixed list derived from the dataset's own categories (:func:`genrec.core.profiles.topic_list`:
  movie genres, product categories, news categories alike); the parser keeps only names from that list (at
  most MAX_TOPICS, in the order the answer names them). Writes ``user_profiles.tsv`` beside each
  ``behaviors.tsv``; the heads take the topics as the ``user_profile`` input (ModelConfig.profiles).
* cold-users (the generator): for a user whose history is shorter than ``--cold-threshold`` items, the LLM
  writes a few titles of items the user may like; the parser keeps usable ones (a title-like line, not a copy
  of a history title, no chat). Writes ``cold_users.tsv``; training extends those short histories with the
  titles (ModelConfig.cold_user_items); serving takes them only as history texts a caller chose to send.

Both as ``enrich items``: our own short prompts (measured on SmolLM2-135M: showing it the topic list makes it
recite the list in order, so the list lives in the parser, not the prompt), greedy, a bounded answer, the
append-only cache keyed by (task, prompt version, model, history hash) so a re-run asks only for users whose
history is new or changed, resumable, progress with ETA, every unusable answer counted by reason and
reported (such a user gets no profile / no synthetic items). ``--ray ADDRESS`` fans the LLM calls out over a
Ray cluster (genrec.raymap, as ``index build --ray``); the driver still owns the cache and the outputs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from genrec.core.mind import Impression, NewsItem, history_key, iter_behaviors, iter_news
from genrec.core.profiles import COLD_USERS_FILE, MAX_GENERATED, MAX_TOPICS, PROFILES_FILE, topic_list, write_overlay
from genrec.enrich import _REFUSAL, _STOP, _WORD, CACHE_FILE, EnrichCache, EnrichConfig, ask_and_cache, data_files
from genrec.llm import LLMBackend, LLMError, Messages, backend_from_spec, chat_many

USERS_TASK, COLD_TASK = "users", "cold-users"
# Bump when a prompt or the generation settings change: old cache lines are then ignored (a parser change
# needs no bump: the parser runs over the cached raw answers at every run).
USERS_PROMPT_VERSION = "users-v1"
COLD_PROMPT_VERSION = "cold-v1"
USERS_REPORT, COLD_REPORT = "enrich_users_report.json", "enrich_cold_users_report.json"
ECHO_TOPICS = 2 * MAX_TOPICS    # an answer naming this many list topics recites the list: not a profile


@dataclasses.dataclass
class UserEnrichConfig(EnrichConfig):
    history_in_prompt: int = dataclasses.field(default=10, metadata={
        "help": "most recent history items shown to the LLM: a 135M model loses the thread in a long prompt"})
    cold_threshold: int = dataclasses.field(default=10, metadata={
        "help": "cold-users: a history shorter than this many items gets LLM-written items (ml-100k: 67 of 819 "
                "users); an empty history gets none (nothing to personalise from; counted)"})
    ray: str = dataclasses.field(default="", metadata={
        "help": "fan the LLM calls out over the Ray cluster at this address (auto, HOST:PORT, ray://HOST:10001): "
                "one model per worker; the driver keeps the cache and writes the outputs. Empty: in process"})
    ray_workers: int = dataclasses.field(default=0, metadata={
        "help": "Ray workers (0 = as many as the cluster's CPUs hold at --ray-cpus-per-worker)"})
    ray_cpus_per_worker: int = dataclasses.field(default=1, metadata={
        "help": "CPUs per Ray worker (and its local model's threads)"})
    ray_chunk: int = dataclasses.field(default=8, metadata={
        "help": "users per Ray task: large enough to hide the round trip, small enough to spread the work"})


# ---------------------------------------------------------------------------------------------- prompts


def _item_line(it: NewsItem) -> str:
    kinds = [k for k in (it.category, *it.subcategory.split("|")) if k]
    kinds = list(dict.fromkeys(k.replace("_", " ") for k in kinds))          # MIND: "sports, football nfl"
    return f"{it.title} ({', '.join(kinds)})" if kinds else it.title


def users_messages(history: list[NewsItem]) -> Messages:
    """The profiler prompt. Tried on 8 ml-100k users with SmolLM2-135M (README): listing the topics in the
    prompt made it recite them in list order for 8 of 8; asking for three words names genres of the history."""
    items = "; ".join(_item_line(it) for it in history)
    return [{"role": "system", "content": "Reply with one short line."},
            {"role": "user", "content": f"A user liked: {items}.\nIn three words, which topics does this user "
                                        "like most?"}]


def cold_messages(history: list[NewsItem]) -> Messages:
    """The generator prompt: titles of a few more items for a short history, on one line."""
    items = "; ".join(_item_line(it) for it in history)
    return [{"role": "system", "content": "Reply with one line."},
            {"role": "user", "content": f"A user liked: {items}.\nName three other titles this user would like, "
                                        "separated by semicolons."}]


# ---------------------------------------------------------------------------------------------- parsers


def _topic_pattern(topic: str) -> re.Pattern:
    """A topic name as a word, case-insensitive, in the forms an answer uses: "Comedy" / "comedies", "Movies" /
    "movie", "Sci-Fi" / "sci-fis"; "_" of MIND-style names as a space."""
    t = topic.lower().replace("_", " ")
    forms = {t, t + "s", t + "es"}
    if t.endswith("y"):
        forms.add(t[:-1] + "ies")
    if t.endswith("s") and len(t) > 3:
        forms.add(t[:-1])
    alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.I)


def parse_profile(answer: str, topics: list[str]) -> tuple[tuple[str, ...], str]:
    """(topics named by the answer, in its order, at most MAX_TOPICS; "ok") or ((), why it is unusable).
    Only names from ``topics`` survive (case-insensitive, plural allowed): the list is the contract."""
    text = " ".join(answer.split())
    if not text:
        return (), "empty"
    if _REFUSAL.search(text):
        return (), "refusal or chat"
    found = []
    for t in topics:
        m = _topic_pattern(t).search(text)
        if m:
            found.append((m.start(), t))
    if not found:
        return (), "no topic from the list"
    if len(found) >= ECHO_TOPICS:
        return (), "recites the topic list"
    return tuple(t for _, t in sorted(found)[:MAX_TOPICS]), "ok"


_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")
_LEAD_IN = re.compile(r"^[^:;]*\b(?:user|like|liked|titles?|here)\b[^:;]*:\s*", re.I)   # "The user would like: "
_KINDS = re.compile(r"\s*\((?!\s*\d{4}\s*\))[^()]*\)\s*$")     # a trailing "(Comedy, Drama)", not "(1997)"


def parse_generated(answer: str, history: list[NewsItem]) -> tuple[tuple[str, ...], str]:
    """(usable titles, at most MAX_GENERATED; "ok") or ((), why none is usable). A usable title names something
    (a word of 3+ letters), has at most 15 words, was not cut off by the token bound, is not a copy of a
    history title, no chat, and no repeat; the kinds the prompt showed in parentheses are dropped."""
    text = " ".join(answer.split())
    if not text:
        return (), "empty"
    if _REFUSAL.search(text):
        return (), "refusal or chat"
    text = _LEAD_IN.sub("", text)
    if not text.strip(" .:;"):
        return (), "only a lead-in"                       # "Here are three other titles that the user would like:"
    own = {" ".join(_WORD.findall(it.title.lower())) for it in history}
    parts = [p for p in re.split(r";|\s\d+[.)]\s", text) if p.strip()]
    if len(parts) == 1 and text.count(",") >= 2 and "(" not in text:   # "A, B, C" when it ignored the semicolons
        parts = text.split(",")
    titles, seen, why = [], set(), Counter()
    for p in parts:
        t = _NUMBERING.sub("", p).strip().strip('."\'“”*').strip()
        if t.count("(") != t.count(")"):
            why["cut off"] += 1
            continue
        t = _KINDS.sub("", t).strip()
        words = _WORD.findall(t.lower())
        key = " ".join(words)
        if not any(len(w) >= 3 and not w.isdigit() and w not in _STOP for w in words) or len(words) > 15:
            why["names nothing"] += 1
        elif key in own:
            why["copies the history"] += 1
        elif key in seen:
            why["repeats itself"] += 1
        elif re.search(r"\b(user|title|titles|liked)\b", t, re.I):
            why["chat"] += 1
        else:
            seen.add(key)
            titles.append(t)
    if not titles:
        return (), f"no usable title ({why.most_common(1)[0][0] if why else 'empty'})"
    return tuple(titles[:MAX_GENERATED]), "ok"


# ---------------------------------------------------------------------------------------------- the runs


@dataclasses.dataclass
class _User:
    user_id: str
    key: str                       # history hash (genrec.core.mind.history_key)
    history: list[NewsItem]        # the items of the history that news.tsv knows, oldest first


def _users(path: Path) -> tuple[dict[str, _User], dict[str, NewsItem]]:
    """The users of one behaviors.tsv, each with its latest history (the one its overlay line is made for)."""
    news = {it.news_id: it for it in iter_news(path.with_name("news.tsv"))}
    latest: dict[str, Impression] = {}
    for imp in iter_behaviors(path):
        latest[imp.user_id] = imp
    return ({u: _User(u, history_key(imp, news), [news[h] for h in imp.history if h in news])
             for u, imp in latest.items()}, news)


class _LLMWorker:
    """A Ray actor: its own backend (one local model per worker), answers for a chunk of prompts."""

    def __init__(self, cfg: UserEnrichConfig) -> None:
        self.backend = _backend(cfg, threads=cfg.ray_cpus_per_worker)
        self.cfg = cfg
        self.done = 0

    def run(self, key: int, payload: list[Messages]) -> tuple[int, list[str | Exception]]:
        out: list[str | Exception] = [""] * len(payload)
        for i, answer in chat_many(self.backend, payload, self.cfg.max_tokens):
            out[i] = answer if isinstance(answer, str) else LLMError(str(answer))
        self.done += len(payload)
        return key, out

    def describe(self) -> dict[str, Any]:
        import socket

        return {"host": socket.gethostname(), "answered": self.done, "model": self.backend.model_id}


def _backend(cfg: EnrichConfig, threads: int | None = None) -> LLMBackend:
    return backend_from_spec(cfg.llm, model=cfg.llm_model, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
                             timeout_s=cfg.timeout_s, retries=cfg.retries,
                             threads=cfg.threads if threads is None else threads)


def _answers(cfg: UserEnrichConfig, backend: LLMBackend | None, requests: list[Messages],
             log: Callable[[str], None]) -> Iterator[tuple[int, str | Exception]]:
    """(index, answer or error) for every request: in process (``backend``), or over Ray (cfg.ray)."""
    if not cfg.ray:
        yield from chat_many(backend, requests, cfg.max_tokens)
        return
    from genrec.raymap import connected, map_chunks, worker_count

    with connected(cfg.ray) as ray:
        workers = worker_count(ray, cfg.ray_cpus_per_worker, cfg.ray_workers, log)
        step = max(1, cfg.ray_chunk)
        chunks = ((start, requests[start:start + step]) for start in range(0, len(requests), step))
        # map_chunks calls back in the driver as chunks finish; a thread drives it so answers stream out
        # of this generator (and into the cache) as they come, as in process
        import queue
        import threading

        q: queue.Queue = queue.Queue()
        box: dict[str, Any] = {}

        def drive() -> None:
            try:
                box["workers"] = map_chunks(ray, _LLMWorker, (cfg,), chunks, lambda k, r: q.put((k, r)),
                                            workers=workers, cpus_per_worker=cfg.ray_cpus_per_worker)
            except BaseException as exc:      # re-raised in the driver below
                box["error"] = exc
            finally:
                q.put(None)

        t = threading.Thread(target=drive, daemon=True)
        t.start()
        while (item := q.get()) is not None:
            start, answers = item
            yield from ((start + j, a) for j, a in enumerate(answers))
        t.join()
        if "error" in box:
            raise box["error"]
        log(f"ray: {workers} workers: {json.dumps(box.get('workers'))}")


def _run(task: str, prompt_version: str, report_file: str, out_file: str, data: str | Path,
         cfg: UserEnrichConfig, select: Callable[[_User], str | None], messages: Callable[[_User], Messages],
         parse: Callable[[str, _User], tuple[tuple[str, ...], str]], backend: LLMBackend | None, progress: bool,
         log: Callable[[str], None]) -> dict[str, Any]:
    data = Path(data)
    files = data_files(data, "behaviors.tsv")
    per_file = {path: _users(path)[0] for path in files}
    users: dict[str, _User] = {}
    skipped: Counter[str] = Counter()
    for table in per_file.values():                  # the same (user, history) in train/ and test/ is asked once
        for u in table.values():
            users.setdefault(f"{u.user_id}\t{u.key}", u)
    chosen = []
    for u in users.values():
        why = select(u)
        if why is None:
            chosen.append(u)
        else:
            skipped[why] += 1
    todo_all = chosen[: cfg.limit] if cfg.limit > 0 else chosen
    cache = EnrichCache(cfg.cache or data / CACHE_FILE)
    t_load = time.perf_counter()
    own_backend = backend is None
    if backend is None and not cfg.ray:
        backend = _backend(cfg)
    load_s = time.perf_counter() - t_load
    model_id = backend.model_id if backend is not None else _model_id(cfg)
    todo = [u for u in todo_all if cache.get(task, prompt_version, model_id, u.key) is None]
    t0 = time.perf_counter()

    def record(u: _User, answer: str) -> dict[str, Any]:
        values, why = parse(answer, u)
        return {"task": task, "prompt": prompt_version, "model": model_id, "hash": u.key, "id": u.user_id,
                "answer": answer, "values": list(values), "why": why}

    try:
        failed = ask_and_cache(_answers(cfg, backend, [messages(u) for u in todo], log), todo,
                               name=lambda u: u.user_id, record=record, cache=cache,
                               bar=f"enrich {task} ({model_id})" if progress else None, unit="user")
    finally:
        if own_backend and backend is not None:
            backend.close()
    seconds = time.perf_counter() - t0
    if failed and len(failed) == len(todo):
        raise LLMError(f"every LLM request failed; first: {failed[0]}")
    # the outputs: every cached answer for a user's history as it is now, parsed again (a parser fix needs no LLM)
    verdicts: Counter[str] = Counter()
    parsed: dict[str, tuple[str, ...]] = {}
    for u in todo_all:
        rec = cache.get(task, prompt_version, model_id, u.key)
        values, why = parse(rec["answer"], u) if rec else ((), "request failed")
        verdicts[why] += 1
        if values:
            parsed[f"{u.user_id}\t{u.key}"] = values
    written = {}
    for path, table in per_file.items():
        rows = ((u.user_id, u.key, parsed[k]) for u in table.values() if (k := f"{u.user_id}\t{u.key}") in parsed)
        written[str(path.with_name(out_file))] = write_overlay(path.with_name(out_file), rows)
    usable = verdicts["ok"]
    report = {
        "task": task, "prompt_version": prompt_version, "model": model_id,
        "users": len(users), "not_selected": dict(skipped), "selected": len(todo_all),
        "asked": len(todo), "from_cache": len(todo_all) - len(todo), "enriched": usable,
        "fallbacks": len(todo_all) - usable, "fallback_reasons": {k: v for k, v in verdicts.items() if k != "ok"},
        "failed_requests": len(failed), "first_failures": failed[:5],
        "seconds": round(seconds, 2), "model_load_seconds": round(load_s, 2),
        "users_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
        "ray": cfg.ray or None, "cache": str(cache.path), "damaged_cache_lines": cache.damaged, "written": written,
    }
    (data / report_file).write_text(json.dumps(report, indent=2) + "\n")
    log(f"{task}: {usable}/{len(todo_all)} users enriched ({len(todo)} asked, {len(todo_all) - len(todo)} from the "
        f"cache; {report['fallbacks']} fall back to none: {report['fallback_reasons'] or 'none unusable'}"
        f"{f'; not selected: {dict(skipped)}' if skipped else ''}"
        f"{f', {len(failed)} requests failed and will be asked again' if failed else ''}) in {seconds:.1f} s; "
        f"report: {data / report_file}")
    return report


def _model_id(cfg: EnrichConfig) -> str:
    """The cache's model id without loading the model in the driver (Ray: the workers load it)."""
    from genrec.llm import DEFAULT_SPEC, _file_tag, smollm2_path

    spec = (cfg.llm or DEFAULT_SPEC).strip()
    if spec == DEFAULT_SPEC:
        return _file_tag(smollm2_path())
    if spec.startswith("gguf:"):
        return _file_tag(Path(spec[len("gguf:"):]))
    return _backend(cfg).model_id                    # HTTP: asks the endpoint's /models (cheap)


def enrich_users(data: str | Path, cfg: UserEnrichConfig = UserEnrichConfig(), *,
                 backend: LLMBackend | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Profile every user with a history under ``data`` (the first ``cfg.limit``); writes user_profiles.tsv
    beside each behaviors.tsv and DATA/enrich_users_report.json (also returned, with the topic list)."""
    categories = []
    for path in data_files(data, "behaviors.tsv"):
        categories += [it.category for it in iter_news(path.with_name("news.tsv"), enriched=False)]
    topics = topic_list(categories)
    if not topics:
        raise LLMError(f"{data}: the items have no categories: there is no topic list to profile users with")
    report = _run(USERS_TASK, USERS_PROMPT_VERSION, USERS_REPORT, PROFILES_FILE, data, cfg,
                  lambda u: None if u.history else "empty history",
                  lambda u: users_messages(u.history[-cfg.history_in_prompt:]),
                  lambda answer, u: parse_profile(answer, topics), backend, progress, log)
    report["topics"] = topics
    (Path(data) / USERS_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def enrich_cold_users(data: str | Path, cfg: UserEnrichConfig = UserEnrichConfig(), *,
                      backend: LLMBackend | None = None, progress: bool = True,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write a few item titles for every user whose history is shorter than ``cfg.cold_threshold`` (not empty);
    cold_users.tsv beside each behaviors.tsv, DATA/enrich_cold_users_report.json."""
    def select(u: _User) -> str | None:
        if not u.history:
            return "empty history"
        return None if len(u.history) < cfg.cold_threshold else f"history of {cfg.cold_threshold}+ items"

    return _run(COLD_TASK, COLD_PROMPT_VERSION, COLD_REPORT, COLD_USERS_FILE, data, cfg, select,
                lambda u: cold_messages(u.history[-cfg.history_in_prompt:]),
                lambda answer, u: parse_generated(answer, u.history), backend, progress, log)
