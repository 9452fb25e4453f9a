"""Leave-one-out importer: ReChorus-style splits with fixed sampled negatives -> MIND train/, dev/, test/.

The layout (ReChorus, and LRD which adds item text; e.g. ``../shared/data/amazon-office-lrd``), all files
tab-separated with a header unless said otherwise:

* ``train.csv``: ``user_id  item_id  time`` -- implicit interactions (every row is a positive), time in unix
  seconds; a user's rows are taken in time order, ties in file order (the files are written sorted by time).
* ``dev.csv`` / ``test.csv``: ``user_id  item_id  time  neg_items`` -- one row per user: the user's held-out
  item (dev: second-to-last interaction, test: last) and ``neg_items``, a list ``[12, 7, 33]`` of sampled items
  the user never interacted with (ReChorus: 99, drawn with replacement, so duplicates occur).
* ``<name>.item2index`` (no header): ``external_id  item_id`` -- the catalog: every item id of the other
  files, with its real id (an Amazon ASIN), which becomes the MIND ``news_id``.
* ``<name>.text``: ``id  text`` keyed by the external id -- the item text, written as the MIND title.
* ``item_meta.csv`` (optional): ``item_id  i_category  i_brand ...`` -- label-encoded ids;
  category = ``category-<i_category>``, subcategory = ``brand-<i_brand>`` (the column name without ``i_``).
  The names are not in the files (the LRD text ends with the leaf category and the brand, not separable),
  so the ids are the tokens. A brand of ``missing_subcategory`` (``0``: the LRD notebook's encoding of an
  item without brand) is written empty: the unknown bucket, not one giant brand.

Protocol -- training sees the same kind of task as evaluation, one clicked item among sampled non-clicks:

* ``train/``: per user, every train interaction after the first ``min_history`` becomes one impression at
  its time: history = the user's earlier train items (the most recent ``max_history``), candidates = the
  item + ``train_negatives`` items drawn uniformly without replacement from the items of ``train.csv``,
  excluding every item the user ever interacted with (train, dev and test: a negative is never a later
  purchase), with ``numpy.random.default_rng(seed)`` over users in id order; candidate order shuffled by the
  same generator. Same input + seed, same files. Items seen only in dev/test are never training negatives:
  they stay new to the model, as they would be in serving.
* ``dev/`` (the validation split): history = all the user's train items (most recent ``max_history``),
  candidates = the dev item + its fixed negatives, labels 1/0, shuffled (seeded).
* ``test/``: history = train items + the dev item, candidates = the test item + its fixed negatives.
* Fixed negatives: duplicates are dropped by default (a slate never shows an item twice, and AUC over
  distinct items is what serving sees); ``keep_duplicate_negatives`` keeps all of them (the ReChorus
  100-candidate lists exactly). Either way they are counted. A negative that is not in the catalog, equals
  the held-out item or is one of the user's interactions is dropped and counted (a wrong label otherwise).
* Impressions are sorted by (time, user id) per split and numbered 1..N across train, dev, test.

Everything read, kept and dropped is counted in :class:`LeaveOneOutReport` (``OUT/import_report.json``);
the share of dev/test candidates that occur in no training impression (candidate or history) is
reported as the "new items" share. A malformed line stops the import with :class:`DataImportError`
naming file, line and column. An id that is not in the catalog is counted and left out (train rows,
negatives) or drops its dev/test row (held-out item), or stops the import with ``fail_on_unknown_items``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from genrec.core.contract import MAX_HISTORY
from genrec.data.importers import (
    DataImportError,
    ImportConfig,
    ImportReport,
    NegativeSampler,
    _Builder,
    _format_time,
    _Item,
    _natural,
    _parse_id,
    _parse_time,
    _parse_user,
    _read_table,
    _require_file,
    _Source,
)

LAYOUT = "rechorus-leave-one-out"
SPLITS = ("train", "dev", "test")
_LIST = re.compile(r"^\[\s*(?:[^,\s\[\]]+(?:\s*,\s*[^,\s\[\]]+)*)?\s*\]$")


@dataclasses.dataclass
class LeaveOneOutConfig:
    max_history: int = dataclasses.field(default=MAX_HISTORY, metadata={
        "help": "most recent history items kept per impression (the serving contract's limit)"})
    min_history: int = dataclasses.field(default=1, metadata={
        "help": "train.csv: a user's first N interactions only supply history; each later one becomes a "
                "training impression"})
    train_negatives: int = dataclasses.field(default=9, metadata={
        "help": "sampled non-interacted items per training impression (dev/test keep their fixed negatives)"})
    keep_duplicate_negatives: bool = dataclasses.field(default=False, metadata={
        "help": "keep repeated fixed negatives of a dev/test row (the ReChorus lists exactly, 100 candidates); "
                "off: each item once per impression, duplicates counted"})
    category_col: str = dataclasses.field(default="i_category", metadata={
        "help": "item_meta.csv column written as the category (category-<id>)"})
    subcategory_col: str = dataclasses.field(default="i_brand", metadata={
        "help": "item_meta.csv column written as the subcategory (brand-<id> for i_brand)"})
    missing_subcategory: str = dataclasses.field(default="0", metadata={
        "help": "subcategory value that means none (the LRD notebook encodes a missing brand as 0): written "
                "empty, the unknown bucket; empty = every value is real"})
    seed: int = dataclasses.field(default=0, metadata={
        "help": "seed of the training negatives and of the candidate order; same input + seed, same files"})
    fail_on_unknown_items: bool = dataclasses.field(default=False, metadata={
        "help": "stop at an item id that is not in the catalog instead of counting and leaving it out"})

    def validate(self) -> None:
        checks = [
            (self.max_history >= 0, "max_history must be >= 0"),
            (self.min_history >= 1, "min_history must be >= 1 (a training impression needs a history)"),
            (self.train_negatives >= 1, "train_negatives must be >= 1"),
            (bool(self.category_col) and bool(self.subcategory_col), "category_col and subcategory_col must name "
                                                                      "item_meta.csv columns"),
        ]
        for ok, message in checks:
            if not ok:
                raise DataImportError(f"bad leave-one-out config: {message}")


@dataclasses.dataclass
class SplitCounts:
    """One held-out split (dev or test): rows read, impressions written, and what was dropped."""

    rows: int = 0
    impressions: int = 0
    users_without_train: int = 0            # impression written with an empty (dev) or dev-only (test) history
    users_without_dev: int = 0              # test only: history without the dev item (the user has no dev row)
    dropped_unknown_item: int = 0           # held-out item not in the catalog: the row is left out
    dropped_no_negatives: int = 0           # no negative left: nothing to rank, left out
    histories_truncated: int = 0
    negatives_read: int = 0
    negatives_duplicate: int = 0            # repeats within a row: dropped (or kept: keep_duplicate_negatives)
    negatives_unknown_item: int = 0         # dropped
    negatives_equal_positive: int = 0       # dropped
    negatives_interacted: int = 0           # one of the user's own interactions: dropped
    negatives_kept: int = 0
    candidates: int = 0
    candidates_new: int = 0                 # in no training impression (candidate or history)
    clicks: int = 0
    clicks_new: int = 0
    time_range: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LeaveOneOutReport(ImportReport):
    """ImportReport's counts for train.csv plus the dev/test splits and the catalog files."""

    dev_impressions: int = 0
    dev: SplitCounts = dataclasses.field(default_factory=SplitCounts)
    test: SplitCounts = dataclasses.field(default_factory=SplitCounts)
    train_candidates: int = 0
    train_histories_truncated: int = 0      # training impressions whose history was cut to max_history
    text_rows_not_in_catalog: int = 0       # <name>.text rows whose id has no item2index entry: left out
    meta_rows: int = 0
    meta_rows_not_in_catalog: int = 0       # item_meta.csv rows whose item_id is not in item2index: left out
    items_without_meta: int = 0             # catalog items without an item_meta.csv row (empty category)
    items_without_subcategory: int = 0      # no item_meta row, or the missing_subcategory value

    def summary(self) -> str:
        r = self
        lines = [
            f"imported {r.source} ({r.layout}, implicit feedback) -> {r.out_dir}",
            f"  catalog: {r.items} items ({r.items_interacted} in train.csv), {r.items_without_text} without text, "
            f"{r.items_without_meta} without item_meta row, {r.items_without_subcategory} without brand; "
            f"left out: {r.text_rows_not_in_catalog} text rows and {r.meta_rows_not_in_catalog} item_meta rows "
            f"not in the catalog",
            f"  train.csv: {r.interactions} rows, {r.users} users, {r.interactions_unknown_item} with an item not "
            f"in the catalog left out; {r.users_without_impressions} users with <= {r.config.get('min_history')} "
            f"interactions give no training impression",
            f"  train: {r.train_impressions} impressions, {r.train_users} users, {r.train_candidates} candidates "
            f"({r.negatives_sampled} sampled negatives, {r.negatives_short} impressions short of "
            f"{r.config.get('train_negatives')}), {r.train_histories_truncated} histories cut to "
            f"{r.config.get('max_history')}, {' .. '.join(r.train_time_range)}",
        ]
        keep = r.config.get("keep_duplicate_negatives")
        for name in ("dev", "test"):
            s: SplitCounts = getattr(r, name)
            lines.append(
                f"  {name}: {s.impressions} impressions of {s.rows} rows (left out: {s.dropped_unknown_item} "
                f"held-out item not in the catalog, {s.dropped_no_negatives} without negatives); "
                f"{s.users_without_train} users without train history"
                + (f", {s.users_without_dev} without a dev item" if name == "test" else "")
                + f"; negatives: {s.negatives_read} read, {s.negatives_duplicate} duplicates "
                f"{'kept' if keep else 'dropped'}, dropped {s.negatives_unknown_item} not in the catalog, "
                f"{s.negatives_equal_positive} equal to the held-out item, {s.negatives_interacted} the user's own; "
                f"{s.negatives_kept} kept")
            lines.append(
                f"    new items (in no training impression): {s.candidates_new} of {s.candidates} candidates "
                f"({_share(s.candidates_new, s.candidates)}), {s.clicks_new} of {s.clicks} clicks "
                f"({_share(s.clicks_new, s.clicks)}); {' .. '.join(s.time_range)}")
        if r.unknown_item_examples:
            lines.append("  unknown ids, first: " + "; ".join(r.unknown_item_examples))
        return "\n".join(lines)


