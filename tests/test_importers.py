"""Importers (genrec.data.importers): the protocol on small tables written here in every layout, the
error messages, the CLI, and the real MovieLens 100K figures (skipped where ../shared is absent)."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from genrec.core.contract import MAX_HISTORY
from genrec.core.mind import TIME_FORMAT, load_split
from genrec.data.importers import DataImportError, ImportConfig, TableColumns, import_movielens, import_table
from genrec.metrics import ranking_metrics

T0 = 880_000_000          # unix seconds, 1997-11-20 like MovieLens 100K
GENRES = ["unknown", "Action", "Comedy", "Drama"]


def _ratings() -> list[tuple[str, str, float, int]]:
    """(user, item, rating, unix_time): hand-made users with known outcomes plus random ones."""
    rows: list[tuple[str, str, float, int]] = []
    # user 1: 100 ratings, items 1..100 one hour apart; every 3rd a 5, the rest 2. History = positives among
    # items 1..80 (3, 6, ..., 78: 26 items); impressions [81..90], [91..100], both mixed.
    rows += [("1", str(i), 5.0 if i % 3 == 0 else 2.0, T0 + i * 3600) for i in range(1, 101)]
    # user 2: 50 ratings, the last 10 all positive -> that impression is dropped (all positive)
    rows += [("2", str(i), (4.0 if i > 40 else float(1 + i % 5)), T0 + 500 + i * 3600) for i in range(1, 51)]
    # user 3: 50 ratings, the last 10 all negative -> dropped (all negative)
    rows += [("3", str(i), (1.0 if i > 40 else float(1 + i % 5)), T0 + 700 + i * 3600) for i in range(1, 51)]
    # user 4: 23 ratings: history int(18.4) = 18, then a short last piece of 5 (mixed)
    rows += [("4", str(i), 4.5 if i % 2 else 3.5, T0 + 900 + i * 7200) for i in range(1, 24)]
    # user 5: 12 ratings in the same second, written out of order: ties break by item id as a number
    order = (12, 3, 10, 1, 9, 2, 11, 8, 4, 7, 5, 6)
    rows += [("5", str(i), 5.0 if i in (3, 11) else 1.0, T0 + 50 * 3600) for i in order]
    rng = np.random.default_rng(7)
    for u in range(10, 40):
        items = rng.choice(np.arange(1, 121), size=int(rng.integers(20, 70)), replace=False)
        for it in items:
            rows.append((str(u), str(int(it)), float(rng.integers(1, 6)), T0 + int(rng.integers(0, 90 * 86400))))
    return rows


RATINGS = _ratings()
ITEMS = [(str(i), f"Movie {i} ({1990 + i % 9})", [g for k, g in enumerate(GENRES[1:], 1) if i % (k + 1) == 0])
         for i in range(1, 121)]


def write_100k(raw: Path, ratings=RATINGS) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(GENRES)) + "\n", encoding="latin-1")
    with open(raw / "u.item", "w", encoding="latin-1") as fh:
        for item_id, title, genres in ITEMS:
            flags = "|".join("1" if g in genres else "0" for g in GENRES)
            fh.write(f"{item_id}|{title}|01-Jan-1995||http://x/{item_id}|{flags}\n")
    (raw / "u.data").write_text("".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in ratings))
    return raw


def write_csv_layout(raw: Path, ratings=RATINGS) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / "movies.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["movieId", "title", "genres"])
        for item_id, title, genres in ITEMS:
            w.writerow([item_id, title, "|".join(genres) or "(no genres listed)"])
    with open(raw / "ratings.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        w.writerows([u, i, r, t] for u, i, r, t in ratings)
    return raw


def write_table(folder: Path, ratings=RATINGS, *, with_rating: bool = True) -> tuple[Path, Path]:
    """Generic e-commerce-like table: other column names, ISO-8601 times, a text column."""
    folder.mkdir(parents=True, exist_ok=True)
    items, inter = folder / "products.csv", folder / "events.csv"
    with open(items, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sku", "name", "description", "dept"])
        for item_id, title, genres in ITEMS:
            w.writerow([item_id, title, f"About {title}", genres[0] if genres else ""])
    with open(inter, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["customer", "sku", "when"] + (["stars"] if with_rating else []))
        for u, i, r, t in ratings:
            iso = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            w.writerow([u, i, iso] + ([r] if with_rating else []))
    return items, inter


TABLE = TableColumns(user_col="customer", item_col="sku", time_col="when", rating_col="stars",
                     title_col="name", text_col="description", category_col="dept")


def _fmt(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime(TIME_FORMAT)


def check_protocol(out: Path, ratings, cfg: ImportConfig) -> tuple[list, list]:
    """The protocol's invariants, from the raw ratings, on the written folders (read back by load_split)."""
    train, test = load_split(out / "train"), load_split(out / "test")
    assert set(train.news) == set(test.news) == {i[0] for i in ITEMS}          # full catalog in both
    label = {(u, i): int(r >= cfg.positive_threshold) for u, i, r, _t in ratings}
    when = {(u, i): t for u, i, _r, t in ratings}
    per_user = Counter(u for u, *_ in ratings)
    imps = train.impressions + test.impressions
    assert [int(i.impression_id) for i in imps] == list(range(1, len(imps) + 1))
    for imp in imps:
        assert len(imp.history) <= cfg.max_history
        assert all(label[(imp.user_id, h)] == 1 for h in imp.history)         # history: positives only
        assert 2 <= len(imp.candidates) <= cfg.impression_size
        assert 0 < sum(imp.labels) < len(imp.labels)                           # only mixed impressions
        assert list(imp.labels) == [label[(imp.user_id, c)] for c in imp.candidates]
        times = [when[(imp.user_id, c)] for c in imp.candidates]
        assert times == sorted(times)                                          # consecutive, in time order
        assert imp.time == datetime.strptime(_fmt(max(times)), TIME_FORMAT)   # time = the LAST rating's
        # history items were rated no later than every candidate
        assert all(when[(imp.user_id, h)] <= min(times) for h in imp.history)
    assert max(i.time for i in train.impressions) <= min(i.time for i in test.impressions)
    assert len(train.impressions) == int(len(imps) * (1 - cfg.test_fraction))
    keys = [(i.time, int(i.user_id)) for i in imps]
    assert keys == sorted(keys)
    assert all(n >= 1 for n in per_user.values())
    return train.impressions, test.impressions


