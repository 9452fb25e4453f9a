"""Console output of the CLI and the demo (rich tables): its own module, so neither imports the other."""

from __future__ import annotations


def print_recommendations(recs, title: str = "recommendations") -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{title} ({recs.model_name} v{recs.model_version}, {recs.latency_ms:.1f} ms)")
    for col, kw in (("#", {"justify": "right"}), ("score", {"justify": "right"}), ("topic", {"justify": "right"}),
                    ("item", {}), ("because you read", {})):
        table.add_column(col, **kw)
    for rank, it in enumerate(recs.items, 1):
        because = "\n".join(f"{b.weight:+.2f}  {b.text[:50]}" for b in it.because) or "(no history: cold start)"
        table.add_row(str(rank), f"{it.score:.3f}", f"{it.tasks.get('topic_affinity', 0):.2f}",
                      escape(f"[{it.category or '?'}] {it.text}"), escape(because))
    Console().print(table)
    top = ", ".join(f"{k} {v:.2f}" for k, v in list(recs.user_topics.items())[:3])
    Console().print(f"user topics: {top}")


def print_metrics(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="evaluation", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        if k != "full_ranking":
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)
    if "full_ranking" in result:
        print_full_ranking(result["full_ranking"])


def print_full_ranking(fr: dict) -> None:
    """One row per system (genrec.evaluate.full_ranking), one column per metric."""
    from rich.console import Console
    from rich.table import Table

    systems = [k for k, v in fr.items() if isinstance(v, dict)]
    metrics = list(fr[systems[0]]) if systems else []
    table = Table(title=f"full ranking: {fr['users']} users x {fr['catalog_items']} items, history excluded "
                        f"(two-stage: top {fr['retrieval_m']} by user . item, then the heads)")
    table.add_column("system")
    for m in metrics:
        table.add_column(m, justify="right")
    for name in systems:
        table.add_row(name, *(f"{fr[name][m]:.4f}" for m in metrics))
    Console().print(table)
    Console().print(f"exact top 10 inside the retrieval top {fr['retrieval_m']}: "
                    f"{fr['heads_top10_in_retrieval_top_m']:.3f}")