def _share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "-"


# (time, external item id) of one train interaction, in file order within equal times
_Interaction = tuple[float, str]
# (time, user sort key, user, history, candidates, labels)
_Impression = tuple[float, tuple, str, list[str], list[str], list[int]]


def import_leave_one_out(raw_dir: str | Path, out_dir: str | Path,
                         cfg: LeaveOneOutConfig = LeaveOneOutConfig()) -> LeaveOneOutReport:
    """Convert a ReChorus/LRD leave-one-out folder into ``out_dir/{train,dev,test}`` + ``import_report.json``."""
    cfg.validate()
    raw, out = Path(raw_dir), Path(out_dir)
    if not raw.is_dir():
        raise DataImportError(f"{raw}: leave-one-out folder not found")
    report = LeaveOneOutReport(source=str(raw), layout=LAYOUT, feedback="implicit", out_dir=str(out),
                               config=dataclasses.asdict(cfg))
    # the catalog half of importers' builder: text sanitizing, duplicate ids, news.tsv lines (placeholder titles)
    builder = _Builder(ImportConfig(max_history=cfg.max_history, seed=cfg.seed), report)
    index = _read_catalog(raw, builder, cfg, report)
    train_rows = _read_train(raw / "train.csv", index, cfg, report)
    held = {name: _read_held_out(raw / f"{name}.csv", index, cfg, report) for name in ("dev", "test")}
    return _write(out, builder, cfg, report, train_rows, held)