def by_user(imps) -> dict[str, list]:
    out: dict[str, list] = {}
    for imp in imps:
        out.setdefault(imp.user_id, []).append(imp)
    return out


def test_movielens_100k_layout_follows_the_protocol(tmp_path):
    cfg = ImportConfig()
    report = import_movielens(write_100k(tmp_path / "raw"), tmp_path / "out", cfg)
    train, test = check_protocol(tmp_path / "out", RATINGS, cfg)
    users = by_user(train + test)
    u1 = users["1"]
    assert [list(i.candidates) for i in u1] == [[str(i) for i in range(81, 91)], [str(i) for i in range(91, 101)]]
    assert u1[0].history == tuple(str(i) for i in range(3, 79, 3))              # positives of the first 80 %
    assert u1[0].time == datetime.strptime(_fmt(T0 + 90 * 3600), TIME_FORMAT)
    assert "2" not in users and "3" not in users                               # all-positive / all-negative
    assert [len(i.candidates) for i in users["4"]] == [5]                      # the shorter last piece
    assert users["4"][0].candidates == tuple(str(i) for i in range(19, 24))
    assert users["5"][0].candidates == ("10", "11", "12")                      # ties: item id as a number
    assert users["5"][0].history == ("3",)
    assert report.users == len({r[0] for r in RATINGS}) and report.items == len(ITEMS)
    assert report.interactions == report.interactions_used == len(RATINGS)
    assert report.impressions_dropped_all_positive >= 1 and report.impressions_dropped_all_negative >= 1
    assert report.impressions_kept == len(train) + len(test) == report.impressions_built - (
        report.impressions_dropped_all_positive + report.impressions_dropped_all_negative)
    saved = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert saved["impressions_kept"] == report.impressions_kept and "impressions" in report.summary()
    news = load_split(tmp_path / "out" / "train").news
    genres = [g for g in GENRES[1:] if 6 % (GENRES.index(g) + 1) == 0]        # item 6: Action, Comedy
    assert news["6"].category == genres[0] and news["6"].subcategory == "|".join(genres)
    assert news["1"].category == "" and report.items_without_category == sum(not g for *_x, g in ITEMS)


