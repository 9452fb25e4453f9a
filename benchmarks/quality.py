"""``genrec bench quality`` (``make quality``): the model-quality ablation, baselines alongside.

Entry point: ``run_quality(QualityConfig) -> dict``. For every dataset (the real MovieLens 100K set from
``../shared/data/ml-100k`` when present, imported with the standard protocol, and the synthetic demo set)
and every variant (content only / + item counts / + collaborative vectors / + the click logit started at the
strongest baseline (the default) / default + training with some candidates' statistics dropped (new items) /
+ fine-tuned top LM layer / + summaries as item text), it trains with each seed and evaluates on the test split
with ``genrec.evaluate`` -- the same impressions give the simple baselines. Writes OUT/results.json and
OUT/results.md (the README's table). Selection is on validation only (early stopping); the test split is scored
once per run. Finished runs are reused only for the same code and settings.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"

# variant -> (ModelConfig or TrainConfig overrides, item text). Cumulative, as in the README's ablation (the
# "default + ..." rows each add one thing to the default). Item text: "title",
# "summaries" (the Wikipedia line as the abstract), "llm" (titles rewritten by `genrec enrich items` with the
# packaged local LLM) or "users" (plain titles; user profiles and cold-user items from `genrec enrich users` /
# `cold-users` beside behaviors.tsv). LLM answers are cached in WORKDIR/data/enrich_cache.jsonl: only the
# first run pays.
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "content only": ({"item_stats": False}, "title"),
    "+ item counts": ({"collaborative": False, "baseline_init": 0.0}, "title"),
    "+ collaborative vectors": ({"baseline_init": 0.0}, "title"),
    # "(before)": the earlier default's settings; since the epoch-0 reference is the baseline for every match_init, a
    # rerun of this row also keeps the start when it ends clearly below it (the committed row predates that)
    "+ baseline start with a random match (before)": ({"match_init": 1.0, "stats_dropout": 0.0}, "title"),
    "+ match from zero and kept above its start": ({"match_init": 0.0, "stats_dropout": 0.0}, "title"),
    "+ new items in training at the auto rate": ({"stats_dropout_search": ()}, "title"),
    # the auto rate and TrainConfig.stats_dropout_search's (0.5) trained from one start, validation keeps the better
    "+ the new-item rate chosen on validation": ({"soup": False}, "title"),
    # ...or the mean of both rates' weights (TrainConfig.soup) where validation prefers it
    "+ their soup where validation prefers it (default)": ({}, "title"),
    "default, the match from a random start": ({"match_init": 1.0}, "title"),
    "default + stats dropout 0.5": ({"stats_dropout": 0.5}, "title"),
    # the start also ranks new items by category overlap (ModelConfig.overlap_init; measured, off by default)
    "default + category overlap in the start": ({"overlap_init": 0.6}, "title"),
    "+ fine-tuned top LM layer": ({"finetune_layers": 1}, "title"),
    "+ summaries as item text": ({"use_abstract": True}, "summaries"),
    "content only + LLM-enriched titles": ({"item_stats": False}, "llm"),
    "content only + summaries as item text": ({"item_stats": False, "use_abstract": True}, "summaries"),
    "+ LLM-enriched titles": ({}, "llm"),
    "+ LLM user profiles": ({"profiles": True}, "users"),
    "+ LLM cold-user items": ({"cold_user_items": True}, "users"),
    "+ LLM user profiles + cold-user items": ({"profiles": True, "cold_user_items": True}, "users"),
}
# the rows run on the new-item regime too (ml-100k-new): the ones that say something about new items
REGIME_VARIANTS = ("content only", "+ item counts", "+ baseline start with a random match (before)",
                   "+ match from zero and kept above its start", "+ new items in training at the auto rate",
                   "+ the new-item rate chosen on validation", "+ their soup where validation prefers it (default)",
                   "default, the match from a random start", "default + stats dropout 0.5",
                   "default + category overlap in the start")
LLM_VARIANTS = ("content only + LLM-enriched titles", "content only + summaries as item text", "+ LLM-enriched titles",
                "+ LLM user profiles", "+ LLM cold-user items", "+ LLM user profiles + cold-user items")
METRICS = ("group_auc", "mrr", "ndcg@10")
NEW_ITEM_SHARE = 0.3          # ml-100k-new: share of test candidates new (the held-out movie set's regime: 31 %)
PAIR_KINDS = ("known", "mixed", "new")
TARGET_MARGIN = 0.015         # issue 26: every real set and regime >= strongest simple baseline + this


@dataclasses.dataclass
class QualityConfig:
    out: str = dataclasses.field(default="benchmarks/results/quality", metadata={
        "help": "where results.json and results.md go"})
    workdir: str = dataclasses.field(default="build/quality", metadata={"help": "imported data and trained runs"})
    seeds: tuple[int, ...] = dataclasses.field(default=(0, 1, 2), metadata={
        "help": "training seeds; every figure is mean +- std over them"})
    datasets: tuple[str, ...] = dataclasses.field(default=("ml-100k", "ml-100k-new", "synthetic"), metadata={
        "help": "ml-100k (the standard split, 3 %% of test candidates new; needs ../shared/data/ml-100k, skipped "
                "when absent), ml-100k-new (the same log with items launched at the training cut: 30 %% of test "
                "candidates new, `genrec data import movielens --new-items 0.3`) and/or synthetic"})
    variants: tuple[str, ...] = dataclasses.field(default=tuple(VARIANTS)[:13], metadata={
        "help": "ablation rows to run on ml-100k (names as in the table); the LLM rows (" + ", ".join(LLM_VARIANTS)
                + ") are opt-in: their first run enriches the catalog with the local LLM (~25 min on one core)"})
    synthetic_variants: tuple[str, ...] = dataclasses.field(default=tuple(VARIANTS)[:11], metadata={
        "help": "ablation rows on the synthetic set (its text already carries the signal: the LM rows cost "
                "time and say little there)"})
    ml100k: str = dataclasses.field(default=str(ML100K), metadata={"help": "the MovieLens 100K folder"})
    threads: int = dataclasses.field(default=2, metadata={"help": "torch threads"})
    enrich_limit: int = dataclasses.field(default=0, metadata={
        "help": "LLM rows: enrich only the first N items of each catalog (0 = all; the rest keep their titles): "
                "3000 synthetic items take ~1 h on one core of a busy machine"})


def _prepare(name: str, cfg: QualityConfig, text: str) -> Path | None:
    work = Path(cfg.workdir) / "data"
    if name in ("ml-100k", "ml-100k-new"):
        raw = Path(cfg.ml100k)
        if not (raw / "u.data").is_file():
            print(f"quality: {raw} not found; skipping ml-100k")
            return None
        from genrec.data.importers import ImportConfig, import_movielens

        out = work / (name + {"title": "", "summaries": "-summaries", "llm": "-llm", "users": "-users"}[text])
        if not (out / "test" / "behaviors.tsv").is_file():
            wiki = raw / "movie_wiki.csv"
            import_movielens(raw, out, ImportConfig(new_items=NEW_ITEM_SHARE if name == "ml-100k-new" else 0.0),
                             summaries=wiki if text == "summaries" and wiki.is_file() else None)
        return _enriched(out, work, cfg.enrich_limit) if text == "llm" else (
            _users_enriched(out, work, cfg.enrich_limit) if text == "users" else out)
    if name == "synthetic":
        from genrec.data.synth import SynthConfig, synthesize

        out = work / {"llm": "synthetic-llm", "users": "synthetic-users"}.get(text, "synthetic")
        if not (out / "dev" / "behaviors.tsv").is_file():
            synthesize(out, SynthConfig())
        return _enriched(out, work, cfg.enrich_limit) if text == "llm" else (
            _users_enriched(out, work, cfg.enrich_limit) if text == "users" else out)
    raise ValueError(f"unknown dataset {name!r}: ml-100k or synthetic")


def _enriched(data: Path, work: Path, limit: int) -> Path:
    """``data`` with news_enriched.tsv beside each news.tsv (the local LLM; cached answers are reused)."""
    from genrec.enrich import EnrichConfig, enrich_items

    enrich_items(data, EnrichConfig(cache=str(work / "enrich_cache.jsonl"), limit=limit), progress=False)
    return data


def _users_enriched(data: Path, work: Path, limit: int) -> Path:
    """``data`` with user_profiles.tsv and cold_users.tsv beside each behaviors.tsv (the local LLM, cached)."""
    from genrec.enrich_users import UserEnrichConfig, enrich_cold_users, enrich_users

    cfg = UserEnrichConfig(cache=str(work / "enrich_cache.jsonl"), limit=limit)
    enrich_users(data, cfg, progress=False)
    enrich_cold_users(data, cfg, progress=False)
    return data


def code_fingerprint() -> str:
    """sha256 over the source of the genrec package (model, training, evaluation, data): a finished run is
    reused only while this matches, so a code change cannot leave stale rows in the table."""
    import hashlib

    import genrec

    h = hashlib.sha256()
    root = Path(genrec.__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def finished_run(done: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The run recorded in ``done`` when it was made with ``key`` (code fingerprint and settings), else None."""
    if not done.is_file():
        return None
    run = json.loads(done.read_text())
    return run if run.get("key") == key else None