def _one(raw: Path, suffix: str, what: str) -> Path:
    found = sorted(raw.glob(f"*{suffix}"))
    if len(found) != 1:
        names = ", ".join(sorted(p.name for p in raw.iterdir())[:20]) or "nothing"
        raise DataImportError(f"{raw}: expected exactly one *{suffix} file ({what}), found "
                              f"{len(found)}; the folder holds {names}")
    return found[0]


def _plain_rows(path: Path, n_fields: int, expected: str, header: str | None) -> list[tuple[int, list[str]]]:
    """Tab-separated lines, each exactly ``n_fields`` fields, without CSV quoting (item texts may contain
    quotes); ``header``: the first line must be it."""
    src = _Source(path)
    rows = []
    with open(path, encoding="utf-8-sig", newline="\n") as fh:
        try:
            for line, text in enumerate(fh, start=1):
                text = text.rstrip("\r\n")
                if not text.strip():
                    continue
                fields = text.split("\t")
                if line == 1 and header is not None:
                    if [f.strip() for f in fields] != header.split("\t"):
                        raise src.error(line, "", f"expected the header {header!r}, got {text[:80]!r}")
                    continue
                if len(fields) != n_fields:
                    raise src.error(line, "", f"expected {n_fields} tab-separated fields ({expected}), "
                                              f"got {len(fields)}")
                rows.append((line, fields))
        except UnicodeDecodeError as exc:
            raise DataImportError(f"{path}: not UTF-8 text: {exc}") from None
    return rows


