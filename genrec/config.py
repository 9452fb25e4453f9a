"""Stage configs as dataclasses (torch-free, so the CLI can list every flag anywhere).

Each field's ``help`` metadata says why the field exists; ``genrec.cliargs`` turns it into a flag.
"""

from __future__ import annotations

import dataclasses

from genrec.core.contract import MAX_HISTORY

# Training tasks; the click task is primary, the others are auxiliary (loss weights: TrainConfig.alpha).
TASKS = ("click", "category", "topic")


@dataclasses.dataclass
class ModelConfig:
    dim: int = dataclasses.field(default=128, metadata={
        "help": "item/user vector size D; 128 keeps the heads cheap and the index small"})
    finetune_layers: int = dataclasses.field(default=0, metadata={
        "help": "top MiniLM layers to fine-tune (0 = frozen LM with cached outputs: fastest on CPU)"})
    max_length: int = dataclasses.field(default=32, metadata={
        "help": "max tokens per item text; longer texts are cut (counted and reported)"})
    use_abstract: bool = dataclasses.field(default=False, metadata={
        "help": "encode title + abstract instead of the title alone (slower, sometimes better)"})
    attention_hidden: int = dataclasses.field(default=128, metadata={
        "help": "hidden size of the additive attention in the user encoder"})
    feature_hidden: int = dataclasses.field(default=32, metadata={
        "help": "hidden size of the engineered-feature MLP in the click head"})
    dropout: float = dataclasses.field(default=0.1, metadata={"help": "dropout on item vectors during training"})
    max_history: int = dataclasses.field(default=MAX_HISTORY, metadata={
        "help": "most recent history items per user the model trains on; it also scales the history-length "
                "feature, so serving refuses longer histories (repository build --max-history <= this)"})
    item_stats: bool = dataclasses.field(default=True, metadata={
        "help": "use item statistics (exposures, clicks, history users) as features; off = content only (ablation)"})
    collaborative: bool = dataclasses.field(default=True, metadata={
        "help": "compare the candidate's collaborative vector (who clicked it) with the history's; off = counts "
                "only (ablation). Needs item_stats"})
    profiles: bool = dataclasses.field(default=False, metadata={
        "help": "use the LLM user profile (`genrec enrich users`: interest topics, the user_profile input) as "
                "features; off by default: on ml-100k it did not help beyond the seed spread (README)"})
    cold_user_items: bool = dataclasses.field(default=False, metadata={
        "help": "extend short histories with the LLM-written items of `genrec enrich cold-users` in training and "
                "evaluation (serving: only when the caller sends them); off by default: no measured gain (README)"})
    match_init: float = dataclasses.field(default=0.0, metadata={
        "help": "initial scale of the user-item match term (a trained parameter). Training compares itself with the "
                "same model at scale 0 (with baseline_init: exactly the ctr_popularity baseline) on validation and "
                "keeps that start when the trained model is clearly worse. 0 (default) = the match earns its weight "
                "from the data (ReZero-style); 1 = it starts at full weight with a random user encoder: lower "
                "validation on ml-100k-new (0.643 vs 0.655), synthetic (0.777 vs 0.784) and a small log "
                "(docs/data-and-quality.md)"})
    baseline_init: float = dataclasses.field(default=2.0, metadata={
        "help": "start the click logit at the strongest simple baseline (smoothed CTR + 0.05 log(1 + popularity), "
                "this many logits per standard deviation of CTR) through a wide linear term over the engineered "
                "features, the deep feature MLP at zero; training moves both. ml-100k validation, 5 seeds: "
                "random start 0.650, 1.0 -> 0.655, 2.0 -> 0.656; on text-rich data with a weak CTR signal it "
                "costs (synthetic demo dev 0.763 -> 0.753, README). 0 = random start; needs item_stats"})
    overlap_init: float = dataclasses.field(default=0.0, metadata={
        "help": "with baseline_init: the wide term's start weight on category overlap (the share of the user's "
                "history in the candidate's category), in logits per unit of share. Items without statistics all "
                "get one baseline logit, so at 0 the start ranks new items among themselves at random; with a "
                "weight it ranks them by category overlap (the strongest simple baseline on new/new pairs), while "
                "known items move little at small weights. At 0.6, validation said no on ml-100k-new (0.653 vs "
                "0.663; ml-100k 0.659 vs 0.658, synthetic level) and its new/new pairs fell on test (0.568 vs "
                "0.585): off by default (docs/data-and-quality.md)"})
    n_categories: int = dataclasses.field(default=1, metadata={"cli": False, "help": "set from the vocabulary"})
    n_subcategories: int = dataclasses.field(default=1, metadata={"cli": False, "help": "set from the vocabulary"})