def _test_split(folder: Path) -> Path:
    return folder / "test" if (folder / "test").is_dir() else folder / "dev"


def run_quality(cfg: QualityConfig = QualityConfig()) -> dict[str, Any]:
    from genrec.config import EvalConfig, ModelConfig, TrainConfig
    from genrec.evaluate import evaluate
    from genrec.train import train

    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}           # the rest go to TrainConfig

    unknown = (set(cfg.variants) | set(cfg.synthetic_variants)) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; known: {list(VARIANTS)}")
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    code = code_fingerprint()
    for dataset in cfg.datasets:
        for variant in (cfg.synthetic_variants if dataset == "synthetic" else
                        cfg.variants if dataset == "ml-100k" else [v for v in cfg.variants if v in REGIME_VARIANTS]):
            overrides, text = VARIANTS[variant]
            data = _prepare(dataset, cfg, text)
            if data is None:
                continue
            runs = []
            for seed in cfg.seeds:
                run_dir = Path(cfg.workdir) / "runs" / f"{dataset}-{variant.strip('+ ').replace(' ', '-')}-s{seed}"
                done = run_dir / "quality_run.json"          # resumable: a finished run of this code is not redone
                key = {"code": code, "overrides": overrides, "text": text, "threads": cfg.threads}
                before = finished_run(done, key)
                if before is not None:
                    runs.append(before)
                    print(f"quality: {dataset} | {variant} | seed {seed}: done before ({done})")
                    continue
                if done.is_file():
                    print(f"quality: {dataset} | {variant} | seed {seed}: {done} is from other code or settings; "
                          "training again")
                t0 = time.perf_counter()
                model_over = {k: v for k, v in overrides.items() if k in model_fields}
                train_over = {k: v for k, v in overrides.items() if k not in model_fields}
                res = train(data / "train", run_dir, ModelConfig(**model_over),
                            TrainConfig(seed=seed, threads=cfg.threads, **train_over), progress=False,
                            log=lambda _m: None)
                ev = evaluate(res.checkpoint_path, _test_split(data), EvalConfig(threads=cfg.threads))
                runs.append({"seed": seed, "best_epoch": res.best_epoch, "val_group_auc": res.metrics["group_auc"],
                             "seconds": round(time.perf_counter() - t0, 1), **{m: ev[m] for m in METRICS},
                             "baselines": ev["baselines"], "new_items": ev["new_items"],
                             "explanation_faithfulness": ev.get("explanation_faithfulness"),
                             "explanation_category_match": ev.get("explanation_category_match"),
                             "explanation_category_match_random": ev.get("explanation_category_match_random"),
                             "key": key})
                done.write_text(json.dumps(runs[-1]) + "\n")
                print(f"quality: {dataset} | {variant} | seed {seed}: test group-AUC {ev['group_auc']:.4f} "
                      f"(val {res.metrics['group_auc']:.4f}, epoch {res.best_epoch}, {runs[-1]['seconds']} s)",
                      flush=True)
            rows.append({"dataset": dataset, "variant": variant, "runs": runs, **_summary(runs)})
    result = {"config": dataclasses.asdict(cfg), "rows": rows, "seconds": round(time.perf_counter() - t_start, 1)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return result


def _mean_std(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {m: _mean_std([r[m] for r in runs]) for m in (*METRICS, "val_group_auc")}
    faith = [r["explanation_faithfulness"] for r in runs if r["explanation_faithfulness"] is not None]
    out["explanation_faithfulness"] = _mean_std(faith) if faith else None
    out["explanation_category_match"] = _mean_std([r["explanation_category_match"] for r in runs])
    out["explanation_category_match_random"] = _mean_std([r["explanation_category_match_random"] for r in runs])
    out["baselines"] = runs[0]["baselines"]             # deterministic: identical for every seed
    new = runs[0]["new_items"]
    out["new_share"] = {"candidates": new["candidate_share"], "clicks": new["click_share"]}
    out["pairs"] = {k: _mean_std([r["new_items"]["model"][k]["group_auc"] for r in runs])
                    for k in PAIR_KINDS if k in new["model"]}
    out["baseline_pairs"] = {name: {k: v["group_auc"] for k, v in split.items()}
                             for name, split in new["baselines"].items()}
    best = max(out["baselines"], key=out["baselines"].get)
    out["strongest_baseline"] = best
    out["margin"] = out["group_auc"][0] - out["baselines"][best]
    return out


def markdown(result: dict[str, Any]) -> str:
    seeds = len(result["config"]["seeds"])
    spent = sum(r["seconds"] for row in result["rows"] for r in row["runs"])      # resumed runs included
    lines = [f"Test split; mean ± std over {seeds} seeds; baselines on the same impressions. "
             f"Training + evaluation: {spent / 60:.0f} min summed over runs. Pairs: group-AUC over (clicked, "
             "non-clicked) pairs of known/known, known/new (mixed) and new/new candidates (new = no item statistics).",
             ""]

    def pm(v):
        return f"{v[0]:.4f} ± {v[1]:.4f}"

    for dataset in dict.fromkeys(r["dataset"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["dataset"] == dataset]
        share = rows[0]["new_share"]
        lines += [f"**{dataset}**: {100 * share['candidates']:.1f} % of test candidates new "
                  f"({100 * share['clicks']:.1f} % of clicks)", "",
                  "| model | group-AUC | known pairs | mixed pairs | new pairs | MRR | nDCG@10 | margin over strongest "
                  "baseline | explanation faithfulness | explanation category match (random) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, value in rows[0]["baselines"].items():
            bp = rows[0]["baseline_pairs"].get(name, {})
            cells = " | ".join(f"{bp[k]:.4f}" if k in bp else "-" for k in PAIR_KINDS)
            lines.append(f"| baseline: {name.replace('_', ' ')} | {value:.4f} | {cells} | | | | | |")
        for r in rows:
            faith = f"{r['explanation_faithfulness'][0]:.1f}×" if r["explanation_faithfulness"] else "n/a"
            cat = (f"{r['explanation_category_match'][0]:.1%} ({r['explanation_category_match_random'][0]:.1%})")
            cells = " | ".join(pm(r["pairs"][k]) if k in r["pairs"] else "-" for k in PAIR_KINDS)
            lines.append(f"| {r['variant']} | **{pm(r['group_auc'])}** | {cells} | {pm(r['mrr'])} | "
                         f"{pm(r['ndcg@10'])} | {r['margin']:+.4f} vs {r['strongest_baseline'].replace('_', ' ')} | "
                         f"{faith} | {cat} |")
        lines.append("")
    return "\n".join(lines)