def test_history_cut_to_the_most_recent_and_short_pieces_dropped_on_request(tmp_path):
    cfg = ImportConfig(max_history=10, keep_short_impressions=False)
    report = import_movielens(write_100k(tmp_path / "raw"), tmp_path / "out", cfg)
    train, test = check_protocol(tmp_path / "out", RATINGS, cfg)
    users = by_user(train + test)
    assert users["1"][0].history == tuple(str(i) for i in range(51, 79, 3))    # the 10 most recent positives
    assert "4" not in users and all(len(i.candidates) == 10 for i in train + test)
    assert report.histories_truncated >= 1 and report.history_items_truncated >= 16
    assert report.impressions_dropped_short >= 1 and report.impressions_short == 0
    assert MAX_HISTORY == ImportConfig().max_history


def test_all_layouts_give_the_same_impressions(tmp_path):
    import_movielens(write_100k(tmp_path / "a"), tmp_path / "out_a")
    import_movielens(write_csv_layout(tmp_path / "b"), tmp_path / "out_b")
    items, inter = write_table(tmp_path / "c")
    report = import_table(items, inter, tmp_path / "out_c", ImportConfig(), TABLE)
    for split in ("train", "test"):
        a = (tmp_path / "out_a" / split / "behaviors.tsv").read_text()
        assert a == (tmp_path / "out_b" / split / "behaviors.tsv").read_text()
        assert a == (tmp_path / "out_c" / split / "behaviors.tsv").read_text()
    check_protocol(tmp_path / "out_c", RATINGS, ImportConfig())
    news_b, news_c = load_split(tmp_path / "out_b" / "test").news, load_split(tmp_path / "out_c" / "test").news
    assert news_b["6"].subcategory == "Action|Comedy" and news_b["1"].category == ""   # (no genres listed)
    assert news_c["6"].abstract == "About Movie 6 (1996)" and news_c["6"].category == "Action"
    assert report.layout == "table" and report.feedback == "explicit"


