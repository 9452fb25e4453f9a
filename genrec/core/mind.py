"""MIND-format readers (Microsoft News Dataset layout), streaming and strict.

news.tsv:      news_id, category, subcategory, title, abstract, url, title_entities, abstract_entities
behaviors.tsv: impression_id, user_id, time (``11/15/2019 8:55:22 AM``), history (space-separated ids,
               may be empty), impressions (``N123-1 N456-0``; test sets may omit the ``-label`` part)

Both readers are generators over lines, so large files never need to fit in memory at once. A
malformed line raises :class:`MindFormatError` naming file and line, unless ``skip_bad_lines`` is set,
in which case it is counted in a :class:`LineReport` that the caller prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from genrec.core.contract import MAX_HISTORY  # noqa: F401  (default: most recent history items kept per impression)
from genrec.core.errors import UserError

T = TypeVar("T")

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


class MindFormatError(UserError, ValueError):
    """A line of a MIND file could not be parsed; the message names file and line number."""


@dataclasses.dataclass
class LineReport:
    """How many lines a reader accepted and skipped (only non-zero skips when skip_bad_lines)."""

    path: str
    read: int = 0
    skipped: int = 0
    first_errors: list[str] = dataclasses.field(default_factory=list)

    def record(self, message: str) -> None:
        self.skipped += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(message)

    def summary(self) -> str:
        text = f"{self.path}: {self.read} lines read, {self.skipped} skipped"
        if self.first_errors:
            text += " (first: " + "; ".join(self.first_errors) + ")"
        return text


@dataclasses.dataclass(frozen=True)
class NewsItem:
    news_id: str
    category: str
    subcategory: str
    title: str
    abstract: str


@dataclasses.dataclass(frozen=True)
class Impression:
    impression_id: str
    user_id: str
    time: datetime
    history: tuple[str, ...]          # oldest first, already cut to the most recent MAX_HISTORY
    candidates: tuple[str, ...]
    labels: tuple[int, ...] | None    # None when the file carries no labels (MIND test set)
    history_truncated: int = 0        # how many older history items were dropped
    profile: tuple[str, ...] = ()     # LLM interest topics (user_profiles.tsv; genrec.core.profiles), () = none
    generated: tuple[str, ...] = ()   # LLM-written item titles for a short history (cold_users.tsv), () = none


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", newline="\n") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line


def _parsed(path: str | Path, parse: Callable[[Path, int, str], T], skip_bad_lines: bool,
            report: LineReport | None) -> Iterator[T]:
    """``parse`` every non-blank line; a malformed one fails, or is counted in ``report`` and skipped."""
    path = Path(path)
    report = report if report is not None else LineReport(str(path))
    for lineno, line in _lines(path):
        try:
            item = parse(path, lineno, line)
        except MindFormatError as exc:
            if not skip_bad_lines:
                raise
            report.record(str(exc))
            continue
        report.read += 1
        yield item


def iter_news(path: str | Path, *, skip_bad_lines: bool = False, report: LineReport | None = None,
              enriched: bool = True) -> Iterator[NewsItem]:
    """Items of ``path``; where ``news_enriched.tsv`` lies beside it (``genrec enrich items``), an item whose
    content hash matches its line there carries the LLM-rewritten title. Any other item -- new since the
    enrichment, edited, or one whose answer was unusable -- keeps its own title: no LLM is needed here."""
    items = _parsed(path, _parse_news, skip_bad_lines, report)
    overlay = read_enriched(Path(path).with_name(ENRICHED_NEWS)) if enriched else {}
    if not overlay:
        return items
    return (dataclasses.replace(it, title=overlay[it.news_id][1])
            if it.news_id in overlay and overlay[it.news_id][0] == content_hash(it) else it for it in items)


ENRICHED_NEWS = "news_enriched.tsv"    # news_id <TAB> content hash <TAB> enriched title, beside news.tsv


def content_hash(item: NewsItem) -> str:
    """What an enrichment of ``item`` was made from (category, subcategory, title, abstract): 16 hex digits."""
    text = "\t".join((item.category, item.subcategory, item.title, item.abstract))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_enriched(path: Path) -> dict[str, tuple[str, str]]:
    """news_id -> (content hash, enriched title) from a ``news_enriched.tsv``; {} when there is none."""
    if not path.is_file():
        return {}
    out: dict[str, tuple[str, str]] = {}
    for lineno, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != 3 or not fields[2].strip():
            raise MindFormatError(f"{path}:{lineno}: expected news_id, content hash, enriched title "
                                  f"(3 tab-separated fields), got {len(fields)}")
        out[fields[0]] = (fields[1], fields[2].strip())
    return out


def _parse_news(path: Path, lineno: int, line: str) -> NewsItem:
    fields = line.split("\t")
    if len(fields) < 4:
        raise MindFormatError(f"{path}:{lineno}: expected 8 tab-separated fields "
                              f"(news_id, category, subcategory, title, abstract, ...), got {len(fields)}")
    news_id, category, subcategory, title = (f.strip() for f in fields[:4])
    abstract = fields[4].strip() if len(fields) > 4 else ""
    if not news_id:
        raise MindFormatError(f"{path}:{lineno}: empty news_id")
    if not title and not abstract:
        raise MindFormatError(f"{path}:{lineno}: news {news_id} has neither title nor abstract")
    return NewsItem(news_id, category, subcategory, title, abstract)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text.strip(), TIME_FORMAT)


def iter_behaviors(path: str | Path, *, skip_bad_lines: bool = False, max_history: int = MAX_HISTORY,
                   report: LineReport | None = None) -> Iterator[Impression]:
    return _parsed(path, lambda p, n, line: _parse_behavior(p, n, line, max_history), skip_bad_lines, report)


def _parse_behavior(path: Path, lineno: int, line: str, max_history: int) -> Impression:
    fields = line.split("\t")
    where = f"{path}:{lineno}"
    if len(fields) != 5:
        raise MindFormatError(f"{where}: expected 5 tab-separated fields "
                              f"(impression_id, user_id, time, history, impressions), got {len(fields)}")
    imp_id, user_id, time_text, history_text, impressions_text = fields
    try:
        time = parse_time(time_text)
    except ValueError:
        raise MindFormatError(f"{where}: bad time {time_text!r}, expected like '11/15/2019 8:55:22 AM'") from None
    history = tuple(history_text.split())
    dropped = max(0, len(history) - max_history)
    history = history[dropped:]
    candidates: list[str] = []
    labels: list[int] = []
    tokens = impressions_text.split()
    if not tokens:
        raise MindFormatError(f"{where}: impression {imp_id} has no candidates")
    labelled = None
    for tok in tokens:
        news_id, sep, label = tok.rpartition("-")
        has_label = bool(sep) and label in ("0", "1")
        if labelled is None:
            labelled = has_label
        elif labelled != has_label:
            raise MindFormatError(f"{where}: impression {imp_id} mixes labelled and unlabelled candidates ({tok!r})")
        if has_label:
            candidates.append(news_id)
            labels.append(int(label))
        else:
            if sep and not label.isalnum():
                raise MindFormatError(f"{where}: bad candidate {tok!r}, expected NEWSID-0 or NEWSID-1")
            candidates.append(tok)
    return Impression(imp_id.strip(), user_id.strip(), time, history, tuple(candidates),
                      tuple(labels) if labelled else None, dropped)


@dataclasses.dataclass
class MindSplit:
    """One MIND folder (news.tsv + behaviors.tsv) read into memory."""

    news: dict[str, NewsItem]
    impressions: list[Impression]
    reports: list[LineReport]

    @property
    def has_labels(self) -> bool:
        return bool(self.impressions) and self.impressions[0].labels is not None


def split_paths(data_dir: str | Path) -> tuple[Path, Path]:
    data_dir = Path(data_dir)
    news, behaviors = data_dir / "news.tsv", data_dir / "behaviors.tsv"
    for p in (news, behaviors):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: --data must be a MIND folder with news.tsv and behaviors.tsv")
    return news, behaviors


def load_split(data_dir: str | Path, *, skip_bad_lines: bool = False,
               max_history: int = MAX_HISTORY) -> MindSplit:
    news_path, beh_path = split_paths(data_dir)
    news_report, beh_report = LineReport(str(news_path)), LineReport(str(beh_path))
    news = {n.news_id: n for n in iter_news(news_path, skip_bad_lines=skip_bad_lines, report=news_report)}
    impressions = list(iter_behaviors(beh_path, skip_bad_lines=skip_bad_lines, max_history=max_history,
                                      report=beh_report))
    return MindSplit(news, overlay_users(impressions, news, beh_path.parent), [news_report, beh_report])


def history_key(imp: Impression, news: dict[str, NewsItem]) -> str:
    """What a user profile / cold-user items of ``imp`` were made from: its history ids and their contents."""
    from genrec.core.profiles import history_hash

    return history_hash([(h, content_hash(news[h]) if h in news else "") for h in imp.history])


def overlay_users(impressions: list[Impression], news: dict[str, NewsItem], folder: Path) -> list[Impression]:
    """Attach ``user_profiles.tsv`` topics and ``cold_users.tsv`` titles (``genrec enrich users`` /
    ``cold-users``) to the impressions whose history hash matches; any other impression keeps none."""
    from genrec.core.profiles import COLD_USERS_FILE, PROFILES_FILE, read_overlay

    profiles, cold = read_overlay(folder / PROFILES_FILE), read_overlay(folder / COLD_USERS_FILE)
    if not profiles and not cold:
        return impressions
    keys: dict[tuple[str, ...], str] = {}
    out = []
    for imp in impressions:
        key = keys.get(imp.history) or keys.setdefault(imp.history, history_key(imp, news))
        prof, gen = profiles.get(imp.user_id), cold.get(imp.user_id)
        out.append(dataclasses.replace(imp, profile=prof[1] if prof and prof[0] == key else (),
                                       generated=gen[1] if gen and gen[0] == key else ()))
    return out
