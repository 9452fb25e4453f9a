"""mkdocs hooks that keep the docs true to the code (``mkdocs build --strict`` fails on any warning).

* Links that leave ``docs/`` (``../benchmarks/results/x/results.md``, ``../README.md``) are checked against the
  checkout and rewritten for the built site; mkdocs checks the links and anchors between pages itself.
* Code references: every inline-code path of this repository (``genrec/core/stats.py``) must exist, every
  dotted name (``genrec.core.contract.ITEM_STATS``) must be defined, and names given with a file
  (``client/common.py`` (``prepare``)) must be defined in that file.
* Flag tables: the blocks between ``<!-- flags: genrec train -->`` and ``<!-- /flags -->`` are generated from
  the CLI parser, whose flags come from the config dataclasses (``genrec.cliargs``); a stale block fails the
  build. ``python docs/hooks.py --write`` (``make docs-flags``) regenerates them.

The README is not part of the site; ``tests/test_docs.py`` runs the same checks over it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
log = logging.getLogger("mkdocs.hooks.genrec")

# top-level entries a code path may start with; anything else (build/..., OUT/..., /dev/shm) is an example path
REPO_TOPS = ("genrec", "export", "model_repository", "server", "client", "benchmarks", "tests", "docs", ".ci",
             "Makefile", "pyproject.toml", "mkdocs.yml", "README.md")
# import name -> folder, as pyproject's package-dir maps them
PACKAGE_DIRS = {"genrec.export": "export", "genrec.model_repository": "model_repository", "genrec.server": "server",
                "genrec.client": "client", "genrec.benchmarks": "benchmarks", "genrec": "genrec"}

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_LINK = re.compile(r"(?<!!)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)\)")
_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_PATH = re.compile(r"^[\w.-]+(/[\w.*<>-]*)+$|^[\w-]+\.(py|md|yaml|yml|toml|json|txt)$")
_DOTTED = re.compile(r"^genrec(\.\w+)+$")
_IDENT = re.compile(r"^[A-Za-z_]\w*$")
_FLAGS = re.compile(r"(<!-- flags: (genrec[\w -]*?) -->\n)(.*?)(<!-- /flags -->)", re.S)


def strip_fences(markdown: str) -> str:
    """The text outside fenced code blocks (whose paths are examples, not references)."""
    return _FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), markdown)   # same offsets


# ---- code references --------------------------------------------------------------------------------------

def _module_file(module: str) -> Path | None:
    for prefix in sorted(PACKAGE_DIRS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            rel = module[len(prefix):].lstrip(".").replace(".", "/")
            base = ROOT / PACKAGE_DIRS[prefix] / rel if rel else ROOT / PACKAGE_DIRS[prefix]
            for cand in (base.with_suffix(".py"), base / "__init__.py"):
                if cand.is_file():
                    return cand
            return None
    return None


def defines(source: str, name: str) -> bool:
    """Whether a Python source defines ``name`` at any level (def, class, assignment, import, field)."""
    pat = (rf"^\s*(async\s+def|def|class)\s+{name}\b|^\s*{name}\s*(:[^=\n]*)?=|^\s*{name}\s*:"
           rf"|\bimport\b[^\n]*\b{name}\b|^\s*self\.{name}\s*=")
    return re.search(pat, source, re.M) is not None


def check_dotted(name: str) -> str | None:
    """None if ``genrec.a.b.C`` names a module, or a module plus a name defined in it; else what is wrong."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        path = _module_file(".".join(parts[:i]))
        if path is None:
            continue
        rest = parts[i:]
        if not rest:
            return None
        if defines(path.read_text(), rest[0]):
            return None
        return f"`{name}`: {path.relative_to(ROOT)} defines no `{rest[0]}`"
    return f"`{name}`: no such module"


