"""Leave-one-out importer (genrec.data.leave_one_out): the protocol on a tiny ReChorus/LRD folder written here,
checked line by line; the error messages; the CLI; and the real Amazon Office counts (skipped where
../shared/data/amazon-office-lrd is absent: research-use data, never committed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from genrec.core.mind import TIME_FORMAT, load_split
from genrec.data.importers import DataImportError
from genrec.data.leave_one_out import LeaveOneOutConfig, import_leave_one_out

TEXTS = {"P1": "Blue pen", "P2": "Red pen", "P3": "Stapler", "P4": "Paper", "P5": "Ink", "P6": "Tape",
         "P7": "Glue", "Q9": "Stray text without an index"}          # P8 has no text, Q9 no index
META = [(1, 1, 1), (2, 1, 1), (3, 2, 0), (4, 2, 2), (5, 3, 2), (6, 3, 3), (7, 3, 3)]     # item 8: no row
TRAIN = [(1, 1, 100), (1, 3, 200), (1, 2, 200), (2, 4, 150), (1, 99, 250), (3, 5, 300), (3, 6, 400), (3, 7, 500)]
DEV = [(1, 4, 600, "[5, 5, 6, 1, 99]"), (2, 5, 160, "[6, 7, 5]"), (3, 1, 600, "[2, 3]"), (5, 99, 700, "[1]")]
TEST = [(1, 6, 700, "[7, 7, 4]"), (3, 2, 700, "[3, 3, 4]"), (4, 1, 50, "[2, 8]"), (2, 8, 800, "[]")]


def write_folder(raw: Path, name: str = "Shop") -> Path:
    """A ReChorus/LRD folder; every row is there for one rule (see the expectations below)."""
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"{name}.item2index").write_text("".join(f"P{i}\t{i}\n" for i in (3, 1, 2, 4, 5, 6, 7, 8)))
    (raw / f"{name}.text").write_text("id\ttext\n" + "".join(f"{k}\t{v}\n" for k, v in TEXTS.items()))
    (raw / "item_meta.csv").write_text("item_id\ti_category\ti_brand\tr_complement\tr_substitute\n"
                                       + "".join(f"{i}\t{c}\t{b}\t[]\t[{i}]\n" for i, c, b in META))
    (raw / "train.csv").write_text("user_id\titem_id\ttime\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in TRAIN))
    for split, rows in (("dev", DEV), ("test", TEST)):
        (raw / f"{split}.csv").write_text("user_id\titem_id\ttime\tneg_items\n"
                                          + "".join(f"{u}\t{i}\t{t}\t{n}\n" for u, i, t, n in rows))
    return raw


def _t(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(TIME_FORMAT)


def _rows(path: Path) -> list[tuple[str, str, str, str, list[str]]]:
    """behaviors.tsv lines with the candidates sorted (their order is a seeded shuffle, checked apart)."""
    out = []
    for line in path.read_text().splitlines():
        number, user, time, history, cands = line.split("\t")
        out.append((number, user, time, history, sorted(cands.split())))
    return out


def test_protocol_on_a_tiny_folder(tmp_path):
    raw = write_folder(tmp_path / "raw")
    rep = import_leave_one_out(raw, tmp_path / "out")
    out = tmp_path / "out"
    news = ("P1\tcategory-1\tbrand-1\tBlue pen\t\t\t\t\n"
            "P2\tcategory-1\tbrand-1\tRed pen\t\t\t\t\n"
            "P3\tcategory-2\t\tStapler\t\t\t\t\n"            # brand 0 = none: the unknown bucket
            "P4\tcategory-2\tbrand-2\tPaper\t\t\t\t\n"
            "P5\tcategory-3\tbrand-2\tInk\t\t\t\t\n"
            "P6\tcategory-3\tbrand-3\tTape\t\t\t\t\n"
            "P7\tcategory-3\tbrand-3\tGlue\t\t\t\t\n"
            "P8\t\t\titem P8\t\t\t\t\n")                     # no text, no item_meta row
    for split in ("train", "dev", "test"):
        assert (out / split / "news.tsv").read_text() == news
    # train: each interaction after the user's first; ties in time keep file order (P3 before P2); negatives
    # from train.csv's items the user never touched (user 1: P5, P7; user 3: P3, P4), fewer than 9 asked
    assert _rows(out / "train/behaviors.tsv") == [
        ("1", "1", _t(200), "P1", ["P3-1", "P5-0", "P7-0"]),
        ("2", "1", _t(200), "P1 P3", ["P2-1", "P5-0", "P7-0"]),
        ("3", "3", _t(400), "P5", ["P3-0", "P4-0", "P6-1"]),
        ("4", "3", _t(500), "P5 P6", ["P3-0", "P4-0", "P7-1"]),
    ]
    # dev: history = all train items; fixed negatives minus duplicates, unknown ids, the held-out item and the
    # user's own interactions (user 1's test item P6, train item P1; user 3's test item P2); user 5's held-out
    # item is unknown: row left out
    assert _rows(out / "dev/behaviors.tsv") == [
        ("5", "2", _t(160), "P4", ["P5-1", "P6-0", "P7-0"]),
        ("6", "1", _t(600), "P1 P3 P2", ["P4-1", "P5-0"]),
        ("7", "3", _t(600), "P5 P6 P7", ["P1-1", "P3-0"]),
    ]
    # test: history = train items + the dev item; user 4 has neither; user 2's row has no negative: left out
    assert _rows(out / "test/behaviors.tsv") == [
        ("8", "4", _t(50), "", ["P1-1", "P2-0", "P8-0"]),
        ("9", "1", _t(700), "P1 P3 P2 P4", ["P6-1", "P7-0"]),
        ("10", "3", _t(700), "P5 P6 P7 P1", ["P2-1", "P3-0", "P4-0"]),
    ]
    assert (rep.items, rep.items_interacted, rep.items_without_text, rep.items_without_meta,
            rep.items_without_subcategory, rep.text_rows_not_in_catalog, rep.meta_rows) == (8, 7, 1, 1, 2, 1, 7)
    assert (rep.users, rep.interactions, rep.interactions_unknown_item, rep.users_without_impressions) == (3, 8, 1, 1)
    assert (rep.train_impressions, rep.train_candidates, rep.negatives_sampled, rep.negatives_short) == (4, 12, 8, 4)
    d, t = rep.dev, rep.test
    assert (d.rows, d.impressions, d.dropped_unknown_item, d.dropped_no_negatives,
            d.users_without_train) == (4, 3, 1, 0, 0)
    assert (d.negatives_read, d.negatives_duplicate, d.negatives_unknown_item, d.negatives_equal_positive,
            d.negatives_interacted, d.negatives_kept) == (10, 1, 1, 1, 3, 4)
    assert (t.rows, t.impressions, t.dropped_unknown_item, t.dropped_no_negatives, t.users_without_train,
            t.users_without_dev) == (4, 3, 0, 1, 1, 1)
    assert (t.negatives_read, t.negatives_duplicate, t.negatives_interacted, t.negatives_kept) == (8, 2, 1, 5)
    assert (d.candidates, d.candidates_new, d.clicks, t.candidates, t.candidates_new,
            t.clicks_new) == (7, 0, 3, 8, 1, 0)
    assert (rep.test_candidates, rep.test_candidates_new, rep.test_clicks, rep.test_clicks_new) == (8, 1, 3, 0)
    assert any("train.csv:6: item_id '99'" in e for e in rep.unknown_item_examples)
    assert json.loads((out / "import_report.json").read_text())["test"]["negatives_duplicate"] == 2
    # the MIND reader takes every folder
    for split, n in (("train", 4), ("dev", 3), ("test", 3)):
        assert len(load_split(out / split).impressions) == n
    assert "new items (in no training impression): 1 of 8 candidates (12.5 %)" in rep.summary()


def test_duplicates_kept_on_request_and_output_seeded(tmp_path):
    raw = write_folder(tmp_path / "raw")
    rep = import_leave_one_out(raw, tmp_path / "keep", LeaveOneOutConfig(keep_duplicate_negatives=True))
    assert (rep.dev.negatives_duplicate, rep.dev.negatives_kept, rep.test.negatives_kept) == (1, 5, 7)
    assert _rows(tmp_path / "keep/test/behaviors.tsv")[1][4] == ["P6-1", "P7-0", "P7-0"]
    import_leave_one_out(raw, tmp_path / "again", LeaveOneOutConfig(keep_duplicate_negatives=True))
    for split in ("train", "dev", "test"):
        assert (tmp_path / "keep" / split / "behaviors.tsv").read_bytes() == \
               (tmp_path / "again" / split / "behaviors.tsv").read_bytes()
    # a pool large enough for rejection sampling: exactly train_negatives, never an item the user touched
    rep = import_leave_one_out(raw, tmp_path / "two", LeaveOneOutConfig(train_negatives=1, max_history=1))
    assert (rep.negatives_sampled, rep.negatives_short, rep.train_histories_truncated) == (4, 0, 2)
    assert [r[3] for r in _rows(tmp_path / "two/train/behaviors.tsv")] == ["P1", "P3", "P5", "P6"]
    assert [r[3] for r in _rows(tmp_path / "two/test/behaviors.tsv")] == ["", "P4", "P1"]


@pytest.mark.parametrize(("file", "old", "new", "message"), [
    ("dev.csv", "[6, 7, 5]", "6, 7, 5", "dev.csv:3: column 'neg_items': expected a list of item ids like"),
    ("test.csv", "[2, 8]", "[2, 8", "test.csv:4: column 'neg_items': expected a list"),
    ("train.csv", "3\t6\t400", "3\t6\tlater", "train.csv:8: column 'time': bad time 'later'"),
    ("train.csv", "3\t6\t400", "3\t6", "train.csv:8: expected 3 fields like the header, got 2"),
    ("dev.csv", "3\t1\t600", "1\t1\t600", "dev.csv:4: column 'user_id': user '1' has a second row (first on line 2)"),
    ("Shop.item2index", "P4\t4", "P4 4", "Shop.item2index:4: expected 2 tab-separated fields"),
    ("Shop.item2index", "P4\t4", "P4\t3", "Shop.item2index:4: column 'item_id (field 2)': duplicate item_id '3'"),
    ("Shop.text", "id\ttext", "asin\ttext", "Shop.text:1: expected the header 'id\\ttext'"),
    ("item_meta.csv", "i_brand", "brand", "item_meta.csv:1: missing column(s) 'i_brand' (--subcategory-col)"),
])
def test_errors_name_file_line_and_column(tmp_path, file, old, new, message):
    raw = write_folder(tmp_path / "raw")
    text = (raw / file).read_text()
    assert old in text
    (raw / file).write_text(text.replace(old, new, 1))
    with pytest.raises(DataImportError) as err:
        import_leave_one_out(raw, tmp_path / "out")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_files_and_unknown_items_fatal_on_request(tmp_path):
    raw = write_folder(tmp_path / "raw")
    with pytest.raises(DataImportError, match=r"train.csv:6: column 'item_id': item '99' is not in the catalog"):
        import_leave_one_out(raw, tmp_path / "out", LeaveOneOutConfig(fail_on_unknown_items=True))
    (raw / "Shop.text").rename(raw / "Other.txt")
    with pytest.raises(DataImportError, match=r"expected exactly one \*\.text file .* found 0; the folder holds "):
        import_leave_one_out(raw, tmp_path / "out")
    with pytest.raises(DataImportError, match="folder not found"):
        import_leave_one_out(tmp_path / "nowhere", tmp_path / "out")


def test_cli_writes_the_three_folders_and_reports_errors_in_one_line(tmp_path, capsys):
    from genrec.cli import main

    raw = write_folder(tmp_path / "raw")
    assert main(["data", "import", "leave-one-out", "--raw", str(raw), "--out", str(tmp_path / "cli"),
                 "--train-negatives", "1", "--keep-duplicate-negatives", "--seed", "3"]) == 0
    assert "new items" in capsys.readouterr().out
    import_leave_one_out(raw, tmp_path / "api", LeaveOneOutConfig(train_negatives=1, keep_duplicate_negatives=True,
                                                                  seed=3))
    for split in ("train", "dev", "test"):
        assert (tmp_path / "cli" / split / "behaviors.tsv").read_text() == \
               (tmp_path / "api" / split / "behaviors.tsv").read_text()
    (raw / "dev.csv").write_text((raw / "dev.csv").read_text().replace("[2, 3]", "2 3"))
    assert main(["data", "import", "leave-one-out", "--raw", str(raw), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrec: error: ") and err.count("\n") == 1 and "dev.csv:4: column 'neg_items'" in err


# ------------------------------------------------------------------------------- real Amazon Office (LRD)

OFFICE = Path(__file__).resolve().parents[2] / "shared/data/amazon-office-lrd"


@pytest.fixture(scope="module")
def office(tmp_path_factory):
    if not (OFFICE / "train.csv").is_file():
        pytest.skip(f"{OFFICE} not present (research-use data read from ../shared, never committed)")
    out = tmp_path_factory.mktemp("office")
    return import_leave_one_out(OFFICE, out), out


def test_office_counts(office):
    rep, out = office
    assert (rep.users, rep.items, rep.interactions, rep.interactions_unknown_item) == (4905, 2420, 43448, 0)
    assert (rep.items_without_text, rep.items_without_meta, rep.text_rows_not_in_catalog) == (0, 0, 0)
    # every train interaction but each user's first is a training impression of 1 + 9 candidates
    assert (rep.train_impressions, rep.train_users, rep.negatives_short) == (43448 - 4905, 4905, 0)
    assert rep.train_candidates == 10 * rep.train_impressions
    for s in (rep.dev, rep.test):
        assert (s.rows, s.impressions, s.users_without_train, s.dropped_unknown_item) == (4905, 4905, 0, 0)
        assert s.negatives_read == 99 * 4905
        assert (s.negatives_unknown_item, s.negatives_equal_positive, s.negatives_interacted) == (0, 0, 0)
        assert s.negatives_kept == s.negatives_read - s.negatives_duplicate and s.negatives_duplicate > 4905
    assert (rep.dev.negatives_duplicate, rep.test.negatives_duplicate) == (9884, 9684)
    test = load_split(out / "test")
    assert len(test.news) == 2420 and len(test.impressions) == 4905
    assert all(sum(i.labels) == 1 and len(set(i.candidates)) == len(i.candidates) for i in test.impressions)