def _read_catalog(raw: Path, builder: _Builder, cfg: LeaveOneOutConfig, report: LeaveOneOutReport) -> dict[str, str]:
    """item2index + text + item_meta -> builder.items keyed by the external id; returns item_id -> external id."""
    index_path = _one(raw, ".item2index", "external item id <tab> item_id, the catalog")
    text_path = _one(raw, ".text", "id <tab> text, the item texts")
    src = _Source(index_path)
    index: dict[str, str] = {}
    external: dict[str, int] = {}
    for line, (ext, item) in _plain_rows(index_path, 2, "external id, item_id", None):
        ext = _parse_id(src, line, "external id (field 1)", ext)
        item = _parse_id(src, line, "item_id (field 2)", item)
        if item in index:
            raise src.error(line, "item_id (field 2)", f"duplicate item_id {item!r}")
        if ext in external:
            raise src.error(line, "external id (field 1)", f"duplicate id {ext!r} (first on line {external[ext]})")
        index[item], external[ext] = ext, line
    if not index:
        raise DataImportError(f"{index_path}: no items")
    texts: dict[str, tuple[int, str]] = {}
    src = _Source(text_path)
    for line, (ext, text) in _plain_rows(text_path, 2, "id, text", "id\ttext"):
        ext = _parse_id(src, line, "id", ext)
        if ext in texts:
            raise src.error(line, "id", f"duplicate id {ext!r} (first on line {texts[ext][0]})")
        texts[ext] = (line, text)
        report.text_rows_not_in_catalog += ext not in external
    meta: dict[str, tuple[str, str]] = {}
    meta_path = raw / "item_meta.csv"
    if meta_path.is_file():
        src = _Source(meta_path)
        cols = {"item_id": "item_id", "--category-col": cfg.category_col, "--subcategory-col": cfg.subcategory_col}
        for line, row in _read_table(meta_path, cols, delimiter="\t"):
            report.meta_rows += 1
            item = _parse_id(src, line, "item_id", row["item_id"])
            if item in meta:
                raise src.error(line, "item_id", f"duplicate item_id {item!r}")
            if item not in index:
                report.meta_rows_not_in_catalog += 1
                continue
            meta[item] = (_parse_id(src, line, cfg.category_col, row[cfg.category_col]),
                          _parse_id(src, line, cfg.subcategory_col, row[cfg.subcategory_col]))
    cat_name = cfg.category_col.removeprefix("i_")
    sub_name = cfg.subcategory_col.removeprefix("i_")
    src = _Source(index_path)
    for item, ext in sorted(index.items(), key=lambda kv: _natural(kv[0])):
        category, sub = meta.get(item, ("", ""))
        report.items_without_meta += item not in meta
        if sub == cfg.missing_subcategory:
            sub = ""
        report.items_without_subcategory += not sub
        builder.add_item(src, external[ext], "external id (field 1)",
                         _Item(ext, f"{cat_name}-{category}" if category else "", f"{sub_name}-{sub}" if sub else "",
                               texts.get(ext, (0, ""))[1].strip()))
    return index


def _unknown(report: LeaveOneOutReport, cfg: LeaveOneOutConfig, src: _Source, line: int, column: str,
             item: str) -> None:
    if cfg.fail_on_unknown_items:
        raise src.error(line, column, f"item {item!r} is not in the catalog (--fail-on-unknown-items)")
    if len(report.unknown_item_examples) < 5:
        report.unknown_item_examples.append(f"{src.path}:{line}: {column} {item!r} is not in the catalog")


