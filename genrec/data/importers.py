"""Importers: real interaction logs -> MIND-format ``train/`` and ``test/`` folders.

Everything else in genrec reads MIND folders (:mod:`genrec.core.mind`); these importers turn MovieLens
releases and any CSV/Parquet interaction table (e-commerce, ads, finance, content) into that format with
one fixed evaluation protocol, so figures compare across datasets.

Protocol (``../shared/data/ml-100k/README.md``), explicit feedback (a rating or a 0/1 label column):

* Labels: rating >= ``positive_threshold`` -> 1, else 0 (or the 0/1 label as given). Real negatives,
  nothing sampled.
* Per user, interactions are sorted by (time, item id); numeric ids compare as numbers. The first
  ``int(n * history_fraction)`` supply the history: positives only, oldest first, the most recent
  ``max_history`` kept (``histories_truncated`` counts the users cut). The history is the same for
  every impression of the user.
* The remaining interactions are cut into impressions of ``impression_size`` consecutive ones; a
  user's last piece may be shorter (kept: ``impressions_short``; ``--no-keep-short-impressions`` drops
  it, counted as ``impressions_dropped_short``; ml-100k gives 1882 impressions with them, 1364 without).
  An impression is kept only when it has at least one 1 and one 0 (the others are counted as
  ``impressions_dropped_all_positive`` / ``..._all_negative``). Candidates keep their time order.
* An impression's time is the time of its LAST interaction, so everything in it happened at or before
  that time (item statistics computed later use "strictly before an impression's time").
* All impressions are sorted by (time, user id) and numbered 1..N in that order: the first
  ``int(N * (1 - test_fraction))`` go to ``OUT/train/behaviors.tsv``, the rest to
  ``OUT/test/behaviors.tsv``; every train impression's time is <= every test impression's time.
  (Validation for early stopping is cut from train by ``genrec train`` itself.)
* Both folders get the same full ``news.tsv`` (every catalog item, interacted with or not).

Implicit feedback (a table without rating or label column): every interaction is a positive. The
history is the first ``int(n * history_fraction)`` interactions (most recent ``max_history``); each later
interaction becomes one impression of 1 + ``implicit_negatives`` candidates at that interaction's time.
Negatives are drawn uniformly, without replacement, from the items that occur anywhere in the log,
excluding every item the user ever interacted with (so a negative is never a later purchase), with
``numpy.random.default_rng(seed)`` over users in id order: same input + seed, same files. Candidate
order within an impression is shuffled with the same generator (position must not give the label
away). A user with too few untouched items gets fewer negatives (``negatives_short``).

Times are written as UTC in MIND's ``%m/%d/%Y %I:%M:%S %p`` (second resolution; sorting uses the full
precision). Item text: ``title`` is the title column, ``abstract`` the text column (MovieLens: the
summary from ``--summaries``); tabs and line breaks inside texts become spaces (``texts_sanitized``);
an item with neither title nor text gets the placeholder title ``item <id>`` (``items_without_text``), because the
MIND reader rejects text-less items.

MovieLens layouts (:func:`import_movielens`, chosen by which files ``RAW`` holds):

* 100K (``u.data``): ``u.data`` tab-separated ``user, item, rating, unix_time``; ``u.item``
  pipe-separated, Latin-1, ``id|title|release|video release|url|19 genre flags``, genre names from
  ``u.genre`` (``name|index``). The IMDb url goes into the url column.
* newer releases (``ratings.csv``: ml-latest, ml-20m, ml-25m, ml-32m): ``ratings.csv`` with header
  ``userId,movieId,rating,timestamp`` (half stars); ``movies.csv`` with ``movieId,title,genres``,
  genres ``A|B|C``, ``(no genres listed)`` = none; UTF-8, quoted CSV.

Category = first genre, subcategory = all genres joined with ``|`` (``Action|Adventure|Sci-Fi``: the
same spelling as ``movies.csv``; MIND fields only forbid tabs). An item without genres gets empty
ones (the vocabulary's unknown bucket; ``items_without_category``). ``--summaries FILE`` is a CSV with
``movie_title,wiki_summary`` matched on the exact title; the summary becomes the abstract.

Generic tables (:func:`import_table`): an items file and an interactions file, CSV (``.tsv`` = tab)
or Parquet (needs pyarrow or pandas, neither a genrec dependency), column names from
:class:`TableColumns`. Time is unix seconds or ISO-8601 (``--time-format``).

Errors, one policy: a malformed value (unparsable number or time, an id with whitespace, a missing
column, a duplicate item id, a short line) stops the import with :class:`DataImportError` naming
file, line (a Parquet file's 1-based row) and column, because a file that is wrong somewhere is wrong
in ways a count cannot repair.
An interaction whose item is not in the catalog is a gap between two exports, not a malformed line:
it is left out, counted (``interactions_unknown_item``) and reported with its first file:line
examples, or stops the import with ``--fail-on-unknown-items``. Nothing is dropped without a count;
``OUT/import_report.json`` holds every count.

Memory: everything is held in Python objects (a few hundred bytes per interaction): fine for 100K to
1M, several GB for MovieLens 25M.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from genrec.core.contract import MAX_HISTORY
from genrec.core.errors import UserError
from genrec.core.mind import TIME_FORMAT


class DataImportError(UserError, ValueError):
    """An input file cannot be imported; the message names file, line and column where it can."""


@dataclasses.dataclass
class ImportConfig:
    history_fraction: float = dataclasses.field(default=0.8, metadata={
        "help": "per user, the earliest fraction of interactions that only supplies the history "
                "(positives only); the rest becomes impressions"})
    max_history: int = dataclasses.field(default=MAX_HISTORY, metadata={
        "help": "most recent history positives kept per user (the serving contract's limit)"})
    impression_size: int = dataclasses.field(default=10, metadata={
        "help": "consecutive explicit interactions per impression (a user's last piece may be shorter)"})
    keep_short_impressions: bool = dataclasses.field(default=True, metadata={
        "help": "keep a user's incomplete last piece as a shorter impression (as the ml-100k reference "
                "figures do); off: drop it, counted"})
    test_fraction: float = dataclasses.field(default=0.2, metadata={
        "help": "latest fraction of impressions (by time) written to test/; the rest to train/"})
    positive_threshold: float = dataclasses.field(default=4.0, metadata={
        "help": "a rating >= this is a click (label 1), below it a real non-click (MovieLens: 4 of 5 stars)"})
    implicit_negatives: int = dataclasses.field(default=9, metadata={
        "help": "implicit feedback only: sampled non-interacted items per positive impression "
                "(9 gives impressions of 10, like the explicit protocol)"})
    seed: int = dataclasses.field(default=0, metadata={
        "help": "seed of the implicit-negative sampling; same input + seed, same files"})
    fail_on_unknown_items: bool = dataclasses.field(default=False, metadata={
        "help": "stop at an interaction whose item is not in the catalog instead of counting and reporting it"})
    new_items: float = dataclasses.field(default=0.0, metadata={
        "help": "development splits with new items (the regime of news, launches, ads, new films): items drawn at "
                "random (seed) launch at the training cut, until this share of the test candidates is new; their "
                "training interactions are dropped, counted. 0 = the log as it is (ml-100k: 3 %% new)"})

    def validate(self) -> None:
        checks = [
            (0.0 <= self.history_fraction < 1.0, "history_fraction must be in [0, 1)"),
            (0.0 < self.test_fraction < 1.0, "test_fraction must be in (0, 1)"),
            (self.max_history >= 0, "max_history must be >= 0"),
            (self.impression_size >= 2, "impression_size must be >= 2 (an impression needs a 1 and a 0)"),
            (self.implicit_negatives >= 1, "implicit_negatives must be >= 1"),
            (0.0 <= self.new_items < 1.0, "new_items must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise DataImportError(f"bad import config: {message}")


@dataclasses.dataclass
class TableColumns:
    user_col: str = dataclasses.field(default="user_id", metadata={
        "help": "interactions: column with the user id"})
    item_col: str = dataclasses.field(default="item_id", metadata={
        "help": "interactions: column with the item id"})
    time_col: str = dataclasses.field(default="timestamp", metadata={
        "help": "interactions: column with the time (see --time-format)"})
    rating_col: str = dataclasses.field(default="", metadata={
        "help": "interactions: explicit rating, thresholded by --positive-threshold "
                "(neither rating nor label = implicit feedback)"})
    label_col: str = dataclasses.field(default="", metadata={
        "help": "interactions: explicit 0/1 (or true/false) label, e.g. clicked or not"})
    item_id_col: str = dataclasses.field(default="", metadata={
        "help": "items: column with the item id (empty = same name as --item-col)"})
    title_col: str = dataclasses.field(default="title", metadata={
        "help": "items: title / name, the text the language model reads first"})
    text_col: str = dataclasses.field(default="", metadata={
        "help": "items: longer text (description, abstract), written as the MIND abstract"})
    category_col: str = dataclasses.field(default="", metadata={
        "help": "items: coarse category (empty = none: the unknown bucket)"})
    subcategory_col: str = dataclasses.field(default="", metadata={
        "help": "items: fine category"})
    time_format: str = dataclasses.field(default="auto", metadata={
        "help": "auto (numbers = unix seconds, else ISO-8601), unix, unix_ms, iso, or a strptime "
                "pattern such as %%d.%%m.%%Y %%H:%%M; zone-less times are taken as UTC"})
    delimiter: str = dataclasses.field(default="auto", metadata={
        "help": "CSV field separator (auto: tab for .tsv/.tab files, comma otherwise)"})


@dataclasses.dataclass
class ImportReport:
    """Every count of one import: what was read, kept, dropped and why. Written as import_report.json."""

    source: str = ""
    layout: str = ""
    feedback: str = ""                       # explicit | implicit
    out_dir: str = ""
    users: int = 0                           # users with at least one interaction kept
    items: int = 0                           # catalog items written to news.tsv
    items_interacted: int = 0
    interactions: int = 0                    # interaction rows read
    interactions_used: int = 0
    interactions_unknown_item: int = 0       # left out: item not in the catalog
    unknown_item_examples: list[str] = dataclasses.field(default_factory=list)
    positives: int = 0
    negatives: int = 0
    history_interactions: int = 0            # interactions in the history part (any label)
    history_positives: int = 0               # history items written (after the max_history cut)
    histories_truncated: int = 0             # users whose history positives exceeded max_history
    history_items_truncated: int = 0
    users_without_history: int = 0
    users_without_impressions: int = 0
    impressions_built: int = 0
    impressions_kept: int = 0
    impressions_dropped_all_positive: int = 0
    impressions_dropped_all_negative: int = 0
    impressions_short: int = 0               # kept impressions shorter than impression_size (a user's last)
    impressions_dropped_short: int = 0       # incomplete last pieces dropped (--no-keep-short-impressions)
    interactions_in_dropped_pieces: int = 0
    negatives_sampled: int = 0               # implicit feedback only
    negatives_short: int = 0                 # implicit impressions with fewer negatives than asked
    train_impressions: int = 0
    test_impressions: int = 0
    train_time_range: list[str] = dataclasses.field(default_factory=list)
    test_time_range: list[str] = dataclasses.field(default_factory=list)
    train_users: int = 0
    test_users: int = 0
    test_users_unseen_in_train: int = 0
    items_held_out: int = 0                  # items launched at the training cut (ImportConfig.new_items)
    train_candidates_held_out: int = 0       # their training candidate slots and history entries, left out
    train_history_held_out: int = 0
    train_impressions_dropped_held_out: int = 0   # training impressions left without a click or a non-click
    test_candidates: int = 0                 # candidate slots of the test impressions
    test_candidates_new: int = 0             # of them: items in no training impression (candidate or history)
    test_clicks: int = 0
    test_clicks_new: int = 0
    items_without_text: int = 0
    items_without_category: int = 0
    texts_sanitized: int = 0                 # item fields with tabs/line breaks replaced by spaces
    summaries_rows: int = 0
    summaries_matched: int = 0               # catalog items that got a summary
    summaries_unmatched_rows: int = 0        # summary rows whose title matches no item
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        r = self
        lines = [
            f"imported {r.source} ({r.layout}, {r.feedback} feedback) -> {r.out_dir}",
            f"  users {r.users}, items {r.items} ({r.items_interacted} interacted), interactions {r.interactions} "
            f"read, {r.interactions_used} used ({r.positives} positive, {r.negatives} negative)",
            f"  history: {r.history_positives} positives from {r.history_interactions} interactions; "
            f"{r.histories_truncated} users cut to {r.config.get('max_history')} "
            f"({r.history_items_truncated} items), {r.users_without_history} users without history",
            f"  impressions: {r.impressions_kept} kept of {r.impressions_built} "
            f"(dropped {r.impressions_dropped_all_positive} all-positive, {r.impressions_dropped_all_negative} "
            f"all-negative), {r.impressions_short} kept are a user's shorter last piece; "
            f"{r.impressions_dropped_short} incomplete pieces ({r.interactions_in_dropped_pieces} interactions) "
            f"left out",
            f"  train {r.train_impressions} impressions ({r.train_users} users, {' .. '.join(r.train_time_range)}), "
            f"test {r.test_impressions} ({r.test_users} users, {r.test_users_unseen_in_train} not in train, "
            f"{' .. '.join(r.test_time_range)})",
            f"  new items in test (in no training impression): {r.test_candidates_new} of {r.test_candidates} "
            f"candidates ({_share(r.test_candidates_new, r.test_candidates)}), {r.test_clicks_new} of "
            f"{r.test_clicks} clicks ({_share(r.test_clicks_new, r.test_clicks)})"
            + (f"; {r.items_held_out} items launched at the training cut (their {r.train_candidates_held_out} "
               f"training candidates, {r.train_history_held_out} history entries and "
               f"{r.train_impressions_dropped_held_out} impressions left without both labels were left out)"
               if r.items_held_out else ""),
            f"  items: {r.items_without_text} without text, {r.items_without_category} without category, "
            f"{r.texts_sanitized} fields with tabs/line breaks replaced",
        ]
        if r.feedback == "implicit":
            lines.append(f"  negatives: {r.negatives_sampled} sampled, {r.negatives_short} impressions short of "
                         f"{r.config.get('implicit_negatives')}")
        if r.summaries_rows:
            lines.append(f"  summaries: {r.summaries_matched} items matched, {r.summaries_unmatched_rows} of "
                         f"{r.summaries_rows} rows matched no title")
        if r.interactions_unknown_item:
            lines.append(f"  {r.interactions_unknown_item} interactions with an item not in the catalog left out "
                         f"(first: {'; '.join(r.unknown_item_examples)})")
        if r.users_without_impressions:
            lines.append(f"  {r.users_without_impressions} users have no impression kept (history only)")
        return "\n".join(lines)


class NegativeSampler:
    """Seeded non-interacted items for one user: ``pool`` items not in ``seen`` (``free`` of them). Rejection
    sampling while most of the pool is free, else a draw from the free items, listed once per user."""

    def __init__(self, pool: list[str], seen: set[str], free: int, rng: np.random.Generator):
        self.pool, self.seen, self.free, self.rng = pool, seen, free, rng
        self._free_items: list[str] | None = None

    def draw(self, k: int) -> list[str]:
        """k distinct negatives (fewer when fewer are free)."""
        pool, rng = self.pool, self.rng
        if self.free >= 4 * k:       # rejection sampling: cheap while most of the catalog is untouched
            chosen: list[str] = []
            taken = set(self.seen)
            while len(chosen) < k:
                item = pool[int(rng.integers(len(pool)))]
                if item not in taken:
                    taken.add(item)
                    chosen.append(item)
            return chosen
        if self._free_items is None:
            self._free_items = [i for i in pool if i not in self.seen]
        free = self._free_items
        return [free[i] for i in rng.choice(len(free), size=min(k, len(free)), replace=False)]


def _share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "-"


@dataclasses.dataclass
class _Item:
    item_id: str
    category: str
    subcategory: str
    title: str
    abstract: str = ""
    url: str = ""


# (time in unix seconds, item sort key, item id, label: 1/0, or 1 for implicit)
_Event = tuple[float, tuple, str, int]

_BREAKS = re.compile(r"[\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_MIN_TIME, _MAX_TIME = -62135596800.0, 253402300799.0   # 0001-01-01 .. 9999-12-31 (datetime's range)


def _natural(value: str) -> tuple:
    """Sort key: numeric ids as numbers (MovieLens "9" < "10"), then everything else as text."""
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


# ----------------------------------------------------------------------------------------------- reading


class _Source:
    """Where a value came from, for error messages: ``file:line: column 'c': ...``."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, line: int, column: str, message: str) -> DataImportError:
        where = f"{self.path}:{line}" if line else str(self.path)
        return DataImportError(f"{where}: column {column!r}: {message}" if column else f"{where}: {message}")


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataImportError(f"{path}: {what} not found")
    return path


