"""Export artifacts and serving assets: the files ``genrec export`` writes and every serving step reads.

Torch-free (the ``serve`` extra installs no torch): index build, repository build, the Triton models, the
in-process runtime and the benchmarks read artifacts through this module, and the export (which needs
torch to trace the model) writes them through it, so the layout is defined once:

ART_DIR/
  artifacts.json                                       manifest: graphs per precision, sha256, contract version
  <precision>/encoder.onnx, <precision>/heads.onnx      precision in fp32, fp16, int8 (+ encoder.pt, TorchScript)
  assets/tokenizer.json, assets/serving.json           what the tokenizer step needs (ServingAssets)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from genrec.core import fsio
from genrec.core.contract import CONTRACT_VERSION
from genrec.core.errors import UserError
from genrec.core.text import TextTokenizer, sha256_text
from genrec.core.vocab import Vocab

FORMAT = "genrec.artifacts/1"
MANIFEST = "artifacts.json"
PRECISIONS = ("fp32", "fp16", "int8")
ASSETS = "assets"
SERVING_JSON = "serving.json"
TOKENIZER_JSON = "tokenizer.json"
TORCHSCRIPT_GRAPH = "encoder_torchscript"   # the TorchScript encoder's name in artifacts.json (beside "encoder")


class ExportError(UserError, RuntimeError):
    """The export could not produce a valid artifact, or an artifacts folder is not one."""


@dataclasses.dataclass
class Artifacts:
    """An artifacts folder, read through its manifest."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, root: str | Path) -> Artifacts:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `genrec export --checkpoint RUN_DIR --out {root}` first")
        manifest = fsio.read_json(path, ExportError, "an artifacts manifest: re-export with `genrec export`")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else manifest
            raise ExportError(f"{path}: format {got!r} is not {FORMAT!r}")
        if not isinstance(manifest.get("precisions"), dict):
            raise ExportError(f"{path}: no 'precisions' table: re-export with `genrec export`")
        return cls(root, manifest)

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest["precisions"])

    def graph(self, precision: str, name: str) -> Path:
        if precision not in self.manifest["precisions"]:
            raise ExportError(f"{self.root} has no {precision} export (has {self.precisions})")
        return self.root / self.manifest["precisions"][precision][name]["path"]

    def missing(self, precision: str, name: str) -> str | None:
        """None when the export has graph ``name`` at ``precision``; else what is missing and how to export it
        (the start of the error of each step that needs it: index build, repository build)."""
        if name in self.manifest["precisions"].get(precision, {}):
            return None
        how = ("`genrec export --torchscript`" if name == TORCHSCRIPT_GRAPH else
               f"`genrec export --precision {precision}`")
        return (f"{self.root} has no {precision} {name} (it has {', '.join(self.precisions) or 'none'}): "
                f"export it with {how}")

    def sha256(self, precision: str, name: str) -> str:
        return self.manifest["precisions"][precision][name]["sha256"]

    @property
    def assets(self) -> Path:
        return self.root / ASSETS


@dataclasses.dataclass
class ServingAssets:
    """What the tokenizer step needs besides the graphs (ART_DIR/assets): written by the export, read by serving."""

    tokenizer_json: str
    max_length: int
    dim: int
    category_vocab: Vocab
    subcategory_vocab: Vocab
    info: dict                            # everything in serving.json (contract version, provenance...)

    @classmethod
    def load(cls, folder: str | Path) -> ServingAssets:
        folder = Path(folder)
        info = fsio.read_json(folder / SERVING_JSON, ExportError, "the serving assets: re-export with `genrec export`")
        return cls((folder / TOKENIZER_JSON).read_text(encoding="utf-8"), info["max_length"], info["dim"],
                   Vocab.from_list(info["categories"]), Vocab.from_list(info["subcategories"]), info)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fsio.write_text(folder / TOKENIZER_JSON, self.tokenizer_json)
        info = {**self.info, "contract_version": CONTRACT_VERSION, "max_length": self.max_length, "dim": self.dim,
                "categories": self.category_vocab.to_list(), "subcategories": self.subcategory_vocab.to_list(),
                "tokenizer_sha256": sha256_text(self.tokenizer_json)}
        fsio.write_json(folder / SERVING_JSON, info)
        return folder

    def tokenizer(self, pad_to_multiple_of: int = 1) -> TextTokenizer:
        return TextTokenizer(self.tokenizer_json, max_length=self.max_length, pad_to_multiple_of=pad_to_multiple_of)