def _read_train(path: Path, index: dict[str, str], cfg: LeaveOneOutConfig,
                report: LeaveOneOutReport) -> dict[str, list[_Interaction]]:
    _require_file(path, "train.csv (user_id, item_id, time: the training interactions)")
    src = _Source(path)
    rows: dict[str, list[_Interaction]] = defaultdict(list)
    for line, row in _read_table(path, {"user": "user_id", "item": "item_id", "time": "time"}, delimiter="\t"):
        report.interactions += 1
        user = _parse_user(src, line, "user_id", row["user_id"])
        item = _parse_id(src, line, "item_id", row["item_id"])
        time = _parse_time(src, line, "time", row["time"], "unix")
        if item not in index:
            _unknown(report, cfg, src, line, "item_id", item)
            report.interactions_unknown_item += 1
            continue
        rows[user].append((time, index[item]))
    return rows


def _read_held_out(path: Path, index: dict[str, str], cfg: LeaveOneOutConfig,
                   report: LeaveOneOutReport) -> dict[str, tuple[int, float, str | None, list[str]]]:
    """user -> (line, time, held-out external id or None when unknown, negatives as external ids or '' unknown)."""
    _require_file(path, f"{path.name} (user_id, item_id, time, neg_items: one held-out item per user)")
    src = _Source(path)
    counts: SplitCounts = getattr(report, path.stem)
    out: dict[str, tuple[int, float, str | None, list[str]]] = {}
    cols = {"user": "user_id", "item": "item_id", "time": "time", "negatives": "neg_items"}
    for line, row in _read_table(path, cols, delimiter="\t"):
        counts.rows += 1
        user = _parse_user(src, line, "user_id", row["user_id"])
        if user in out:
            raise src.error(line, "user_id", f"user {user!r} has a second row (first on line {out[user][0]}); "
                                             f"leave-one-out holds out one item per user")
        item = _parse_id(src, line, "item_id", row["item_id"])
        time = _parse_time(src, line, "time", row["time"], "unix")
        text = row["neg_items"].strip()
        if not _LIST.match(text):
            raise src.error(line, "neg_items", f"expected a list of item ids like [12, 7, 33], got {text[:60]!r}")
        negatives = [t.strip() for t in text[1:-1].split(",") if t.strip()]
        if item not in index:
            _unknown(report, cfg, src, line, "item_id", item)
            counts.dropped_unknown_item += 1
            out[user] = (line, time, None, [])
            continue
        mapped = []
        for neg in negatives:
            if neg not in index:
                _unknown(report, cfg, src, line, "neg_items", neg)
            mapped.append(index.get(neg, ""))
        out[user] = (line, time, index[item], mapped)
    return out


def _cut(history: list[str], cfg: LeaveOneOutConfig) -> tuple[list[str], bool]:
    if len(history) > cfg.max_history:
        return history[len(history) - cfg.max_history:], True
    return history, False