def check_code_refs(markdown: str) -> list[str]:
    """Problems with the repository paths and Python names a page's inline code spans name."""
    text = strip_fences(markdown)
    problems: list[str] = []
    spans = list(_CODE.finditer(text))
    for i, m in enumerate(spans):
        span = m.group(1).strip()
        if _DOTTED.match(span):
            err = check_dotted(span)
            if err:
                problems.append(err)
            continue
        if not _PATH.match(span) or "<" in span or "*" in span:
            continue
        top = span.split("/")[0]
        if top not in REPO_TOPS:
            continue
        target = ROOT / span
        if not target.exists():
            problems.append(f"`{span}`: no such file or folder in the repository")
            continue
        if target.suffix != ".py":
            continue
        # names given with the file: `f.py` (`a`, `b`) or `f.py` `Name`
        names: list[str] = []
        after = text[m.end():]
        paren = re.match(r"\s*\(((?:`[^`]+`(?:,\s*|\s+and\s+)?)+)\)", after)
        if paren:
            names = re.findall(r"`([^`]+)`", paren.group(1))
        elif i + 1 < len(spans) and re.fullmatch(r" ", text[m.end():spans[i + 1].start()]):
            names = [spans[i + 1].group(1)]
        source = target.read_text()
        for name in names:
            name = name.split("(")[0]
            if _IDENT.match(name) and not defines(source, name):
                problems.append(f"`{span}` (`{name}`): {span} defines no `{name}`")
    return problems


_INVOKE = re.compile(r"(?:^|[\s`(;&|])genrec((?: +[a-z][\w-]*)+)((?:\\\n|[^\n`])*)")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    sys.path.insert(0, str(ROOT))
    from genrec.cli import build_parser

    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        found[" ".join(words)] = parser
        for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
            for name, child in sub.choices.items():
                walk(child, words + (name,))

    walk(build_parser(), ())
    return found


_PARSERS: dict[str, argparse.ArgumentParser] = {}


def check_commands(markdown: str) -> list[str]:
    """Problems with the ``genrec ...`` invocations a page shows (code blocks and inline code): the command
    must exist and every ``--flag`` given to it must be one of its flags."""
    if not _PARSERS:
        _PARSERS.update(_parsers())
    problems = []
    code = "\n".join(m.group(0) for m in _FENCE.finditer(markdown)) + "\n" + \
        "\n".join(m.group(1) for m in _CODE.finditer(strip_fences(markdown)))
    for m in _INVOKE.finditer(code):
        words = m.group(1).split()
        # the longest prefix that is a command; the rest are positional values or prose
        while words and " ".join(words) not in _PARSERS:
            words.pop()
        if not words:
            problems.append(f"`genrec{m.group(1)}`: no such command")
            continue
        command = " ".join(words)
        parser = _PARSERS[command]
        known = {s for a in parser._actions for s in a.option_strings} | {"--help"}
        known |= {s for a in _PARSERS[""]._actions for s in a.option_strings}
        rest = " ".join(line.split(" #")[0] for line in m.group(2).split("\n"))    # shell comments are prose
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
            if flag not in known:
                problems.append(f"`genrec {command} {flag}`: no such flag")
    return problems


# ---- links that leave docs/ -------------------------------------------------------------------------------

