"""``genrec enrich items``: GENRE's content summarizer, offline and cached.

An LLM rewrites each item's title from its title, category, subcategory and abstract into a clearer, more
complete one (GENRE, Liu et al. 2023). Our own short prompt (a 135M model loses the thread in GENRE's long
one), greedy decoding, a bounded answer, and a parser that validates every answer: a usable title is one
line of 3-30 words that names the item (shares a word with its title), is no refusal or chat, and is not
just the category. An unusable answer is a *fallback*: the item keeps its plain title, and the reason is
counted and reported.

Results go to an append-only cache (JSON lines, ``ENRICH_DIR/enrich_cache.jsonl`` by default) keyed by
(task, prompt version, model, content hash), one line flushed per answer: an interrupted run resumes where it
stopped, a re-run or a catalog update pays only for items that are new or edited, and another model or
prompt version never reuses old answers. A request that failed (server down, timeout after retries) is
not cached, so the next run asks again. Every run then writes ``news_enriched.tsv`` beside each
``news.tsv`` (news_id, content hash, enriched title; only usable answers), which the MIND reader overlays
(``genrec.core.mind.iter_news``): training, evaluation and ``index build`` see the enriched title, serving
needs no LLM, and an item without an enrichment (new, edited, or a fallback) keeps its own title.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from genrec.core.mind import ENRICHED_NEWS, NewsItem, content_hash, iter_news
from genrec.llm import DEFAULT_SPEC, LLMBackend, LLMCrashed, LLMError, Messages, backend_from_spec, chat_many

T = TypeVar("T")

ITEMS_TASK = "items"
# Bump when the prompt or the generation settings change: old cache lines are then ignored. (The parser runs
# on the cached raw answers at every run: changing it needs no bump and no new LLM calls.)
ITEMS_PROMPT_VERSION = "items-v1"
CACHE_FILE = "enrich_cache.jsonl"
REPORT_FILE = "enrich_report.json"


@dataclasses.dataclass
class EnrichConfig:
    llm: str = dataclasses.field(default=DEFAULT_SPEC, metadata={
        "help": "which LLM: 'smollm2' (the packaged SmolLM2-135M-Instruct Q4_1, offline, in a worker process), "
                "'gguf:PATH' (any local GGUF chat model) or an OpenAI-compatible base URL http(s)://HOST:PORT/v1 "
                "(vLLM, llama.cpp server, TGI, Ollama) for a real LLM"})
    llm_model: str = dataclasses.field(default="", metadata={
        "help": "model name sent to an HTTP endpoint (default: the first one its /models lists)"})
    api_key_env: str = dataclasses.field(default="", metadata={
        "help": "environment variable holding the endpoint's API key (a key never goes on the command line, "
                "where ps and shell history would show it)"})
    limit: int = dataclasses.field(default=0, metadata={
        "help": "enrich only the first N items (0 = all): a trial of the prompt and the cost before a full run"})
    concurrency: int = dataclasses.field(default=8, metadata={
        "help": "HTTP requests in flight at once: a served LLM batches them; the local model runs one at a time"})
    timeout_s: float = dataclasses.field(default=60.0, metadata={
        "help": "seconds one LLM request may take: an HTTP one is then retried; the local model's worker is "
                "stopped and the run ends with an error (a hung model must not stall the run)"})
    retries: int = dataclasses.field(default=3, metadata={
        "help": "retries of a transient HTTP failure (connection, timeout, 429, 5xx) with exponential backoff; "
                "then the item keeps its plain title for this run and is asked again on the next"})
    max_tokens: int = dataclasses.field(default=40, metadata={
        "help": "most new tokens per answer: a title is short, and a bound keeps a rambling model cheap"})
    threads: int = dataclasses.field(default=1, metadata={
        "help": "CPU threads of the local model (one core: 2-core machines run other work beside it)"})
    cache: str = dataclasses.field(default="", metadata={
        "help": f"the append-only answer cache (default DATA/{CACHE_FILE}); share one between data folders so "
                "the same item is never asked twice"})


def item_messages(item: NewsItem) -> Messages:
    """The summarizer prompt: short, one instruction, the item in one line, no example to copy. (Tried on
    12 ml-100k titles with SmolLM2-135M: a field-per-line prompt made it echo "The Name: <title>"; this one
    gave a descriptive line for all 12.)"""
    sub = item.subcategory.replace("|", ", ")
    text = f'"{item.title}" ({sub or item.category})'
    if item.abstract:
        text += f": {_clip(item.abstract, 50)}"
    return [{"role": "system", "content": "You rewrite titles to be clear and informative. Reply with one line."},
            {"role": "user", "content": f"Rewrite this title so it says what the item is about:\n{text}"}]


def _clip(text: str, words: int) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


_PREFIX = re.compile(r"^\s*(?:\**\s*)?(?:new\s+|rewritten\s+|improved\s+|revised\s+)?title\s*:\s*", re.I)
# 'The title is "X"', 'Rewrite the title to: "X" (Drama)', 'The new title should be X': the answer is what follows
_META = re.compile(r"^(?:(?:the\s+)?(?:new\s+|rewritten\s+|revised\s+)?title\s+(?:is|should\s+be|could\s+be)"
                   r"|rewrite\s+(?:this|the)\s+title\s+(?:to|as))\s*:?\s*", re.I)
_REFUSAL = re.compile(r"\b(i'm sorry|i am sorry|i cannot|i can't|as an ai|language model|here is|here's|"
                      r"sure[,!]|certainly)\b", re.I)
_WORD = re.compile(r"[^\W_]+", re.U)
_STOP = frozenset("the and for with from into about this that its his her their our your are was were has have "
                  "les der die das del los las".split())


def parse_item_title(answer: str, item: NewsItem) -> tuple[str | None, str]:
    """(the enriched title, "ok") for a usable answer, else (None, why it is unusable). Pure and cheap: it is
    applied to the cached raw answers at every run, so a better parser needs no new LLM calls."""
    lines = [ln.strip() for ln in answer.strip().splitlines() if ln.strip()]
    if not lines:
        return None, "empty"
    text = _PREFIX.sub("", _META.sub("", lines[0])).strip().strip("*").strip()
    if text.endswith('".') and text.count('"') == 2:
        text = text[:-1]
    if text[:1] in "\"“" and sum(text.count(q) for q in "\"“”") == 2:      # '"Fargo (1996)" (Crime, Drama)'
        text = text.translate({ord(q): None for q in "\"“”"})
    text = text.strip('"').strip("'").strip()
    if _REFUSAL.search(text):
        return None, "refusal or chat"
    words = _WORD.findall(text.lower())
    if len(words) < 3:
        return None, "too short"
    if len(words) > 40:
        return None, "too long"
    trigrams = list(zip(words, words[1:], words[2:]))
    if len(trigrams) - len(set(trigrams)) >= 2:                    # "a (1950) who is a (1950) who is a ..."
        return None, "repeats itself"
    title_words = _WORD.findall(item.title.lower())
    own = {w for w in title_words if len(w) > 2 and not w.isdigit() and w not in _STOP} or set(title_words)
    if own and not own & set(words):
        return None, "does not name the item"
    if text.lower() in {item.category.lower(), item.subcategory.lower()}:
        return None, "only the category"
    if words == title_words:
        return None, "unchanged"
    return " ".join(text.split()), "ok"


class EnrichCache:
    """Append-only JSON lines; the last line may be cut by an interrupt (skipped and counted)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.damaged = 0
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self.entries[self.key(rec["task"], rec["prompt"], rec["model"], rec["hash"])] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.damaged += 1
        self._fh = None

    @staticmethod
    def key(task: str, prompt: str, model: str, content: str) -> tuple[str, str, str, str]:
        return (task, prompt, model, content)

    def get(self, task: str, prompt: str, model: str, content: str) -> dict[str, Any] | None:
        return self.entries.get(self.key(task, prompt, model, content))

    def append(self, rec: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()
        self.entries[self.key(rec["task"], rec["prompt"], rec["model"], rec["hash"])] = rec

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def data_files(data: str | Path, name: str) -> list[Path]:
    """``DATA/NAME``, or every ``DATA/*/NAME`` (an import's train/ and test/, synth's train/ and dev/): the
    news.tsv files items are enriched from, the behaviors.tsv files users are."""
    data = Path(data)
    if (data / name).is_file():
        return [data / name]
    found = sorted(p for p in data.glob(f"*/{name}") if p.is_file())
    if not found:
        raise FileNotFoundError(f"{data}: no {name} in it or in a subfolder (train/, dev/, test/)")
    return found


def ask_and_cache(answers: Iterable[tuple[int, str | Exception]], todo: Sequence[T], *, name: Callable[[T], str],
                  record: Callable[[T, str], dict[str, Any]], cache: EnrichCache, bar: str | None,
                  unit: str) -> list[str]:
    """Consume ``answers`` ((index into ``todo``, answer or the exception of a failed request), in any order):
    append ``record(todo[i], answer)`` (its "why" is "ok" or a fallback reason) to the cache as each arrives,
    with a progress bar titled ``bar`` (None: none) that counts fallbacks; closes the cache. Returns the failed
    requests ("name: error"): they are not cached, so the next run asks again. Items and users share it.
    A crashed backend (:class:`LLMCrashed`) ends the run with an error that says how many answers of this
    run the cache kept (all of them: one line is flushed per answer) and that the same command resumes."""
    reasons: Counter[str] = Counter()
    failed: list[str] = []
    progress_bar = None
    if bar is not None and todo:
        from genrec.core.progress import progress as make_bar

        progress_bar = make_bar(total=len(todo), desc=bar, unit=unit)
    try:
        for i, answer in answers:
            if isinstance(answer, Exception):
                failed.append(f"{name(todo[i])}: {answer}")
            else:
                rec = record(todo[i], answer)
                reasons[rec["why"]] += 1
                cache.append(rec)
            if progress_bar is not None:
                progress_bar.update(1)
                progress_bar.set_postfix(fallbacks=sum(reasons.values()) - reasons["ok"] + len(failed))
    except LLMCrashed as exc:
        kept = sum(reasons.values())
        raise LLMCrashed(f"{exc}. The {kept} answers of this run before it are kept in {cache.path} (of "
                         f"{len(todo)} asked): the same command resumes after them") from exc
    finally:
        if progress_bar is not None:
            progress_bar.close()
        cache.close()
    return failed

def enrich_items(data: str | Path, cfg: EnrichConfig = EnrichConfig(), *, backend: LLMBackend | None = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Enrich every item of the news files under ``data`` (the first ``cfg.limit``), cache the answers and
    write ``news_enriched.tsv`` beside each news.tsv. Returns the report (also written to DATA/enrich_report.json)."""
    data = Path(data)
    files = data_files(data, "news.tsv")
    items: dict[str, NewsItem] = {}
    for path in files:                             # the same item in train/ and test/ is asked once
        for it in iter_news(path, enriched=False):
            items.setdefault(it.news_id, it)
    todo_all = list(items.values())[: cfg.limit] if cfg.limit > 0 else list(items.values())
    cache = EnrichCache(cfg.cache or data / CACHE_FILE)
    t_load = time.perf_counter()
    own_backend = backend is None
    if backend is None:
        backend = backend_from_spec(cfg.llm, model=cfg.llm_model, api_key_env=cfg.api_key_env,
                                    concurrency=cfg.concurrency, timeout_s=cfg.timeout_s, retries=cfg.retries,
                                    threads=cfg.threads)
    load_s = time.perf_counter() - t_load
    hashes = {it.news_id: content_hash(it) for it in todo_all}
    todo = [it for it in todo_all if cache.get(ITEMS_TASK, ITEMS_PROMPT_VERSION, backend.model_id,
                                               hashes[it.news_id]) is None]
    t0 = time.perf_counter()

    def record(it: NewsItem, answer: str) -> dict[str, Any]:
        title, why = parse_item_title(answer, it)
        return {"task": ITEMS_TASK, "prompt": ITEMS_PROMPT_VERSION, "model": backend.model_id,
                "hash": hashes[it.news_id], "id": it.news_id, "answer": answer, "title": title, "why": why}

    try:
        failed = ask_and_cache(chat_many(backend, [item_messages(it) for it in todo], cfg.max_tokens), todo,
                               name=lambda it: it.news_id, record=record, cache=cache,
                               bar=f"enrich items ({backend.model_id})" if progress else None, unit="item")
    finally:
        if own_backend:
            backend.close()
    seconds = time.perf_counter() - t0
    if failed and len(failed) == len(todo):
        raise LLMError(f"every LLM request failed; first: {failed[0]}")
    # the outputs: every cached answer for an item as it is now, parsed again (so a parser fix needs no LLM)
    written = {}
    for path in files:
        written[str(path.with_name(ENRICHED_NEWS))] = _write_enriched(path, cache, backend.model_id)
    verdicts = Counter()
    for it in todo_all:
        rec = cache.get(ITEMS_TASK, ITEMS_PROMPT_VERSION, backend.model_id, hashes[it.news_id])
        verdicts[parse_item_title(rec["answer"], it)[1] if rec else "request failed"] += 1
    usable = verdicts["ok"]
    report = {
        "task": ITEMS_TASK, "prompt_version": ITEMS_PROMPT_VERSION, "model": backend.model_id,
        "items": len(todo_all), "asked": len(todo), "from_cache": len(todo_all) - len(todo),
        "enriched": usable, "fallbacks": len(todo_all) - usable,
        "fallback_reasons": {k: v for k, v in verdicts.items() if k != "ok"},
        "failed_requests": len(failed), "first_failures": failed[:5],
        "seconds": round(seconds, 2), "model_load_seconds": round(load_s, 2),
        "items_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
        "cache": str(cache.path), "damaged_cache_lines": cache.damaged, "written": written,
    }
    (data / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log(f"enriched {usable}/{len(todo_all)} items ({len(todo)} asked, {len(todo_all) - len(todo)} from the cache, "
        f"{report['fallbacks']} keep their title: {report['fallback_reasons'] or 'none unusable'}"
        f"{f', {len(failed)} requests failed and will be asked again' if failed else ''}) "
        f"in {seconds:.1f} s; report: {data / REPORT_FILE}")
    return report


def _write_enriched(news: Path, cache: EnrichCache, model_id: str) -> int:
    """news_enriched.tsv for one news.tsv: every item with a usable cached answer for its current content.
    Written to a temporary file and renamed, so a reader never sees half a file."""
    out = news.with_name(ENRICHED_NEWS)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for it in iter_news(news, enriched=False):
            h = content_hash(it)
            rec = cache.get(ITEMS_TASK, ITEMS_PROMPT_VERSION, model_id, h)
            title = parse_item_title(rec["answer"], it)[0] if rec else None
            if title:
                fh.write(f"{it.news_id}\t{h}\t{title}\n")
                n += 1
    if n:
        os.replace(tmp, out)
    else:                                      # nothing usable: no file, every item keeps its title
        tmp.unlink()
        out.unlink(missing_ok=True)
    return n