@dataclasses.dataclass
class TrainConfig:
    epochs: int = dataclasses.field(default=8, metadata={"help": "maximum epochs (early stopping usually ends sooner)"})
    batch_size: int = dataclasses.field(default=64, metadata={"help": "clicks per optimizer step"})
    lr: float = dataclasses.field(default=2e-3, metadata={"help": "learning rate of projection and heads"})
    lm_lr: float = dataclasses.field(default=3e-5, metadata={"help": "learning rate of fine-tuned LM layers"})
    weight_decay: float = dataclasses.field(default=0.01, metadata={"help": "AdamW weight decay"})
    negatives: int = dataclasses.field(default=4, metadata={
        "help": "non-clicked candidates sampled per click (MIND convention K=4)"})
    val_fraction: float = dataclasses.field(default=0.1, metadata={
        "help": "latest fraction of impressions held out for validation/early stopping"})
    ema: float = dataclasses.field(default=0.0, metadata={
        "help": "decay of an exponential moving average of the weights that is validated and saved (0 = off); "
                "steadier than the raw weights on small datasets"})
    stats_warmup: float = dataclasses.field(default=0.0, metadata={
        "help": "earliest fraction of training impressions that only feeds item statistics (not trained on): "
                "their as-of counts are too young to resemble the mature counts seen when serving"})
    stats_dropout: float | None = dataclasses.field(default=None, metadata={
        "help": "share of training candidates shown without statistics, as new items are when served (DropoutNet): "
                "the model learns to rank them from their text and to place them against known ones. Default (auto): "
                "the share of validation candidates new to the training part's statistics (what serving sees one "
                "validation window after a stats build; at most 0.5): the catalog's own arrival rate, and beside it "
                "each stats_dropout_search rate, validation keeping the best. A fixed 0.15 lost on both ml-100k "
                "development splits, 2 seeds (docs/data-and-quality.md)"})
    stats_dropout_search: tuple[float, ...] = dataclasses.field(default=(0.5,), metadata={
        "help": "with stats_dropout auto: rates also trained, each from the same seed and start as the auto one; "
                "the run keeps the model best on validation (metrics.json: stats_dropout_search). The validation "
                "window rarely shows a launch wave (a day's news, items launched at once), so the auto rate can be "
                "far below the share of new items served, while a high rate costs where candidates are mostly "
                "known: validation chose 0.5 on the synthetic set and on 2 of 3 seeds of ml-100k with 3 in 10 test "
                "candidates new, and the auto rate on ml-100k and its small log, all 3 seeds "
                "(docs/data-and-quality.md). Empty (--stats-dropout-search \"\") = train once, at the auto rate; "
                "each rate adds one training run"})
    stats_staleness_hours: float | None = dataclasses.field(default=None, metadata={
        "help": "how old served item statistics get before the next `genrec stats build`; each training "
                "impression sees its counts as of a random moment up to this long before it, so items published "
                "since are unknown in training as often as when serving (else the model never learns to rank "
                "new items against known ones). Default: the validation window's span, the staleness validation "
                "and a test after the log see; 0 = strictly up to each impression's time"})
    average_epochs: int = dataclasses.field(default=1, metadata={
        "help": "the saved weights are the mean of the trainable weights of this many epochs best on validation "
                "(1 = the best epoch alone), so one noisy pick on a small validation split decides less. At 3, "
                "validation did not choose it (ml-100k -0.002, ml-100k-new +0.005, synthetic -0.001; 3 seeds, "
                "docs/data-and-quality.md): off by default"})
    soup: bool = dataclasses.field(default=True, metadata={
        "help": "with several stats-dropout rates trained from one start: also score the mean of their chosen "
                "weights (a model soup: one model, no serving cost, one more validation pass) and keep it when "
                "validation prefers it to the best single rate (metrics.json: soup). Where the rates' models "
                "part far it scores well below them and is not kept (synthetic 0.74 vs 0.79, Amazon Office 0.71 "
                "vs 0.78); validation kept it in 2 of 15 development runs, whose tests moved +0.022 and +0.001 "
                "(docs/data-and-quality.md)"})
    patience: int = dataclasses.field(default=2, metadata={
        "help": "epochs without a validation group-AUC gain before stopping"})
    alpha: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"click": 1.0, "category": 0.2, "topic": 0.2},
        metadata={"help": "task loss weights alpha_t in L = sum alpha_t L_t"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed for sampling, init and dropout"})
    threads: int = dataclasses.field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    skip_bad_lines: bool = dataclasses.field(default=False, metadata={
        "help": "count and report malformed lines instead of failing on the first"})
    max_impressions: int = dataclasses.field(default=0, metadata={
        "help": "use only the first N impressions (0 = all); for quick runs"})
    parity_impressions: int = dataclasses.field(default=1000, metadata={
        "help": "validation impressions stored in the checkpoint for the export parity gate"})


@dataclasses.dataclass
class EvalConfig:
    stats: str | None = dataclasses.field(default=None, metadata={
        "help": "item statistics folder (`genrec stats build`); default: the training log's, from the checkpoint"})
    batch_size: int = dataclasses.field(default=64, metadata={"help": "impressions scored per batch"})
    max_impressions: int = dataclasses.field(default=0, metadata={"help": "evaluate only the first N (0 = all)"})
    explain_impressions: int = dataclasses.field(default=300, metadata={
        "help": "impressions whose explanations are checked by re-scoring (faithfulness, category match)"})
    skip_bad_lines: bool = dataclasses.field(default=False, metadata={
        "help": "count and report malformed lines instead of failing on the first"})
    threads: int = dataclasses.field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    full_ranking: bool = dataclasses.field(default=False, metadata={
        "help": "also rank the whole catalog for every impression with clicks (history excluded; Recall/NDCG@K "
                "over its clicked items, popularity alongside): the retrieval use-case, where a service sends no "
                "candidates; exact, in process"})
    full_ranking_k: tuple[int, ...] = dataclasses.field(default=(10, 50), metadata={
        "help": "cut-offs K of the full-ranking Recall@K and NDCG@K"})
    retrieval_m: int = dataclasses.field(default=200, metadata={
        "help": "items the first stage retrieves by user . item vector before the heads re-rank them (what the "
                "served no-candidate path does); full ranking reports this two-stage ranking done exactly too"})
    retrieval_popular: int = dataclasses.field(default=50, metadata={
        "help": "the most popular items (training clicks + history users) the two-stage ranking re-ranks besides "
                "the retrieved ones, as the served path does (`repository build --retrieval-popular`)"})
