"""Every user error of the CLI (issue 27.9): exactly one `genrec: error:` line on stderr, exit 2, no traceback.

Driven through the real ``genrec.cli.main`` (forked from a warm process: tests/cli_runner.py). Each case names
what the message must say, so a case that starts failing differently (or succeeding) is caught too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from genrec.core.errors import EXIT_USER_ERROR


@pytest.fixture(scope="module")
def setup(artifacts, tiny_data, item_stats_dir, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli-errors")
    news = (tiny_data / "train" / "news.tsv").read_text().splitlines()
    (d / "empty.tsv").write_text("")
    (d / "dup.tsv").write_text("\n".join([news[0], news[1], news[0]]) + "\n")
    long_id = news[0].split("\t")
    long_id[0] = "x" * 65
    (d / "long.tsv").write_text("\t".join(long_id) + "\n")
    (d / "ok.tsv").write_text("\n".join(news[:5]) + "\n")
    # artifacts with only fp32 (a partial export), and artifacts whose manifest is garbage
    fp32 = d / "art-fp32"
    shutil.copytree(artifacts.root, fp32, symlinks=True)
    manifest = json.loads((fp32 / "artifacts.json").read_text())
    manifest["precisions"] = {"fp32": manifest["precisions"]["fp32"]}
    (fp32 / "artifacts.json").write_text(json.dumps(manifest))
    garbage = d / "art-garbage"
    garbage.mkdir()
    (garbage / "artifacts.json").write_text('{"format": "genrec.artifacts/1", "precisions": {"fp')
    bad_index = d / "index-garbage"
    bad_index.mkdir()
    (bad_index / "index.json").write_text("not json at all")
    bad_stats = d / "stats-garbage"
    shutil.copytree(item_stats_dir, bad_stats)
    (bad_stats / "stats.json").write_text("{")
    (d / "cands.tsv").write_text("Stocks rally\tfinance\t\tten,2,3\n")
    (d / "latin1.tsv").write_bytes("Caf\xe9 opens\n".encode("latin-1"))
    return {"d": d, "art": artifacts.root, "fp32": fp32, "garbage": garbage, "bad_index": bad_index,
            "bad_stats": bad_stats, "stats": item_stats_dir}


CASES = {
    # index build
    "index build of an empty catalog": (
        "index build --catalog {d}/empty.tsv --artifacts {art} --out {d}/ix1 --precision fp32", "has no items"),
    "index build with duplicate ids": (
        "index build --catalog {d}/dup.tsv --artifacts {art} --out {d}/ix2 --precision fp32", "duplicate item id"),
    "index build with an id over 64 bytes": (
        "index build --catalog {d}/long.tsv --artifacts {art} --out {d}/ix3 --precision fp32", "longer than 64"),
    "index build of a precision not exported": (
        "index build --catalog {d}/ok.tsv --artifacts {fp32} --out {d}/ix4 --precision int8",
        "export it with `genrec export --precision int8`"),
    "index build from garbage artifacts.json": (
        "index build --catalog {d}/ok.tsv --artifacts {garbage} --out {d}/ix5", "not valid JSON"),
    "index build over a garbage index.json": (
        "index build --catalog {d}/ok.tsv --artifacts {art} --out {bad_index} --precision fp32",
        "not valid JSON"),
    "index add to a garbage index": (
        "index add --catalog {d}/ok.tsv --artifacts {art} --index {bad_index}", "not valid JSON"),
    "index add to no index": (
        "index add --catalog {d}/ok.tsv --artifacts {art} --index {d}/nothing-here", "no index at"),
    # repository build
    "repository build --stats without --index": (
        "repository build --artifacts {art} --out {d}/r1 --precision fp32 --stats {stats}", "needs --index"),
    "repository build of a precision not exported": (
        "repository build --artifacts {fp32} --out {d}/r2 --precision int8",
        "export it with `genrec export --precision int8`"),
    "repository build from garbage artifacts.json": (
        "repository build --artifacts {garbage} --out {d}/r3", "not valid JSON"),
    "repository build with a garbage index": (
        "repository build --artifacts {art} --out {d}/r4 --precision fp32 --index {bad_index}", "not valid JSON"),
    "repository build with garbage stats": (
        "repository build --artifacts {art} --out {d}/r5 --precision fp32 --index {bad_index} --stats {bad_stats}",
        "not valid JSON"),
    "repository build over its artifacts": (
        "repository build --artifacts {fp32} --out {fp32} --precision fp32", "not a genrec model repository"),
    # recommend (the client: no server needed for these)
    "recommend with a bad replica address": (
        "recommend --url 127.0.0.1:1,foo --history-id N1", "'foo': expected host:port"),
    "recommend without candidates or ids": ("recommend --history Stocks", "give --candidates-file"),
    "recommend with non-numeric statistics": (
        "recommend --history Stocks --candidates-file {d}/cands.tsv", "statistics must be numbers"),
    "recommend with a candidates file that is not UTF-8": (
        "recommend --history Stocks --candidates-file {d}/latin1.tsv", "not UTF-8"),
    "recommend with a missing candidates file": (
        "recommend --history Stocks --candidates-file {d}/no-such.tsv", "no-such.tsv"),
    # issue 27.8: flags the candidates-file path would drop (it ranked with an empty history, no filters)
    "recommend with history ids and a candidates file": (
        "recommend --history-id N1 --candidates-file {d}/ok.tsv", "--history-id only go with retrieval"),
    "recommend with retrieval filters and a candidates file": (
        "recommend --history Stocks --exclude-id N1 --category news --candidates-file {d}/ok.tsv",
        "--exclude-id, --category only go with retrieval"),
    "recommend to a server that is not there": (
        "recommend --url 127.0.0.1:1 --history-id N1 --timeout 2", "recommend: "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_and_exit_2(cli, setup, case):
    argv, says = CASES[case]
    res = cli.run(*argv.format(**setup).split())
    lines = res.stderr.strip().splitlines()
    assert res.rc == EXIT_USER_ERROR and len(lines) == 1 and lines[0].startswith("genrec: error: "), \
        f"{case}: rc {res.rc}\n{res.stderr}"
    assert says in lines[0], lines[0]
    assert "--torchscript" not in lines[0] or "torchscript" in argv