def _read_table(path: Path, columns: dict[str, str], *, delimiter: str = "auto",
                encoding: str = "utf-8-sig") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line, {column: value}) for the named columns of a CSV (header row) or Parquet file.

    ``columns`` maps the flag that named a column to the column name, so a missing column's error says
    which flag to fix and lists the columns the file has. CSV values are strings; Parquet values keep
    their types (numbers, datetimes). The line of a Parquet row is its 1-based row number.
    """
    _require_file(path, "file")
    wanted = {flag: name for flag, name in columns.items() if name}
    if path.suffix.lower() in (".parquet", ".pq"):
        yield from _read_parquet(path, wanted)
        return
    sep = delimiter if delimiter != "auto" else ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    if sep == "\\t":
        sep = "\t"
    with open(path, encoding=encoding, newline="") as fh:
        reader = csv.reader(fh, delimiter=sep)
        try:
            header = next(reader)
        except StopIteration:
            raise DataImportError(f"{path}: empty file (expected a header row)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataImportError(f"{path}:1: cannot read the header: {exc}") from None
        header = [h.strip() for h in header]
        index = _column_index(path, header, wanted)
        last = reader.line_num
        while True:
            start = last + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                raise DataImportError(f"{path}:{start}: cannot read the line: {exc}") from None
            last = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataImportError(f"{path}:{start}: expected {len(header)} fields like the header, got {len(row)}")
            yield start, {name: row[i] for name, i in index.items()}


def _column_index(path: Path, header: list[str], wanted: dict[str, str]) -> dict[str, int]:
    missing = [f"{name!r} ({flag})" for flag, name in wanted.items() if name not in header]
    if missing:
        raise DataImportError(f"{path}:1: missing column(s) {', '.join(missing)}; columns found: "
                              f"{', '.join(header)}")
    return {name: header.index(name) for name in wanted.values()}


def _read_parquet(path: Path, wanted: dict[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    problems = []
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        pq = None
        problems.append(f"pyarrow: {exc}")
    if pq is not None:
        pf = pq.ParquetFile(path)
        _column_index(path, list(pf.schema_arrow.names), wanted)
        names = list(dict.fromkeys(wanted.values()))
        row = 0
        for batch in pf.iter_batches(columns=names):
            for record in batch.to_pylist():
                row += 1
                yield row, record
        return
    try:
        import pandas as pd
    except ImportError as exc:
        problems.append(f"pandas: {exc}")
        raise DataImportError(f"{path}: reading Parquet needs pyarrow or pandas (neither is a genrec dependency; "
                              f"pip install pyarrow, or convert the file to CSV): {'; '.join(problems)}") from None
    frame = pd.read_parquet(path)
    _column_index(path, [str(c) for c in frame.columns], wanted)
    names = list(dict.fromkeys(wanted.values()))
    for row, record in enumerate(frame[names].to_dict("records"), start=1):
        yield row, {k: (None if _is_missing(v) else (v.to_pydatetime() if hasattr(v, "to_pydatetime") else v))
                    for k, v in record.items()}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str:
    return "" if _is_missing(value) else str(value)


def _parse_id(src: _Source, line: int, column: str, value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)          # Parquet/pandas float ids: 12.0 -> "12"
    text = _text(value).strip()
    if not text:
        raise src.error(line, column, "empty id")
    if any(ch.isspace() for ch in text):
        raise src.error(line, column, f"id {text!r} contains whitespace (MIND ids are space-separated)")
    return text


def _parse_user(src: _Source, line: int, column: str, value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = _text(value).strip()
    if not text:
        raise src.error(line, column, "empty user id")
    if _BREAKS.search(text):
        raise src.error(line, column, f"user id {text!r} contains a tab or line break")
    return text


def _parse_number(src: _Source, line: int, column: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or _is_missing(value):
        raise src.error(line, column, f"missing {what}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise src.error(line, column, f"bad {what} {_text(value)!r} (expected a number)") from None
    if not math.isfinite(number):
        raise src.error(line, column, f"bad {what} {_text(value)!r} (not finite)")
    return number


_TRUE, _FALSE = {"1", "1.0", "true", "yes", "y", "t"}, {"0", "0.0", "false", "no", "n", "f"}


def _parse_label(src: _Source, line: int, column: str, value: Any) -> int:
    text = _text(value).strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise src.error(line, column, f"bad label {_text(value)!r} (expected 0/1 or true/false)")


def _parse_time(src: _Source, line: int, column: str, value: Any, fmt: str) -> float:
    """Unix seconds (UTC) from unix seconds/milliseconds, ISO-8601, a strptime pattern or a datetime."""
    if isinstance(value, datetime):
        seconds = _epoch(value)
    elif _is_missing(value) or not _text(value).strip():
        raise src.error(line, column, "missing time")
    else:
        text = _text(value).strip()
        numeric = isinstance(value, int | float) or bool(_NUMBER.match(text))
        try:
            if fmt in ("unix", "unix_ms") or (fmt == "auto" and numeric):
                if not numeric:
                    raise ValueError
                seconds = float(text) / (1000.0 if fmt == "unix_ms" else 1.0)
            elif fmt in ("iso", "auto"):
                seconds = _epoch(datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text))
            else:
                seconds = _epoch(datetime.strptime(text, fmt))
        except ValueError:
            expected = {"auto": "unix seconds or ISO-8601 like 2019-11-15T08:55:22", "unix": "unix seconds",
                        "unix_ms": "unix milliseconds", "iso": "ISO-8601 like 2019-11-15T08:55:22"}.get(fmt, fmt)
            raise src.error(line, column, f"bad time {text!r} (expected {expected})") from None
    if not _MIN_TIME <= seconds <= _MAX_TIME:
        raise src.error(line, column, f"time {_text(value)!r} is out of range as {fmt} "
                                      f"(milliseconds? use --time-format unix_ms)")
    return seconds


def _epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _format_time(seconds: float) -> str:
    return datetime.fromtimestamp(math.floor(seconds), UTC).strftime(TIME_FORMAT)


# --------------------------------------------------------------------------------------------- building


class _Builder:
    """Collects the catalog and the interactions, then applies the protocol and writes the folders."""

    def __init__(self, cfg: ImportConfig, report: ImportReport):
        cfg.validate()
        self.cfg = cfg
        self.report = report
        self.items: dict[str, _Item] = {}
        self.item_lines: dict[str, int] = {}
        self.events: dict[str, list[_Event]] = defaultdict(list)
        self.implicit = False

    # catalog --------------------------------------------------------------------------------------
    def add_item(self, src: _Source, line: int, column: str, item: _Item) -> None:
        if item.item_id in self.items:
            raise src.error(line, column, f"duplicate item id {item.item_id!r} (first on line "
                                          f"{self.item_lines[item.item_id]})")
        for field in ("category", "subcategory", "title", "abstract", "url"):
            text = getattr(item, field)
            clean = _BREAKS.sub(" ", text).strip()
            if clean != text.strip():
                self.report.texts_sanitized += 1
            setattr(item, field, clean)
        self.items[item.item_id] = item
        self.item_lines[item.item_id] = line

    # interactions ---------------------------------------------------------------------------------
    def add_event(self, src: _Source, line: int, column: str, user: str, item: str, time: float,
                  label: int) -> None:
        self.report.interactions += 1
        if item not in self.items:
            message = f"{src.path}:{line}: item {item!r} is not in the catalog"
            if self.cfg.fail_on_unknown_items:
                raise src.error(line, column, f"item {item!r} is not in the catalog (--fail-on-unknown-items)")
            self.report.interactions_unknown_item += 1
            if len(self.report.unknown_item_examples) < 5:
                self.report.unknown_item_examples.append(message)
            return
        self.events[user].append((time, _natural(item), item, label))

    # protocol -------------------------------------------------------------------------------------
    def write(self, out_dir: Path) -> ImportReport:
        cfg, rep = self.cfg, self.report
        rep.feedback = "implicit" if self.implicit else "explicit"
        rep.out_dir = str(out_dir)
        rep.config = dataclasses.asdict(cfg)
        rep.items = len(self.items)
        rep.users = len(self.events)
        if not self.events:
            raise DataImportError(f"{rep.source}: no interactions to import "
                                  f"({rep.interactions_unknown_item} referred to items not in the catalog)")
        impressions: list[tuple[float, tuple, str, list[str], list[str], list[int]]] = []
        rng = np.random.default_rng(cfg.seed)
        pool = sorted({e[2] for evs in self.events.values() for e in evs}, key=_natural)
        rep.items_interacted = len(pool)
        for user in sorted(self.events, key=_natural):
            evs = sorted(self.events[user])
            rep.interactions_used += len(evs)
            rep.positives += sum(e[3] for e in evs)
            n_hist = int(len(evs) * cfg.history_fraction)
            rep.history_interactions += n_hist
            history = [e[2] for e in evs[:n_hist] if e[3] == 1]
            if len(history) > cfg.max_history:
                rep.histories_truncated += 1
                rep.history_items_truncated += len(history) - cfg.max_history
                history = history[len(history) - cfg.max_history:]
            rep.history_positives += len(history)
            rep.users_without_history += not history
            rest = evs[n_hist:]
            before = len(impressions)
            if self.implicit:
                self._implicit_impressions(user, history, evs, rest, pool, rng, impressions)
            else:
                self._explicit_impressions(user, history, rest, impressions)
            rep.users_without_impressions += len(impressions) == before
        rep.negatives = rep.interactions_used - rep.positives
        rep.impressions_kept = len(impressions)
        if not impressions:
            raise DataImportError(f"{rep.source}: no impression survives the protocol (built "
                                  f"{rep.impressions_built}; see the counts in the report)")
        impressions.sort(key=lambda imp: (imp[0], imp[1]))
        n_train = int(len(impressions) * (1.0 - cfg.test_fraction))
        if n_train == 0 or n_train == len(impressions):
            raise DataImportError(f"{rep.source}: {len(impressions)} impressions cannot be split into train "
                                  f"and test with test_fraction={cfg.test_fraction}")
        splits = {"train": impressions[:n_train], "test": impressions[n_train:]}
        if cfg.new_items:
            splits["train"] = self._hold_out_new_items(splits["train"], splits["test"])
        out_dir.mkdir(parents=True, exist_ok=True)
        news = self._news_lines()
        number = 0
        for name, imps in splits.items():
            folder = out_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "news.tsv").write_text(news, encoding="utf-8")
            with open(folder / "behaviors.tsv", "w", encoding="utf-8", newline="\n") as fh:
                for time, _key, user, history, candidates, labels in imps:
                    number += 1
                    cands = " ".join(f"{c}-{lab}" for c, lab in zip(candidates, labels, strict=True))
                    fh.write(f"{number}\t{user}\t{_format_time(time)}\t{' '.join(history)}\t{cands}\n")
        rep.train_impressions, rep.test_impressions = len(splits["train"]), len(splits["test"])
        rep.train_time_range = [_format_time(splits["train"][0][0]), _format_time(splits["train"][-1][0])]
        rep.test_time_range = [_format_time(splits["test"][0][0]), _format_time(splits["test"][-1][0])]
        train_users = {imp[2] for imp in splits["train"]}
        test_users = {imp[2] for imp in splits["test"]}
        rep.train_users, rep.test_users = len(train_users), len(test_users)
        rep.test_users_unseen_in_train = len(test_users - train_users)
        seen = {c for imp in splits["train"] for c in (*imp[3], *imp[4])}
        for imp in splits["test"]:
            for c, lab in zip(imp[4], imp[5], strict=True):
                rep.test_candidates += 1
                rep.test_clicks += lab
                rep.test_candidates_new += c not in seen
                rep.test_clicks_new += lab and c not in seen
        (out_dir / "import_report.json").write_text(json.dumps(rep.as_dict(), indent=2) + "\n", encoding="utf-8")
        return rep

    def _hold_out_new_items(self, train: list, test: list) -> list:
        """ImportConfig.new_items: random items (seed) launch at the training cut: they leave the training
        impressions (candidates and histories; impressions left without a 1 and a 0 are dropped, counted) until
        that share of the test candidates is new. Test impressions keep them, histories included."""
        seen = {c for imp in train for c in (*imp[3], *imp[4])}
        counts: dict[str, int] = defaultdict(int)
        for imp in test:
            for c in imp[4]:
                counts[c] += 1
        total = sum(counts.values())
        share = sum(n for c, n in counts.items() if c not in seen) / total
        held: set[str] = set()
        order = np.random.default_rng([self.cfg.seed, 1]).permutation(len(counts))
        pool = sorted(counts, key=_natural)
        for j in order:
            if share >= self.cfg.new_items:
                break
            if pool[j] in seen:
                held.add(pool[j])
                share += counts[pool[j]] / total
        rep = self.report
        rep.items_held_out = len(held)
        kept = []
        for time, key, user, history, cands, labels in train:
            hist = [h for h in history if h not in held]
            pairs = [(c, lab) for c, lab in zip(cands, labels, strict=True) if c not in held]
            rep.train_history_held_out += len(history) - len(hist)
            rep.train_candidates_held_out += len(cands) - len(pairs)
            if 0 < sum(lab for _, lab in pairs) < len(pairs):
                kept.append((time, key, user, hist, [c for c, _ in pairs], [lab for _, lab in pairs]))
            else:
                rep.train_impressions_dropped_held_out += 1
        return kept

    def _explicit_impressions(self, user: str, history: list[str], rest: list[_Event], out: list) -> None:
        rep, size = self.report, self.cfg.impression_size
        user_key = _natural(user)
        for start in range(0, len(rest), size):
            piece = rest[start:start + size]
            if len(piece) < size and not self.cfg.keep_short_impressions:
                rep.impressions_dropped_short += 1
                rep.interactions_in_dropped_pieces += len(piece)
                continue
            rep.impressions_built += 1
            labels = [e[3] for e in piece]
            if all(labels):
                rep.impressions_dropped_all_positive += 1
            elif not any(labels):
                rep.impressions_dropped_all_negative += 1
            else:
                rep.impressions_short += len(piece) < size
                out.append((piece[-1][0], user_key, user, history, [e[2] for e in piece], labels))

    def _implicit_impressions(self, user: str, history: list[str], evs: list[_Event], rest: list[_Event],
                              pool: list[str], rng: np.random.Generator, out: list) -> None:
        rep, k = self.report, self.cfg.implicit_negatives
        user_key = _natural(user)
        seen = {e[2] for e in evs}
        sampler = NegativeSampler(pool, seen, len(pool) - len(seen), rng)
        for e in rest:
            rep.impressions_built += 1
            chosen = sampler.draw(k)
            rep.negatives_short += len(chosen) < k
            if not chosen:
                rep.impressions_dropped_all_positive += 1
                continue
            rep.negatives_sampled += len(chosen)
            candidates = [e[2]] + chosen
            labels = [1] + [0] * len(chosen)
            order = rng.permutation(len(candidates))
            out.append((e[0], user_key, user, history, [candidates[i] for i in order], [labels[i] for i in order]))

    def _news_lines(self) -> str:
        rep = self.report
        lines = []
        for item_id in sorted(self.items, key=_natural):
            it = self.items[item_id]
            title = it.title
            if not title and not it.abstract:
                rep.items_without_text += 1
                title = f"item {item_id}"
            rep.items_without_category += not it.category
            lines.append(f"{item_id}\t{it.category}\t{it.subcategory}\t{title}\t{it.abstract}\t{it.url}\t\t\n")
        return "".join(lines)


# ------------------------------------------------------------------------------------------- MovieLens


def import_movielens(raw_dir: str | Path, out_dir: str | Path, cfg: ImportConfig = ImportConfig(), *,
                     summaries: str | Path | None = None) -> ImportReport:
    """Convert a MovieLens release (100K layout or ratings.csv/movies.csv) into ``out_dir/{train,test}``."""
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise DataImportError(f"{raw}: MovieLens folder not found")
    report = ImportReport(source=str(raw))
    builder = _Builder(cfg, report)
    if (raw / "u.data").is_file():
        report.layout = "movielens-100k"
        _movielens_100k(raw, builder)
    elif (raw / "ratings.csv").is_file():
        report.layout = "movielens-csv"
        _movielens_csv(raw, builder)
    else:
        found = ", ".join(sorted(p.name for p in raw.iterdir())[:20]) or "nothing"
        raise DataImportError(f"{raw}: not a MovieLens folder: expected u.data + u.item + u.genre (100K) or "
                              f"ratings.csv + movies.csv (newer releases); found {found}")
    if summaries is not None:
        _add_summaries(Path(summaries), builder)
    return builder.write(Path(out_dir))


def _movielens_100k(raw: Path, builder: _Builder) -> None:
    genre_path = _require_file(raw / "u.genre", "u.genre (genre names of u.item's flags)")
    genres: dict[int, str] = {}
    src = _Source(genre_path)
    for line, text in _plain_lines(genre_path, "latin-1"):
        name, sep, index = text.rpartition("|")
        if not sep or not index.strip().isdigit() or not name.strip():
            raise src.error(line, "", f"expected 'genre|index', got {text!r}")
        genres[int(index)] = name.strip()
    if sorted(genres) != list(range(len(genres))):
        raise src.error(0, "", f"genre indices must be 0..{len(genres) - 1}, got {sorted(genres)}")
    names = [genres[i] for i in range(len(genres))]
    n_fields = 5 + len(names)

    item_path = _require_file(raw / "u.item", "u.item (the movie catalog)")
    src = _Source(item_path)
    for line, text in _plain_lines(item_path, "latin-1"):
        fields = text.split("|")
        if len(fields) != n_fields:
            raise src.error(line, "", f"expected {n_fields} |-separated fields (id|title|release|video|url|"
                                      f"{len(names)} genre flags), got {len(fields)}")
        item_id = _parse_id(src, line, "movie id (field 1)", fields[0])
        flags = fields[5:]
        chosen = []
        for j, (flag, genre) in enumerate(zip(flags, names, strict=True)):
            if flag.strip() not in ("0", "1"):
                raise src.error(line, f"genre {genre} (field {6 + j})", f"bad genre flag {flag!r} (expected 0 or 1)")
            if flag.strip() == "1":
                chosen.append(genre)
        builder.add_item(src, line, "movie id (field 1)",
                         _Item(item_id, chosen[0] if chosen else "", "|".join(chosen), fields[1].strip(),
                               url=fields[4].strip()))

    data_path = _require_file(raw / "u.data", "u.data (the ratings)")
    src = _Source(data_path)
    threshold = builder.cfg.positive_threshold
    for line, text in _plain_lines(data_path, "latin-1"):
        fields = text.split("\t")
        if len(fields) != 4:
            raise src.error(line, "", f"expected 4 tab-separated fields (user, item, rating, unix_time), "
                                      f"got {len(fields)}")
        user = _parse_user(src, line, "user (field 1)", fields[0])
        item = _parse_id(src, line, "item (field 2)", fields[1])
        rating = _parse_number(src, line, "rating (field 3)", fields[2], "rating")
        time = _parse_time(src, line, "unix_time (field 4)", fields[3], "unix")
        builder.add_event(src, line, "item (field 2)", user, item, time, int(rating >= threshold))


def _movielens_csv(raw: Path, builder: _Builder) -> None:
    movies = _require_file(raw / "movies.csv", "movies.csv (the movie catalog, next to ratings.csv)")
    src = _Source(movies)
    for line, row in _read_table(movies, {"id": "movieId", "title": "title", "genres": "genres"}):
        item_id = _parse_id(src, line, "movieId", row["movieId"])
        text = row["genres"].strip()
        chosen = [] if text in ("", "(no genres listed)") else [g.strip() for g in text.split("|") if g.strip()]
        builder.add_item(src, line, "movieId", _Item(item_id, chosen[0] if chosen else "", "|".join(chosen),
                                                     row["title"].strip()))
    ratings = raw / "ratings.csv"
    src = _Source(ratings)
    threshold = builder.cfg.positive_threshold
    for line, row in _read_table(ratings, {"user": "userId", "item": "movieId", "rating": "rating",
                                           "time": "timestamp"}):
        user = _parse_user(src, line, "userId", row["userId"])
        item = _parse_id(src, line, "movieId", row["movieId"])
        rating = _parse_number(src, line, "rating", row["rating"], "rating")
        time = _parse_time(src, line, "timestamp", row["timestamp"], "unix")
        builder.add_event(src, line, "movieId", user, item, time, int(rating >= threshold))


def _plain_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    with open(path, encoding=encoding, newline="\n") as fh:
        for line, text in enumerate(fh, start=1):
            text = text.rstrip("\r\n")
            if text.strip():
                yield line, text


def _add_summaries(path: Path, builder: _Builder) -> None:
    """Summaries CSV (``movie_title,wiki_summary``): exact-title match; the summary becomes the abstract."""
    by_title: dict[str, list[_Item]] = defaultdict(list)
    for item in builder.items.values():
        by_title[item.title].append(item)
    rep = builder.report
    matched: set[str] = set()
    for _line, row in _read_table(path, {"title": "movie_title", "summary": "wiki_summary"}):
        rep.summaries_rows += 1
        title = row["movie_title"].strip()
        summary = _BREAKS.sub(" ", row["wiki_summary"]).strip()
        if summary != row["wiki_summary"].strip():
            rep.texts_sanitized += 1
        items = by_title.get(title, [])
        if not items:
            rep.summaries_unmatched_rows += 1
        for item in items:
            if item.item_id not in matched and summary:
                item.abstract = summary
                matched.add(item.item_id)
    rep.summaries_matched = len(matched)


# --------------------------------------------------------------------------------------- generic tables


def import_table(items_path: str | Path, interactions_path: str | Path, out_dir: str | Path,
                 cfg: ImportConfig = ImportConfig(), columns: TableColumns = TableColumns()) -> ImportReport:
    """Convert an items table + an interactions table (CSV or Parquet) into ``out_dir/{train,test}``."""
    cols = columns
    if cols.rating_col and cols.label_col:
        raise DataImportError("give either --rating-col or --label-col, not both")
    for flag in ("user_col", "item_col", "time_col", "title_col"):
        if not getattr(cols, flag):
            raise DataImportError(f"--{flag.replace('_', '-')} must name a column")
    items_path, interactions_path = Path(items_path), Path(interactions_path)
    report = ImportReport(source=f"{items_path} + {interactions_path}", layout="table")
    builder = _Builder(cfg, report)
    builder.implicit = not (cols.rating_col or cols.label_col)

    id_col = cols.item_id_col or cols.item_col
    src = _Source(items_path)
    wanted = {"--item-id-col": id_col, "--title-col": cols.title_col, "--text-col": cols.text_col,
              "--category-col": cols.category_col, "--subcategory-col": cols.subcategory_col}
    for line, row in _read_table(items_path, wanted, delimiter=cols.delimiter):
        item_id = _parse_id(src, line, id_col, row[id_col])
        builder.add_item(src, line, id_col, _Item(
            item_id,
            _text(row.get(cols.category_col)).strip() if cols.category_col else "",
            _text(row.get(cols.subcategory_col)).strip() if cols.subcategory_col else "",
            _text(row[cols.title_col]).strip(),
            _text(row.get(cols.text_col)).strip() if cols.text_col else ""))

    src = _Source(interactions_path)
    wanted = {"--user-col": cols.user_col, "--item-col": cols.item_col, "--time-col": cols.time_col,
              "--rating-col": cols.rating_col, "--label-col": cols.label_col}
    threshold = cfg.positive_threshold
    for line, row in _read_table(interactions_path, wanted, delimiter=cols.delimiter):
        user = _parse_user(src, line, cols.user_col, row[cols.user_col])
        item = _parse_id(src, line, cols.item_col, row[cols.item_col])
        time = _parse_time(src, line, cols.time_col, row[cols.time_col], cols.time_format)
        if cols.rating_col:
            label = int(_parse_number(src, line, cols.rating_col, row[cols.rating_col], "rating") >= threshold)
        elif cols.label_col:
            label = _parse_label(src, line, cols.label_col, row[cols.label_col])
        else:
            label = 1
        builder.add_event(src, line, cols.item_col, user, item, time, label)
    return builder.write(Path(out_dir))
