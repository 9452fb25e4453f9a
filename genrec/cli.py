"""The ``genrec`` command line. Subcommands import their stage lazily, so ``genrec recommend`` (the
client) works where torch is not installed. Flags come from each stage's config dataclass."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from genrec.cliargs import add_dataclass_args, from_args

Handler = Callable[[argparse.Namespace], int]
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def command(fn: Callable[[argparse._SubParsersAction], None]):
    COMMANDS.append(fn)
    return fn


@command
def _data(sub: argparse._SubParsersAction) -> None:
    from genrec.data.synth import SynthConfig

    p = sub.add_parser("data", help="data utilities")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write synthetic MIND-format data (train/ and dev/) with planted structure")
    s.add_argument("--out", required=True, help="output folder")
    add_dataclass_args(s, SynthConfig)

    def run(args: argparse.Namespace) -> int:
        from genrec.data.synth import synthesize

        counts = synthesize(args.out, from_args(SynthConfig, args))
        print(f"wrote {args.out}/train and {args.out}/dev: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        return 0

    s.set_defaults(handler=run)

    from genrec.data.importers import ImportConfig, TableColumns

    imp = dsub.add_parser("import", help="turn real interaction logs into MIND train/ and test/ folders "
                                         "(one protocol for every dataset; see genrec/data/importers.py)")
    isub = imp.add_subparsers(dest="import_command", required=True)
    m = isub.add_parser("movielens", help="a MovieLens release: 100K layout (u.data, u.item, u.genre) or "
                                          "ratings.csv + movies.csv")
    m.add_argument("--raw", required=True, help="folder of the unpacked MovieLens release")
    m.add_argument("--out", required=True, help="output folder: train/, test/, import_report.json")
    m.add_argument("--summaries", help="CSV movie_title,wiki_summary; matched on the exact title, "
                                       "written as the abstract")
    add_dataclass_args(m, ImportConfig)
    t = isub.add_parser("table", help="any items table + interactions table (CSV, TSV or Parquet)")
    t.add_argument("--items", required=True, help="items file: one row per item (id, title, ...)")
    t.add_argument("--interactions", required=True, help="interactions file: one row per user-item event")
    t.add_argument("--out", required=True, help="output folder: train/, test/, import_report.json")
    add_dataclass_args(t, TableColumns)
    add_dataclass_args(t, ImportConfig)
    from genrec.data.leave_one_out import LeaveOneOutConfig

    lo = isub.add_parser("leave-one-out", help="a ReChorus/LRD leave-one-out folder (train.csv, dev.csv and "
                                               "test.csv with fixed negatives, *.item2index, *.text, item_meta.csv)")
    lo.add_argument("--raw", required=True, help="folder of the leave-one-out files")
    lo.add_argument("--out", required=True, help="output folder: train/, dev/, test/, import_report.json")
    add_dataclass_args(lo, LeaveOneOutConfig)

    def run_import(args: argparse.Namespace) -> int:
        from genrec.data.importers import DataImportError, import_movielens, import_table

        try:
            if args.import_command == "leave-one-out":
                from genrec.data.leave_one_out import import_leave_one_out

                report = import_leave_one_out(args.raw, args.out, from_args(LeaveOneOutConfig, args))
                print(report.summary())
                print(f"wrote {args.out}/train, {args.out}/dev, {args.out}/test and {args.out}/import_report.json")
                return 0
            cfg = from_args(ImportConfig, args)
            if args.import_command == "movielens":
                report = import_movielens(args.raw, args.out, cfg, summaries=args.summaries)
            else:
                report = import_table(args.items, args.interactions, args.out, cfg, from_args(TableColumns, args))
        except DataImportError as err:
            print(f"genrec: error: {err}", file=sys.stderr)
            return 2
        print(report.summary())
        print(f"wrote {args.out}/train, {args.out}/test and {args.out}/import_report.json")
        return 0

    m.set_defaults(handler=run_import)
    t.set_defaults(handler=run_import)
    lo.set_defaults(handler=run_import)


@command
def _enrich(sub: argparse._SubParsersAction) -> None:
    from genrec.enrich import EnrichConfig

    p = sub.add_parser("enrich", help="LLM enrichment of the data, offline and cached (GENRE)")
    esub = p.add_subparsers(dest="enrich_command", required=True)
    i = esub.add_parser("items", help="rewrite each item's title from its title/abstract/category into a clearer, "
                                      "more complete one; writes news_enriched.tsv beside each news.tsv, which "
                                      "training, evaluation and index build then read")
    i.add_argument("--data", required=True, help="a MIND folder (news.tsv) or a folder of them (train/, test/, dev/)")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(i, EnrichConfig)

    def run(args: argparse.Namespace) -> int:
        from genrec.enrich import enrich_items

        enrich_items(args.data, from_args(EnrichConfig, args), progress=not args.quiet)    # LLMError: exit 2
        return 0

    i.set_defaults(handler=run)

    from genrec.enrich_users import UserEnrichConfig

    for name, what in (("users", "the user profiler: interest topics (from the dataset's own categories) for each "
                                 "user's history; writes user_profiles.tsv beside each behaviors.tsv (the heads' "
                                 "user_profile input)"),
                       ("cold-users", "the cold-user generator: a few LLM-written item titles for each history "
                                      "shorter than --cold-threshold; writes cold_users.tsv beside each "
                                      "behaviors.tsv (training extends those histories)")):
        u = esub.add_parser(name, help=what)
        u.add_argument("--data", required=True,
                       help="a MIND folder (behaviors.tsv + news.tsv) or a folder of them (train/, test/, dev/)")
        u.add_argument("--quiet", action="store_true", help="no progress bar")
        add_dataclass_args(u, UserEnrichConfig)

        def run_users(args: argparse.Namespace, name: str = name) -> int:
            from genrec.enrich_users import enrich_cold_users, enrich_users

            job = enrich_users if name == "users" else enrich_cold_users
            job(args.data, from_args(UserEnrichConfig, args), progress=not args.quiet)       # LLMError: exit 2
            return 0

        u.set_defaults(handler=run_users)


@command
def _train(sub: argparse._SubParsersAction) -> None:
    from genrec.config import ModelConfig, TrainConfig

    p = sub.add_parser("train", help="train on a MIND folder (news.tsv + behaviors.tsv)")
    p.add_argument("--data", required=True, help="MIND folder with news.tsv and behaviors.tsv")
    p.add_argument("--out", required=True, help="run folder for checkpoint.pt, metrics.json, model_card.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_args(p, ModelConfig)
    add_dataclass_args(p, TrainConfig)

    def run(args: argparse.Namespace) -> int:
        from genrec.train import train

        result = train(args.data, args.out, from_args(ModelConfig, args), from_args(TrainConfig, args),
                       progress=not args.quiet)
        print(json.dumps({"checkpoint": str(result.checkpoint_path), **result.metrics}))
        return 0

    p.set_defaults(handler=run)


@command
def _evaluate(sub: argparse._SubParsersAction) -> None:
    from genrec.config import EvalConfig

    p = sub.add_parser("evaluate", help="group-AUC, MRR, nDCG@5/10 and per-task metrics on a labelled MIND folder")
    p.add_argument("--data", required=True, help="MIND folder with news.tsv and labelled behaviors.tsv")
    p.add_argument("--checkpoint", required=True, help="run folder (or checkpoint.pt) from `genrec train`")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_dataclass_args(p, EvalConfig)

    def run(args: argparse.Namespace) -> int:
        from genrec.evaluate import evaluate

        result = evaluate(args.checkpoint, args.data, from_args(EvalConfig, args), progress=not args.json)
        if args.json:
            print(json.dumps(result))
        else:
            from genrec.printing import print_metrics

            print_metrics(result)
        return 0

    p.set_defaults(handler=run)


@command
def _export(sub: argparse._SubParsersAction) -> None:
    from genrec.export.pipeline import ExportConfig

    p = sub.add_parser("export", help="export the checkpoint to ONNX (fp32/fp16/int8) behind a parity gate")
    p.add_argument("--checkpoint", required=True, help="run folder (or checkpoint.pt) from `genrec train`")
    p.add_argument("--out", required=True, help="artifact folder (ART_DIR)")
    add_dataclass_args(p, ExportConfig)

    def run(args: argparse.Namespace) -> int:
        from genrec.export import ParityError, export

        try:
            art = export(args.checkpoint, args.out, from_args(ExportConfig, args))
        except ParityError as err:
            print(f"export failed: {err}\nsee {args.out}/export_report.md", file=sys.stderr)
            return 3
        print(f"exported {', '.join(art.precisions)} to {art.root} (report: {art.root}/export_report.md)")
        return 0

    p.set_defaults(handler=run)


@command
def _repository(sub: argparse._SubParsersAction) -> None:
    from genrec.model_repository.builder import RepositoryConfig

    p = sub.add_parser("repository", help="Triton model repository")
    rsub = p.add_subparsers(dest="repository_command", required=True)
    b = rsub.add_parser("build", help="build a Triton repository (tokenizer -> encoder -> heads ensemble)")
    b.add_argument("--artifacts", required=True, help="ART_DIR written by `genrec export`")
    b.add_argument("--out", required=True, help="repository folder to create, or a repository built "
                   "before to replace (atomically); any other existing folder is refused")
    add_dataclass_args(b, RepositoryConfig)

    def run(args: argparse.Namespace) -> int:
        from genrec.model_repository.builder import build_repository

        repo = build_repository(args.artifacts, args.out, from_args(RepositoryConfig, args))
        models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
        print(f"wrote {repo} (models: {', '.join(models)})")
        return 0

    b.set_defaults(handler=run)


@command
def _index(sub: argparse._SubParsersAction) -> None:
    from genrec.core.index import AddConfig, IndexConfig
    from genrec.core.retrieval import RetrievalConfig

    p = sub.add_parser("index", help="item-embedding index (the real-time id path)")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="encode a whole catalog into a memory-mapped index (resumable)")
    b.add_argument("--catalog", required=True, help="news.tsv (MIND format) with every item to index")
    b.add_argument("--artifacts", required=True, help="ART_DIR written by `genrec export`")
    b.add_argument("--out", required=True, help="INDEX_DIR (an interrupted build here resumes)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(b, IndexConfig)

    add_dataclass_args(b, RetrievalConfig, skip=("threads",))

    def with_retrieval(index: str, artifacts: str, args: argparse.Namespace) -> None:
        """Retrieval files for the segments just written, when the artifacts carry retrieval.onnx."""
        from genrec.core.artifacts import Artifacts
        from genrec.core.retrieval import build_index_retrieval, has_retrieval

        if has_retrieval(Artifacts.load(artifacts)):
            # the index step's --threads (a flag given only when set: argparse.SUPPRESS defaults)
            threads = getattr(args, "threads", RetrievalConfig.threads)
            build_index_retrieval(index, artifacts, from_args(RetrievalConfig, args, threads=threads))

    def run(args: argparse.Namespace) -> int:
        from genrec.core.index import build_index
        from genrec.index_encoders import ALL

        build_index(args.catalog, args.artifacts, args.out, from_args(IndexConfig, args), progress=not args.quiet,
                    encoders=ALL)
        with_retrieval(args.out, args.artifacts, args)
        return 0

    b.set_defaults(handler=run)

    r = isub.add_parser("retrieval", help="(re)build the retrieval files (retrieval vectors + ANN index) of the "
                                          "served generation's segments that lack them or come from other weights")
    r.add_argument("--index", required=True, help="INDEX_DIR")
    r.add_argument("--artifacts", required=True, help="ART_DIR with retrieval.onnx (the served model's export)")
    add_dataclass_args(r, RetrievalConfig)

    def run_retrieval(args: argparse.Namespace) -> int:
        from genrec.core.retrieval import build_index_retrieval

        build_index_retrieval(args.index, args.artifacts, from_args(RetrievalConfig, args))
        return 0

    r.set_defaults(handler=run_retrieval)

    a = isub.add_parser("add", help="publish new items (or known ids with new text) to a served index: a new "
                                    "generation, switched atomically; running servers pick it up without restart")
    a.add_argument("--catalog", required=True, help="news.tsv (MIND format) with the items to add or replace")
    a.add_argument("--index", required=True, help="INDEX_DIR (served; from `genrec index build`)")
    a.add_argument("--artifacts", required=True,
                   help="ART_DIR the index was built with (its encoder hash must match the index's)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(a, AddConfig)

    def run_add(args: argparse.Namespace) -> int:
        from genrec.core.artifacts import Artifacts
        from genrec.core.index import ItemIndex, add_items
        from genrec.core.retrieval import has_retrieval, segment_retrieval_builder
        from genrec.index_encoders import ALL

        hook = None
        if has_retrieval(Artifacts.load(args.artifacts)):
            # the new segment's retrieval files are written before CURRENT switches: a server never sees a
            # generation (a compacted base above all) without its ANN index
            threads = getattr(args, "threads", RetrievalConfig.threads)
            hook = segment_retrieval_builder(args.artifacts, from_args(RetrievalConfig, args, threads=threads))
        add_items(args.catalog, args.artifacts, args.index, from_args(AddConfig, args), progress=not args.quiet,
                  before_publish=hook, encoders=ALL)
        if hook is not None:                                   # segments from before retrieval existed, if any
            for seg in ItemIndex(args.index).segments:
                hook(seg.folder)
        return 0

    a.set_defaults(handler=run_add)


@command
def _stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="item statistics (exposures, clicks, history users, collaborative vectors) "
                                     "for serving")
    ssub = p.add_subparsers(dest="stats_command", required=True)
    b = ssub.add_parser("build", help="count item statistics and factorize click histories from MIND behaviors "
                                      "logs into STATS_DIR; rerun on fresh logs to refresh a running server (no "
                                      "retraining, no re-encoding)")
    b.add_argument("--behaviors", action="append", required=True,
                   help="behaviors.tsv (MIND format); repeat to count several logs together")
    b.add_argument("--out", required=True, help="STATS_DIR (a new version replaces the old one atomically: readers "
                                                "see the old or the new, never a mix)")
    b.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed lines instead of failing")

    def run(args: argparse.Namespace) -> int:
        from genrec.core.statstore import build_stats

        build_stats(args.behaviors, args.out, skip_bad_lines=args.skip_bad_lines)
        return 0

    b.set_defaults(handler=run)


@command
def _serve(sub: argparse._SubParsersAction) -> None:
    from genrec.server.launcher import ServerConfig

    p = sub.add_parser("serve", help="run tritonserver on a repository until Ctrl-C / SIGTERM")
    p.add_argument("--repository", required=True, help="repository built by `genrec repository build`")
    add_dataclass_args(p, ServerConfig)

    def run(args: argparse.Namespace) -> int:
        from genrec.server.launcher import serve_forever

        return serve_forever(args.repository, from_args(ServerConfig, args))

    p.set_defaults(handler=run)


@command
def _recommend(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="rank candidates for one user against a running server (gRPC), or "
                                         "retrieve from its whole index (ids, no candidates)")
    p.add_argument("--url", default="127.0.0.1:8001", help="gRPC address HOST:PORT")
    p.add_argument("--history", action="append", default=[], help="a history title (repeat, oldest first)")
    p.add_argument("--history-file", help="history items, one per line: "
                                          "text[<TAB>category[<TAB>subcategory[<TAB>exposures,clicks,history_users"
                                          "[,cf0,...]]]]")
    p.add_argument("--history-id", action="append", default=[],
                   help="id path: a history item id of the server's index (repeat, oldest first); without "
                        "--candidates-file the server retrieves the --top-k best items of its whole index")
    p.add_argument("--exclude-id", action="append", default=[], help="retrieval: never return this id (repeat)")
    p.add_argument("--category", action="append", default=None,
                   help="retrieval: return only items of this category (repeat)")
    p.add_argument("--candidates-file",
                   help="candidates, one per line: text[<TAB>category[<TAB>subcategory[<TAB>exposures,clicks,"
                        "history_users[,cf0,...]]]] (items without the statistics column get zeros = the prior; "
                        "without the collaborative vector, zeros = none)")
    p.add_argument("--top-k", type=int, default=10, help="how many items to print")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    p.add_argument("--ssl", action="store_true", help="TLS")
    p.add_argument("--root-cert", help="PEM CA file that signed the server certificate")

    def run(args: argparse.Namespace) -> int:
        from genrec.client import GenrecClientError, RecommenderClient
        from genrec.core.errors import UserError

        history = [(t, "", "", None) for t in args.history] + (
            _read_items(args.history_file) if args.history_file else [])
        retrieve = not args.candidates_file
        if retrieve and (history or not args.history_id):
            raise UserError("recommend: give --candidates-file (rank these), or --history-id without candidates "
                            "(retrieve from the server's index)")
        # with --candidates-file (texts) the retrieval flags would be dropped silently: refused, naming them
        dropped = [flag for flag, value in (("--history-id", args.history_id), ("--exclude-id", args.exclude_id),
                                            ("--category", args.category)) if value and not retrieve]
        if dropped:
            raise UserError(f"recommend: {', '.join(dropped)} only go with retrieval (--history-id without "
                            "--candidates-file); with --candidates-file give the history as texts "
                            "(--history/--history-file)")
        candidates = [] if retrieve else _read_items(args.candidates_file)
        try:
            client = RecommenderClient(args.url, timeout=args.timeout, ssl=args.ssl or bool(args.root_cert),
                                       root_certificates=args.root_cert)
        except ValueError as err:                  # the address: one line, like every other user error
            raise UserError(f"recommend --url {args.url!r}: {err}") from None
        try:
            with client:
                if retrieve:
                    recs = client.recommend(history_ids=args.history_id, k=args.top_k,
                                            exclude_ids=args.exclude_id or None, categories=args.category)
                else:
                    recs = client.recommend([h[0] for h in history], [c[0] for c in candidates],
                                            history_categories=[h[1] for h in history],
                                            history_subcategories=[h[2] for h in history],
                                            candidate_categories=[c[1] for c in candidates],
                                            candidate_subcategories=[c[2] for c in candidates],
                                            top_k=args.top_k, history_stats=_stats_column(history),
                                            candidate_stats=_stats_column(candidates))
        except GenrecClientError as err:
            raise UserError(f"recommend: {type(err).__name__}: {err}") from None
        if args.json:
            import dataclasses
            print(json.dumps(dataclasses.asdict(recs)))
        else:
            from genrec.printing import print_recommendations

            print_recommendations(recs)
        return 0

    p.set_defaults(handler=run)


def _read_items(path: str) -> list[tuple[str, str, str, list[float] | None]]:
    """(text, category, subcategory, statistics or None) per non-empty line."""
    from genrec.core.errors import UserError

    items = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    parts = line.rstrip("\n").split("\t") + ["", "", "", ""]
                    stats = None
                    if parts[3].strip():
                        try:
                            stats = [float(x) for x in parts[3].split(",")]
                        except ValueError:
                            raise UserError(f"{path}:{lineno}: statistics must be numbers 'exposures,clicks,"
                                            f"history_users', got {parts[3]!r}") from None
                    items.append((parts[0], parts[1], parts[2], stats))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err})") from None
    return items


def _stats_column(items) -> list | None:
    """The statistics rows to send (zeros where a line has none, count-only rows padded with a zero
    collaborative vector), or None when no line has any."""
    from genrec.core.contract import N_COUNTS, N_STATS

    if all(it[3] is None for it in items):
        return None
    rows = [it[3] if it[3] is not None else [] for it in items]
    return [r + [0.0] * (N_STATS - len(r)) if len(r) in (0, N_COUNTS) else r for r in rows]


BENCH_COMMANDS: list[tuple[str, Callable[[argparse._SubParsersAction], None]]] = []


def _bench_subcommand(name: str, help: str, module: str, config: str, runner: str,
                      passed: Callable[[Any], bool] = lambda _result: True) -> None:
    """Register `genrec bench NAME` (the suite itself is `genrec bench` with no name): flags from
    MODULE.CONFIG (a module of genrec.benchmarks unless dotted), run by its RUNNER(config); exit 1 unless
    ``passed(result)``."""

    def add(bsub: argparse._SubParsersAction) -> None:
        import importlib

        mod = importlib.import_module(module if "." in module else f"genrec.benchmarks.{module}")
        p = bsub.add_parser(name, help=help)
        add_dataclass_args(p, getattr(mod, config))
        p.set_defaults(handler=lambda args: 0 if passed(getattr(mod, runner)(from_args(getattr(mod, config), args)))
                       else 1)

    BENCH_COMMANDS.append((name, add))


_bench_subcommand("soak", "mixed valid/invalid traffic for minutes: errors, latency drift, RSS growth "
                          "(benchmarks/soak.py: a reliability check under load)",
                  "soak", "SoakConfig", "run_soak", passed=lambda result: result["passed"])
_bench_subcommand("replay", "replay a MIND impression log in time order: text path with and without the vector "
                            "cache, id path; side by side", "replay", "ReplayConfig", "run_replay")
_bench_subcommand("ann", "ANN libraries for whole-catalog retrieval (faiss IVF / HNSW, usearch) against exact search: "
                         "recall@M, latency, build time at 100k and 1M items", "ann", "AnnBenchConfig", "run_ann_bench")
_bench_subcommand("quality", "model-quality ablation on ml-100k and synthetic data, 3 seeds, baselines alongside "
                             "(make quality)", "quality", "QualityConfig", "run_quality")


@command
def _bench(sub: argparse._SubParsersAction) -> None:
    from genrec.benchmarks.suite import BenchConfig

    p = sub.add_parser("bench", help="benchmarks: the latency/throughput suite (anchors side by side), `bench soak`")
    add_dataclass_args(p, BenchConfig)
    bsub = p.add_subparsers(dest="bench_command")
    for name, add in BENCH_COMMANDS:
        try:
            add(bsub)
        except ImportError as exc:   # e.g. `bench soak` needs psutil, which a serve-only install lacks
            _unavailable(bsub, name, exc, label=f"bench {name}")

    def run(args: argparse.Namespace) -> int:
        from genrec.benchmarks.suite import run_bench

        results = run_bench(from_args(BenchConfig, args))
        out = args.out if hasattr(args, "out") else BenchConfig().out
        for t in results["targets"]:
            verdict = ("reported" if t["bound"] is None else
                       {True: "met", False: "MISSED", None: "not measured"}[t["met"]])
            value = "-" if t["value"] is None else f"{t['value']:.3f}"
            bound = "" if t["bound"] is None else f" (bound {t['op']} {t['bound']})"
            print(f"  {verdict:>12}  {t['target']}: {value}{bound} {t['note']}")
        print(f"results: {out}/results.md, results.json, latency.png")
        return 0

    p.set_defaults(handler=run)


@command
def _demo(sub: argparse._SubParsersAction) -> None:
    from genrec.data.synth import SynthConfig
    from genrec.demo import DemoConfig

    p = sub.add_parser("demo", help="the main job end to end on embedded defaults (make demo)")
    add_dataclass_args(p, DemoConfig)
    add_dataclass_args(p, SynthConfig)

    def run(args: argparse.Namespace) -> int:
        from genrec.demo import run_demo

        run_demo(from_args(DemoConfig, args), from_args(SynthConfig, args))
        return 0

    p.set_defaults(handler=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrec", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of user errors too (missing files, bad data, wrong artifacts)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        try:
            add(sub)
        except ImportError as exc:   # e.g. a client-only install without torch: that command is unavailable
            _unavailable(sub, add.__name__.strip("_"), exc)
    return parser


def _unavailable(sub: argparse._SubParsersAction, name: str, exc: ImportError, label: str = "") -> None:
    """``name`` answers that ``exc.name`` is missing. A command whose registration failed half-way keeps its
    parser (argparse cannot take it back): its handler is replaced instead of a second parser added."""
    p = sub.choices.get(name)
    if p is None:       # takes any arguments, so that the handler's one line, not a usage error, answers
        p = sub.add_parser(name, help=f"(unavailable: {exc.name} is not installed)", prefix_chars="+", add_help=False)
        p.add_argument("unavailable_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=lambda _a, exc=exc, label=label or name: _missing(label, exc))


def _missing(name: str, exc: ImportError) -> int:
    from genrec.extras import missing_message

    print(missing_message(name, exc.name), file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    from genrec.core.errors import EXIT_USER_ERROR, UserError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:      # an optional part (genrec.extras) a command imports when it runs
        from genrec.extras import extra_for

        if args.debug or extra_for(err.name) is None:
            raise
        words = [w for w in (sys.argv[1:] if argv is None else argv) if w != "--debug"]
        command = words[:next((i for i, w in enumerate(words) if w.startswith("-")), len(words))]
        return _missing(" ".join(command), err)
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        if args.debug:
            raise
        print(f"genrec: error: {err}", file=sys.stderr)       # the user's to fix: one line, no traceback
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
