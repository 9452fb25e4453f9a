"""The documentation cannot rot: the site builds with ``mkdocs build --strict`` (links, anchors, code references,
generated flag tables: docs/hooks.py), the README is a map of at most 300 lines whose references hold too."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _hooks(root: Path = ROOT):
    spec = importlib.util.spec_from_file_location("genrec_docs_hooks", root / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mkdocs(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300, cwd=root)


def test_site_builds_strict(tmp_path):
    proc = _mkdocs(ROOT, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").exists() and (tmp_path / "site" / "cli.html").exists()


def test_a_broken_page_fails_the_build(tmp_path):
    """The build is a real check: a dangling anchor, a missing file, an undefined name, a flag no command has and
    a hand-edited flag table each fail it, named."""
    mirror = tmp_path / "repo"
    mirror.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("docs", ".git", "build", ".venv"):
            (mirror / entry.name).symlink_to(entry)
    shutil.copytree(ROOT / "docs", mirror / "docs")
    page = mirror / "docs" / "model.md"
    page.write_text(page.read_text() + "\nSee [export](export.md#no-such-heading), `genrec/core/nothere.py`, "
                    "`genrec.core.contract.NO_SUCH_NAME` and `genrec train --no-such-flag`.\n")
    cli = mirror / "docs" / "cli.md"
    cli.write_text(cli.read_text().replace("| `--epochs` | `8` |", "| `--epochs` | `9` |", 1))
    proc = _mkdocs(mirror, tmp_path / "site")
    assert proc.returncode != 0
    for needle in ("no-such-heading", "genrec/core/nothere.py", "NO_SUCH_NAME", "--no-such-flag",
                   "cli.md: a flag table is stale"):
        assert needle in proc.stderr, (needle, proc.stderr[-3000:])


def test_cli_reference_is_generated_from_the_configs():
    hooks = _hooks()
    assert (ROOT / "docs" / "cli.md").read_text() == hooks.cli_page(), "docs/cli.md is stale: run `make docs-flags`"
    page = (ROOT / "docs" / "cli.md").read_text()
    for command, _help in hooks.commands():
        assert f"## `{command}`" in page
    # a field of a config dataclass appears with its default and its why-comment
    from genrec.config import TrainConfig
    field = next(f for f in TrainConfig.__dataclass_fields__.values() if f.name == "stats_dropout")
    assert f"| `--stats-dropout` | `{field.default}` | {field.metadata['help'][:40]}" in page.replace("%%", "%")


def test_readme_is_a_map():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the book is docs/"
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert [ln.split()[:2] for ln in first_block] == [["make", "demo"], ["make", "test"]]
    assert all(re.search(r"\d+ min", ln) for ln in first_block), "state both times"
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    in_nav = {next(iter(item.values())) for item in config["nav"]}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages == in_nav, f"pages missing from mkdocs.yml nav: {pages - in_nav}; nav without a page: {in_nav - pages}"
    index = (ROOT / "docs" / "index.md").read_text()
    for page in pages - {"index.md"}:
        assert f"({page})" in index, f"docs/index.md does not list {page}"


def test_readme_references_hold():
    hooks = _hooks()
    text = README.read_text()
    problems = hooks.check_code_refs(text) + hooks.check_commands(text) + hooks.check_repo_links(text, README)
    assert problems == []


def test_checks_catch_what_they_name():
    hooks = _hooks()
    refs = hooks.check_code_refs("`client/common.py` (`prepare`, `no_such_fn`), `genrec/model.py` `NoSuchClass`, "
                                 "`genrec.core.contract.ITEM_STATS`, `genrec.core.nomodule`, `server/none.yaml`, "
                                 "`build/examples/are/fine`")
    assert refs == ["`client/common.py` (`no_such_fn`): client/common.py defines no `no_such_fn`",
                    "`genrec/model.py` (`NoSuchClass`): genrec/model.py defines no `NoSuchClass`",
                    "`genrec.core.nomodule`: genrec/core/__init__.py defines no `nomodule`",
                    "`server/none.yaml`: no such file or folder in the repository"]
    cmds = hooks.check_commands("`genrec export --precision int8 --nope`\n```bash\ngenrec index build --catalog x \\\n"
                                "    --bogus 1     # --a-comment is prose\ngenrec frobnicate\n```\n")
    assert sorted(cmds) == ["`genrec export --nope`: no such flag", "`genrec frobnicate`: no such command",
                            "`genrec index build --bogus`: no such flag"]
    assert hooks.check_repo_links("[a](docs/model.md) [b](docs/nothere.md#x) [c](https://example.org)", README) == [
        "link to docs/nothere.md#x: no such file"]


def test_client_example_blocks_agree():
    """The README and the client page show the same example (tests/test_client.py runs the README's)."""
    blocks = [re.search(r"<!-- client-example.*?-->\s*```python\n(.*?)```", p.read_text(), re.S).group(1)
              for p in (README, ROOT / "docs" / "client.md")]
    assert blocks[0] == blocks[1]
