"""Console output of the CLI and the demo: its own module, so neither imports the other.

On a terminal the tables are rich tables fitted to its width. Anywhere else (a log file, CI, a pipe) they are plain
text: every cell whole (rich would cut cells to 80 columns with an ellipsis, mid-word or in the middle of a wide
character), ASCII rules, one physical line per cell line, columns aligned by display width.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Sequence
from typing import TextIO

Column = tuple[str, str]          # (header, "left" | "right")


def _width(text: str) -> int:
    """Display columns of ``text``: East Asian wide and fullwidth characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
               for ch in text)


def _pad(text: str, width: int, justify: str) -> str:
    gap = " " * (width - _width(text))
    return gap + text if justify == "right" else text + gap


def plain_table(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    """``rows`` as aligned plain text; a cell may hold several lines, nothing is cut or wrapped."""
    cells = [[str(c).split("\n") for c in row] for row in rows]
    widths = [max([_width(name)] + [_width(line) for row in cells for line in row[i]])
              for i, (name, _) in enumerate(columns)]

    def line(parts: Sequence[str]) -> str:
        return "  ".join(_pad(p, w, j) for p, w, (_, j) in zip(parts, widths, columns)).rstrip()

    out = [title, line([name for name, _ in columns]), "  ".join("-" * w for w in widths)]
    for row in cells:
        for k in range(max(len(c) for c in row)):
            out.append(line([c[k] if k < len(c) else "" for c in row]))
    return "\n".join(out)


def print_table(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]],
                file: TextIO | None = None) -> None:
    """A rich table on a terminal, :func:`plain_table` anywhere else."""
    file = file or sys.stdout
    if not file.isatty():
        print(plain_table(title, columns, rows), file=file, flush=True)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*(escape(str(c)) for c in row))
    Console(file=file).print(table)


def print_recommendations(recs, title: str = "recommendations", file: TextIO | None = None) -> None:
    rows = []
    for rank, it in enumerate(recs.items, 1):
        because = "\n".join(f"{b.weight:+.2f}  {b.text}" for b in it.because) or "(no history: cold start)"
        rows.append([str(rank), f"{it.score:.3f}", f"{it.tasks.get('topic_affinity', 0):.2f}",
                     f"[{it.category or '?'}] {it.text}", because])
    print_table(f"{title} ({recs.model_name} v{recs.model_version}, {recs.latency_ms:.1f} ms)",
                [("#", "right"), ("score", "right"), ("topic", "right"), ("item", "left"),
                 ("because you read", "left")], rows, file)
    top = ", ".join(f"{k} {v:.2f}" for k, v in list(recs.user_topics.items())[:3])
    print(f"user topics: {top}", file=file or sys.stdout, flush=True)


def print_metrics(result: dict, file: TextIO | None = None) -> None:
    nested = ("full_ranking", "new_items")
    rows = [[k, f"{v:.4f}" if isinstance(v, float) else str(v)] for k, v in result.items() if k not in nested]
    print_table("evaluation", [("metric", "left"), ("value", "right")], rows, file)
    if "new_items" in result:
        print_new_items(result["new_items"], file)
    if "full_ranking" in result:
        print_full_ranking(result["full_ranking"], file)


def print_new_items(report: dict, file: TextIO | None = None) -> None:
    """genrec.evaluate.new_item_report: group-AUC over known/known, new/new and mixed pairs, model and baselines."""
    kinds = ("known", "mixed", "new", "with_new")
    systems = {"model": report["model"], **{f"baseline: {k}": v for k, v in report["baselines"].items()}}

    def cell(split: dict, kind: str) -> str:
        return f"{split[kind]['group_auc']:.4f}" if kind in split else "-"

    pairs = report["model"]
    print_table(f"new items: {100 * report['candidate_share']:.1f} % of candidates, {100 * report['click_share']:.1f} "
                f"% of clicks have no item statistics; group-AUC by pair kind (pairs: "
                + ", ".join(f"{k} {pairs[k]['pairs']}" for k in kinds if k in pairs) + ")",
                [("system", "left")] + [(k, "right") for k in kinds],
                [[name, *(cell(split, k) for k in kinds)] for name, split in systems.items()], file)


def print_full_ranking(fr: dict, file: TextIO | None = None) -> None:
    """One row per system (genrec.evaluate.full_ranking), one column per metric."""
    systems = [k for k, v in fr.items() if isinstance(v, dict)]
    metrics = list(fr[systems[0]]) if systems else []
    print_table(f"full ranking: {fr['users']} users x {fr['catalog_items']} items, history excluded "
                f"(two-stage: top {fr['retrieval_m']} by user . item, then the heads)",
                [("system", "left")] + [(m, "right") for m in metrics],
                [[name, *(f"{fr[name][m]:.4f}" for m in metrics)] for name in systems], file)
    print(f"exact top 10 inside the retrieval top {fr['retrieval_m']}: "
          f"{fr['heads_top10_in_retrieval_top_m']:.3f}", file=file or sys.stdout, flush=True)