def outside_links(markdown: str, page: Path) -> list[tuple[re.Match, Path]]:
    """Relative links of ``page`` whose target lies outside docs/ (in the repository)."""
    out = []
    for m in _LINK.finditer(strip_fences(markdown)):
        target = m.group(2).split("#")[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            continue
        path = (page.parent / target).resolve()
        if DOCS not in path.parents and path != DOCS:
            out.append((m, path))
    return out


def check_repo_links(markdown: str, page: Path) -> list[str]:
    """Relative links (any page, README included) whose target file does not exist."""
    problems = []
    for m in _LINK.finditer(strip_fences(markdown)):
        target = m.group(2).split("#")[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            continue
        if not (page.parent / target).exists():
            problems.append(f"link to {m.group(2)}: no such file")
    return problems


# ---- flag tables ------------------------------------------------------------------------------------------

def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def flag_table(command: str) -> str:
    """The Markdown table of every flag of ``genrec SUB ...``, from the parser the CLI itself builds."""
    sys.path.insert(0, str(ROOT))
    from genrec.cli import build_parser

    parser = _subparser(build_parser(), command.split()[1:])
    rows = ["| flag | default | what it is for | from |", "|---|---|---|---|"]
    for group in parser._action_groups:
        source = "" if group.title in ("options", "optional arguments", "positional arguments") else group.title
        for action in group._group_actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            flags = [s for s in action.option_strings if s.startswith("--")]
            if isinstance(action, argparse.BooleanOptionalAction):
                flags = [flags[0] + " / " + flags[1]] if len(flags) == 2 else flags
            text = (action.help or "").replace("%%", "%")
            default = ""
            found = re.search(r"\s*\(default: (.*)\)$", text)
            if found:
                default, text = found.group(1), text[:found.start()]
            elif action.required:
                default = "required"
            elif action.default not in (None, argparse.SUPPRESS, False):
                default = str(action.default)
            # a default under the checkout's parent (../shared) is written relative: the page is the same in
            # every checkout (CI clones elsewhere)
            default = default.replace(str(ROOT.parent) + "/", "../")
            text = text.replace("|", "\\|")
            default = f"`{default}`" if default not in ("", "required") else default
            rows.append(f"| `{', '.join(flags)}` | {default} | {text} | {f'`{source}`' if source else ''} |")
    return "\n".join(rows) + "\n"


def render_flags(markdown: str) -> str:
    return _FLAGS.sub(lambda m: m.group(1) + flag_table(m.group(2).strip()) + m.group(4), markdown)


def commands() -> list[tuple[str, str]]:
    """Every ``genrec`` command that takes flags, with its one-line help, in the CLI's order."""
    sys.path.insert(0, str(ROOT))
    from genrec.cli import build_parser

    out: list[tuple[str, str]] = []

    def walk(parser: argparse.ArgumentParser, words: list[str], help_text: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        own = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
        if not subs or (own and len(words) > 1):
            out.append((" ".join(words), help_text))
        for sub in subs:
            helps = {a.dest: a.help or "" for a in sub._choices_actions}
            for name, child in sub.choices.items():
                walk(child, words + [name], helps.get(name, ""))

    walk(build_parser(), ["genrec"], "")
    return out


CLI_PAGE = "cli.md"


def cli_page() -> str:
    """docs/cli.md, whole: one generated flag table per command."""
    parts = ["# Command-line reference\n",
             "Generated from the CLI parser, whose flags come from the stages' config dataclasses (`genrec.cliargs`: "
             "each field's help is its why-comment): do not edit, run `make docs-flags`. `make test` fails when this "
             "page is stale. `genrec COMMAND --help` prints the same.\n"]
    for command, help_text in commands():
        parts.append(f"## `{command}`\n")
        if help_text:
            parts.append(help_text[0].upper() + help_text[1:] + ".\n")
        parts.append(f"<!-- flags: {command} -->\n{flag_table(command)}<!-- /flags -->\n")
    return "\n".join(parts)


# ---- mkdocs events ----------------------------------------------------------------------------------------

def on_page_markdown(markdown, page, config, files):
    src = Path(page.file.abs_src_path)
    name = page.file.src_path
    if render_flags(markdown) != markdown or (name == CLI_PAGE and markdown != cli_page()):
        log.warning(f"{name}: a flag table is stale: run `make docs-flags`")
    for problem in check_code_refs(markdown) + check_commands(markdown) + check_repo_links(markdown, src):
        log.warning(f"{name}: {problem}")
    # links into the checkout: plain HTML anchors relative to the built page (mkdocs would call them missing pages)
    site_page_dir = Path(config["site_dir"]) / Path(page.file.dest_uri).parent
    for m, path in reversed(outside_links(markdown, src)):
        anchor = "#" + m.group(2).split("#", 1)[1] if "#" in m.group(2) else ""
        href = os.path.relpath(path, site_page_dir) + anchor
        markdown = markdown[:m.start()] + f'<a href="{href}">{m.group(1)}</a>' + markdown[m.end():]
    return markdown


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python docs/hooks.py --write   (regenerates the flag tables in docs/*.md)")
    cli = DOCS / CLI_PAGE
    if not cli.exists() or cli.read_text() != cli_page():
        cli.write_text(cli_page())
        print(f"updated {cli.relative_to(ROOT)}")
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        new = render_flags(text)
        if new != text:
            page.write_text(new)
            print(f"updated {page.relative_to(ROOT)}")