def _write(out: Path, builder: _Builder, cfg: LeaveOneOutConfig, rep: LeaveOneOutReport,
           train_rows: dict[str, list[_Interaction]],
           held: dict[str, dict[str, tuple[int, float, str | None, list[str]]]]) -> LeaveOneOutReport:
    rng = np.random.default_rng(cfg.seed)
    rep.items = len(builder.items)
    rep.users = len(train_rows)
    rep.interactions_used = rep.positives = sum(len(v) for v in train_rows.values())
    pool = sorted({item for rows in train_rows.values() for _t, item in rows}, key=_natural)
    rep.items_interacted = len(pool)
    if not pool:
        raise DataImportError(f"{rep.source}: train.csv has no interaction with a catalog item "
                              f"({rep.interactions_unknown_item} referred to items not in the catalog)")
    users = sorted(set(train_rows) | set(held["dev"]) | set(held["test"]), key=_natural)
    splits: dict[str, list[_Impression]] = {name: [] for name in SPLITS}
    k = cfg.train_negatives
    for user in users:
        key = _natural(user)
        evs = sorted(train_rows.get(user, []), key=lambda e: e[0])     # stable: file order within a time
        items = [item for _t, item in evs]
        dev, test = held["dev"].get(user), held["test"].get(user)
        seen = set(items) | {row[2] for row in (dev, test) if row and row[2]}
        # training impressions
        sampler = NegativeSampler(pool, seen, len(pool) - len(seen & set(pool)), rng)
        before = len(splits["train"])
        for j in range(cfg.min_history, len(evs)):
            history, cut = _cut(items[:j], cfg)
            rep.train_histories_truncated += cut
            chosen = sampler.draw(k)
            rep.negatives_short += len(chosen) < k
            if not chosen:
                continue
            rep.negatives_sampled += len(chosen)
            _append(splits["train"], rng, evs[j][0], key, user, history, items[j], chosen)
        rep.users_without_impressions += user in train_rows and len(splits["train"]) == before
        # held-out impressions: dev after all train items, test after train + dev
        for name, row, base in (("dev", dev, items),
                                ("test", test, items + ([dev[2]] if dev and dev[2] else []))):
            if row is None:
                continue
            counts: SplitCounts = getattr(rep, name)
            _line, time, positive, negatives = row
            if positive is None:
                continue
            counts.users_without_train += not items
            if name == "test":
                counts.users_without_dev += not (dev and dev[2])
            kept: list[str] = []
            distinct: set[str] = set()
            for neg in negatives:
                counts.negatives_read += 1
                if not neg:
                    counts.negatives_unknown_item += 1
                elif neg == positive:
                    counts.negatives_equal_positive += 1
                elif neg in seen:
                    counts.negatives_interacted += 1
                elif neg in distinct:
                    counts.negatives_duplicate += 1
                    if cfg.keep_duplicate_negatives:
                        kept.append(neg)
                else:
                    distinct.add(neg)
                    kept.append(neg)
            if not kept:
                counts.dropped_no_negatives += 1
                continue
            counts.negatives_kept += len(kept)
            history, cut = _cut(base, cfg)
            counts.histories_truncated += cut
            _append(splits[name], rng, time, key, user, history, positive, kept)
    if not splits["train"]:
        raise DataImportError(f"{rep.source}: no training impression (every user has <= {cfg.min_history} "
                              f"train interactions)")
    for name in ("dev", "test"):
        if not splits[name]:
            raise DataImportError(f"{rep.source}: {name}.csv gives no impression (see the counts: "
                                  f"{dataclasses.asdict(getattr(rep, name))})")
    out.mkdir(parents=True, exist_ok=True)
    news = builder._news_lines()
    number = 0
    in_train: set[str] = set()
    for name in SPLITS:
        imps = sorted(splits[name], key=lambda imp: (imp[0], imp[1]))
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "news.tsv").write_text(news, encoding="utf-8")
        with open(folder / "behaviors.tsv", "w", encoding="utf-8", newline="\n") as fh:
            for time, _key, user, history, candidates, labels in imps:
                number += 1
                cands = " ".join(f"{c}-{lab}" for c, lab in zip(candidates, labels, strict=True))
                fh.write(f"{number}\t{user}\t{_format_time(time)}\t{' '.join(history)}\t{cands}\n")
        times = [_format_time(imps[0][0]), _format_time(imps[-1][0])]
        if name == "train":
            rep.train_impressions, rep.impressions_kept, rep.train_time_range = len(imps), len(imps), times
            rep.train_users = len({imp[2] for imp in imps})
            rep.train_candidates = sum(len(imp[4]) for imp in imps)
            rep.history_positives = sum(len(imp[3]) for imp in imps)
            in_train = {c for imp in imps for c in (*imp[3], *imp[4])}
            continue
        counts = getattr(rep, name)
        counts.impressions, counts.time_range = len(imps), times
        for imp in imps:
            for c, lab in zip(imp[4], imp[5], strict=True):
                counts.candidates += 1
                counts.clicks += lab
                counts.candidates_new += c not in in_train
                counts.clicks_new += bool(lab) and c not in in_train
    rep.dev_impressions, rep.test_impressions = rep.dev.impressions, rep.test.impressions
    rep.impressions_built = rep.train_impressions + rep.dev_impressions + rep.test_impressions
    rep.test_users = rep.test.impressions
    t = rep.test                # ImportReport's new-item fields, as importers fill them for their test split
    rep.test_candidates, rep.test_candidates_new, rep.test_clicks, rep.test_clicks_new = \
        t.candidates, t.candidates_new, t.clicks, t.clicks_new
    (out / "import_report.json").write_text(json.dumps(rep.as_dict(), indent=2) + "\n", encoding="utf-8")
    return rep


def _append(out: list[_Impression], rng: np.random.Generator, time: float, key: tuple, user: str,
            history: list[str], positive: str, negatives: list[str]) -> None:
    candidates = [positive, *negatives]
    labels = [1] + [0] * len(negatives)
    order = rng.permutation(len(candidates))
    out.append((time, key, user, history, [candidates[i] for i in order], [labels[i] for i in order]))