def test_label_column_is_used_as_is(tmp_path):
    items, inter = write_table(tmp_path / "t")
    rows = list(csv.reader(open(inter, encoding="utf-8")))
    rows[0][3] = "clicked"
    for row in rows[1:]:
        row[3] = "true" if float(row[3]) >= 4 else "0"
    with open(inter, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    cols = TableColumns(**{**TABLE.__dict__, "rating_col": "", "label_col": "clicked"})
    import_table(items, inter, tmp_path / "out", ImportConfig(), cols)
    import_movielens(write_100k(tmp_path / "raw"), tmp_path / "ref")
    assert (tmp_path / "out/test/behaviors.tsv").read_text() == (tmp_path / "ref/test/behaviors.tsv").read_text()


def test_implicit_feedback_samples_unseen_negatives_deterministically(tmp_path):
    items, inter = write_table(tmp_path / "t", with_rating=False)
    cols = TableColumns(**{**TABLE.__dict__, "rating_col": ""})
    cfg = ImportConfig(implicit_negatives=9, seed=3)
    report = import_table(items, inter, tmp_path / "out", cfg, cols)
    assert report.feedback == "implicit"
    train, test = load_split(tmp_path / "out/train"), load_split(tmp_path / "out/test")
    touched: dict[str, set[str]] = {}
    when: dict[tuple[str, str], int] = {}
    for u, i, _r, t in RATINGS:
        touched.setdefault(u, set()).add(i)
        when[(u, i)] = t
    imps = train.impressions + test.impressions
    n_expected = sum(len(s) - int(len(s) * 0.8) for s in touched.values())
    assert len(imps) == n_expected == report.impressions_kept                  # one per later interaction
    for imp in imps:
        assert len(imp.candidates) == 10 and sum(imp.labels) == 1
        pos = imp.candidates[imp.labels.index(1)]
        negs = [c for c, lab in zip(imp.candidates, imp.labels) if not lab]
        assert pos in touched[imp.user_id] and not set(negs) & touched[imp.user_id]
        assert len(set(negs)) == 9
        assert imp.time == datetime.strptime(_fmt(when[(imp.user_id, pos)]), TIME_FORMAT)
        assert len(imp.history) <= cfg.max_history
    assert max(i.time for i in train.impressions) <= min(i.time for i in test.impressions)
    assert any(imp.labels[0] == 0 for imp in imps)                            # candidate order shuffled
    assert report.negatives_sampled == 9 * len(imps)
    again = import_table(items, inter, tmp_path / "again", cfg, cols)
    assert again.negatives_sampled == report.negatives_sampled
    assert (tmp_path / "again/test/behaviors.tsv").read_bytes() == (tmp_path / "out/test/behaviors.tsv").read_bytes()
    import_table(items, inter, tmp_path / "other", ImportConfig(seed=4), cols)
    assert (tmp_path / "other/test/behaviors.tsv").read_bytes() != (tmp_path / "out/test/behaviors.tsv").read_bytes()


def test_texts_sanitized_and_items_without_text_counted(tmp_path):
    items, inter = write_table(tmp_path / "t")
    rows = list(csv.reader(open(items, encoding="utf-8")))
    rows[1][1] = "Tab\there and\nnew line"          # item 1
    rows[2][1], rows[2][2] = "", ""                  # item 2: no text at all
    with open(items, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    report = import_table(items, inter, tmp_path / "out", ImportConfig(), TABLE)
    news = load_split(tmp_path / "out/train").news
    assert news["1"].title == "Tab here and new line" and report.texts_sanitized == 1
    assert news["2"].title == "item 2" and report.items_without_text == 1
    assert len(news) == len(ITEMS)


def test_summaries_matched_on_exact_title(tmp_path):
    raw = write_100k(tmp_path / "raw")
    summaries = tmp_path / "wiki.csv"
    with open(summaries, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["movie_title", "wiki_summary"])
        w.writerow([ITEMS[0][1], "A film,\twith a tab."])
        w.writerow(["No Such Movie (1900)", "Nothing."])
        w.writerow([ITEMS[4][1].lower(), "Case differs: no match."])
    report = import_movielens(raw, tmp_path / "out", summaries=summaries)
    news = load_split(tmp_path / "out/test").news
    assert news["1"].abstract == "A film, with a tab." and news["5"].abstract == ""
    assert (report.summaries_rows, report.summaries_matched, report.summaries_unmatched_rows) == (3, 1, 2)


# ---------------------------------------------------------------------------------------------- errors


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataImportError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_errors_name_file_line_and_column(tmp_path):
    rows = list(RATINGS)
    rows[2] = (rows[2][0], rows[2][1], "x", rows[2][3])
    raw = write_csv_layout(tmp_path / "csv", rows)
    raw_csv = raw / "ratings.csv"
    assert rows[2][2] == "x"
    raw_csv.write_text(raw_csv.read_text().replace(",x,", ",four,"))
    msg = _error(import_movielens, raw, tmp_path / "o1")
    assert msg.startswith(f"{raw_csv}:4: column 'rating'") and "'four'" in msg

    raw = write_100k(tmp_path / "k", RATINGS)
    lines = (raw / "u.data").read_text().splitlines(keepends=True)
    lines[4] = lines[4].rsplit("\t", 1)[0] + "\tyesterday\n"
    (raw / "u.data").write_text("".join(lines))
    msg = _error(import_movielens, raw, tmp_path / "o2")
    assert msg.startswith(f"{raw / 'u.data'}:5: column 'unix_time (field 4)'") and "yesterday" in msg

    items, inter = write_table(tmp_path / "t")
    text = inter.read_text().splitlines(keepends=True)
    text[6] = text[6].replace("T", " at ", 1)
    inter.write_text("".join(text))
    msg = _error(import_table, items, inter, tmp_path / "o3", ImportConfig(), TABLE)
    assert msg.startswith(f"{inter}:7: column 'when': bad time")

    msg = _error(import_table, items, inter, tmp_path / "o4", ImportConfig(),
                 TableColumns(**{**TABLE.__dict__, "user_col": "user"}))
    assert msg.startswith(f"{inter}:1: missing column(s) 'user' (--user-col)")
    assert "columns found: customer, sku, when, stars" in msg

    items2, inter2 = write_table(tmp_path / "t2")
    items2.write_text(items2.read_text().replace("\n7,", "\n7 b,", 1))
    msg = _error(import_table, items2, inter2, tmp_path / "o5", ImportConfig(), TABLE)
    assert msg.startswith(f"{items2}:8: column 'sku'") and "whitespace" in msg
    items2.write_text(items2.read_text().replace("\n7 b,", "\n6,", 1))
    msg = _error(import_table, items2, inter2, tmp_path / "o6", ImportConfig(), TABLE)
    assert msg.startswith(f"{items2}:8: column 'sku': duplicate item id '6' (first on line 7)")

    raw = write_100k(tmp_path / "g")
    (raw / "u.item").write_text((raw / "u.item").read_text().replace("|0|", "|2|", 1), encoding="latin-1")
    assert _error(import_movielens, raw, tmp_path / "o7").startswith(f"{raw / 'u.item'}:1: column 'genre ")


def test_unknown_items_counted_and_reported_or_fatal(tmp_path):
    rows = RATINGS + [("1", "999", 5.0, T0 + 1), ("2", "998", 1.0, T0 + 2)]
    raw = write_100k(tmp_path / "raw", rows)
    report = import_movielens(raw, tmp_path / "out")
    assert report.interactions == len(rows) and report.interactions_used == len(RATINGS)
    assert report.interactions_unknown_item == 2
    assert report.unknown_item_examples[0] == f"{raw / 'u.data'}:{len(RATINGS) + 1}: item '999' is not in the catalog"
    assert "not in the catalog" in report.summary()
    msg = _error(import_movielens, raw, tmp_path / "o", ImportConfig(fail_on_unknown_items=True))
    assert msg.startswith(f"{raw / 'u.data'}:{len(RATINGS) + 1}: column 'item (field 2)'")


def test_parquet_read_or_clear_error(tmp_path):
    items, inter = write_table(tmp_path / "t")
    if importlib.util.find_spec("pyarrow") is None:
        fake = tmp_path / "events.parquet"
        fake.write_bytes(b"PAR1")
        if importlib.util.find_spec("pandas") is None:
            assert "needs pyarrow or pandas" in _error(import_table, items, fake, tmp_path / "o", ImportConfig(), TABLE)
        return
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pacsv.read_csv(inter)                    # typed columns: int64 ids, a UTC timestamp, float stars
    assert table.schema.field("sku").type == pa.int64() and pa.types.is_timestamp(table.schema.field("when").type)
    pq.write_table(table, tmp_path / "e.parquet")
    import_table(items, tmp_path / "e.parquet", tmp_path / "pq", ImportConfig(), TABLE)
    import_table(items, inter, tmp_path / "csv", ImportConfig(), TABLE)
    assert (tmp_path / "pq/test/behaviors.tsv").read_text() == (tmp_path / "csv/test/behaviors.tsv").read_text()


def test_cli_writes_folders_and_reports_errors_in_one_line(tmp_path, capsys):
    from genrec.cli import main

    raw = write_100k(tmp_path / "raw")
    assert main(["data", "import", "movielens", "--raw", str(raw), "--out", str(tmp_path / "out"),
                 "--max-history", "7", "--test-fraction", "0.25"]) == 0
    report = json.loads((tmp_path / "out/import_report.json").read_text())
    assert report["config"]["max_history"] == 7 and report["config"]["test_fraction"] == 0.25
    assert "impressions" in capsys.readouterr().out
    items, inter = write_table(tmp_path / "t")
    assert main(["data", "import", "table", "--items", str(items), "--interactions", str(inter),
                 "--out", str(tmp_path / "tab"), "--user-col", "customer", "--item-col", "sku", "--time-col", "when",
                 "--rating-col", "stars", "--title-col", "name", "--text-col", "description"]) == 0
    import_table(items, inter, tmp_path / "api", ImportConfig(), TABLE)
    assert (tmp_path / "tab/test/behaviors.tsv").read_text() == (tmp_path / "api/test/behaviors.tsv").read_text()
    capsys.readouterr()
    assert main(["data", "import", "table", "--items", str(items), "--interactions", str(inter),
                 "--out", str(tmp_path / "bad"), "--item-col", "sku", "--title-col", "name",
                 "--user-col", "nobody"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrec: error: ") and err.count("\n") == 1 and "'nobody' (--user-col)" in err


# ------------------------------------------------------------------------------------ real MovieLens 100K

ML100K = Path(__file__).resolve().parents[2] / "shared/data/ml-100k"


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"{ML100K} not present (MovieLens 100K is read from ../shared, never committed)")
    out = tmp_path_factory.mktemp("ml100k")
    report = import_movielens(ML100K, out, ImportConfig(), summaries=ML100K / "movie_wiki.csv")
    return report, load_split(out / "train"), load_split(out / "test")


def test_ml100k_counts(ml100k):
    report, train, test = ml100k
    assert (report.users, report.items, report.interactions, report.interactions_unknown_item) == (943, 1682, 100000, 0)
    assert (report.impressions_kept, report.train_impressions, report.test_impressions) == (1882, 1505, 377)
    assert len(train.news) == len(test.news) == 1682
    assert report.summaries_rows == 1524 and 1530 <= report.summaries_matched <= 1545
    assert sum(bool(n.abstract) for n in test.news.values()) == report.summaries_matched
    assert max(i.time for i in train.impressions) <= min(i.time for i in test.impressions)


def test_ml100k_baselines_match_the_data_readme(ml100k):
    """Item popularity = every user's history positives (once per user, train and test users: histories are
    inputs at test time) + clicks in train impressions; smoothed CTR = (clicks + a) / (shown + a + b) over
    train impressions with a Beta(a, b) prior fitted by the method of moments to the per-item CTRs of the
    items shown in training. The data README reports 0.607 and 0.637 (group-AUC on the test split)."""
    _report, train, test = ml100k
    clicks: Counter[str] = Counter()
    histories = {imp.user_id: imp.history for imp in train.impressions + test.impressions}
    for history in histories.values():
        clicks.update(history)
    shown: Counter[str] = Counter()
    clicked: Counter[str] = Counter()
    for imp in train.impressions:
        for item, lab in zip(imp.candidates, imp.labels, strict=True):
            shown[item] += 1
            clicked[item] += lab
            clicks[item] += lab

    def gauc(score) -> float:
        return ranking_metrics((np.array(i.labels), np.array([score(c) for c in i.candidates], dtype=float))
                               for i in test.impressions).group_auc

    popularity = gauc(lambda c: clicks[c])
    ctr = np.array([clicked[i] / shown[i] for i in shown])
    mean, var = ctr.mean(), ctr.var()
    strength = mean * (1 - mean) / var - 1
    a, b = mean * strength, (1 - mean) * strength
    smoothed = gauc(lambda c: (clicked[c] + a) / (shown[c] + a + b))
    assert popularity == pytest.approx(0.607, abs=0.01)
    assert smoothed == pytest.approx(0.637, abs=0.01)


def test_new_items_split(tmp_path):
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"{ML100K} not present (MovieLens 100K is read from ../shared, never committed)")
    plain = import_movielens(ML100K, tmp_path / "plain", ImportConfig())
    report = import_movielens(ML100K, tmp_path / "new", ImportConfig(new_items=0.3))
    train, test = load_split(tmp_path / "new" / "train"), load_split(tmp_path / "new" / "test")
    seen = {c for imp in train.impressions for c in (*imp.history, *imp.candidates)}
    cands = [(c, lab) for imp in test.impressions for c, lab in zip(imp.candidates, imp.labels, strict=True)]
    new = [lab for c, lab in cands if c not in seen]
    assert (report.test_candidates, report.test_candidates_new) == (len(cands), len(new))
    assert (report.test_clicks, report.test_clicks_new) == (sum(lab for _, lab in cands), sum(new))
    assert 0.30 <= report.test_candidates_new / report.test_candidates < 0.32
    assert plain.test_candidates_new / plain.test_candidates < 0.05          # ml-100k as it is: 3 % new
    assert report.items_held_out > 0 and report.test_impressions == plain.test_impressions
    assert report.train_impressions == plain.train_impressions - report.train_impressions_dropped_held_out
    assert all(0 < sum(imp.labels) < len(imp.labels) for imp in train.impressions)
    assert "new items in test" in report.summary()
