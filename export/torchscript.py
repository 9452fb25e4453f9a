"""TorchScript encoder: the GPU serving artifact, next to the ONNX graphs and behind the same parity gate.

ART_DIR/<precision>/encoder.pt     precision fp32 or fp16: the traced ``EncoderGraph`` with its weights and math
                                   in that dtype; input_ids / attention_mask INT64 (N, L) -> item_vectors FP32
                                   (N, D), the ``genrec.core.contract.ENCODER`` signature (FP16 inside, FP32 out)

Served by ``genrec repository build --backend torch --device cuda`` (Triton's python backend running torch on
CUDA, model_repository/backends/encoder_torch.py) and loadable by the NGC container's native ``pytorch``
(libtorch) backend. Why TorchScript: the GPU machines have torch with CUDA but ONNX Runtime without it
(onnxruntime-gpu is a 255 MB wheel), and libtorch is what Triton's pytorch backend runs.

The gate is the ONNX gate (``genrec.export.parity``: encoder cosine, heads on identical inputs, AUC drop,
Kendall tau, with the precision's bounds) with the TorchScript module as the encoder. Where CUDA is present
the artifact itself is gated on CUDA. Where it is not, FP16 math cannot be checked for real (CPU has no FP16
matmul units and its emulation is neither fast nor what the GPU computes): the gate then runs an FP32 trace
of the same module on CPU, which checks the tracing (every shape, padding, the contract), and the report
says so (``gate_device``, ``gate_precision``); ``benchmarks/gpu.py`` runs the FP16 gate on CUDA.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genrec.core.artifacts import TORCHSCRIPT_GRAPH
from genrec.export.parity import ParityError, ParityInputs, gate, measure
from genrec.model_repository.torchscript_runtime import TorchScriptEncoder

PRECISIONS = ("fp32", "fp16")
GRAPH = TORCHSCRIPT_GRAPH               # the name in artifacts.json next to "encoder" and "heads"
FILENAME = "encoder.pt"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class TraceableEncoder(nn.Module):
    """``ItemEncoder`` in ``dtype`` with the contract's FP32 output (the math stays in ``dtype``)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask).float()                  # (N, D) FP32


def cuda_available() -> bool:
    return torch.cuda.is_available()


def _example(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tracing inputs with padding in them (rows of different lengths), so the traced mask path is the real one."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (7, 11), generator=g)
    mask = torch.ones(7, 11, dtype=torch.int64)
    for row, n in enumerate((11, 3, 7, 1, 11, 5, 9)):
        mask[row, n:] = 0
        ids[row, n:] = 0
    return ids.to(device), mask.to(device)


def trace_encoder(encoder: nn.Module, precision: str, device: str = "cpu") -> torch.jit.ScriptModule:
    """Trace a copy of ``encoder`` in ``precision`` on ``device`` (the checkpoint's module is left as it is)."""
    if precision not in DTYPES:
        raise ValueError(f"TorchScript precision must be one of {PRECISIONS}, got {precision!r}")
    module = TraceableEncoder(copy.deepcopy(encoder)).to(device=device, dtype=DTYPES[precision]).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        traced = torch.jit.trace(module, _example(device), check_trace=False)
    return traced


def save(traced: torch.jit.ScriptModule, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path


@dataclasses.dataclass
class GateResult:
    path: Path
    report: dict[str, Any]
    passed: bool
    error: ParityError | None = None

    def file_entry(self, precision: str) -> dict[str, Any]:
        """This file's row of artifacts.json (path relative to ART_DIR, bytes, sha256)."""
        from genrec.core.text import sha256_file

        return {"path": f"{precision}/{FILENAME}", "bytes": self.path.stat().st_size, "sha256": sha256_file(self.path)}


def export_and_gate(encoder: nn.Module, out_dir: str | Path, precision: str, inputs: ParityInputs,
                    heads_path: str | Path, tokenizer, tolerances: dict[str, float], *, device: str = "auto",
                    threads: int = 0, log=print) -> GateResult:
    """Write ``out_dir/encoder.pt`` in ``precision`` and gate it with ``precision``'s bounds.

    ``device``: auto (cuda when torch sees a GPU), cuda or cpu. On CPU an FP16 artifact is gated through an
    FP32 trace of the same module (see the module docstring); the report records which was gated where.
    Never raises on a failed gate: the caller decides (the pipeline removes the file and raises)."""
    device = ("cuda" if cuda_available() else "cpu") if device == "auto" else device
    t = time.perf_counter()
    path = save(trace_encoder(encoder, precision, device), Path(out_dir) / FILENAME)
    gate_precision = precision if (device != "cpu" or precision == "fp32") else "fp32"
    note = ""
    if gate_precision != precision:
        gated = save(trace_encoder(encoder, gate_precision, "cpu"), Path(out_dir) / f".{FILENAME}.gate")
        note = (f"no CUDA here: the {precision} artifact's tracing was gated through an FP32 trace on CPU; "
                f"its {precision} numerics are gated on CUDA by benchmarks/gpu.py")
    else:
        gated = path
    try:
        stats = measure(inputs, TorchScriptEncoder(gated, device, threads), heads_path, tokenizer, threads)
    finally:
        if gated != path:
            gated.unlink(missing_ok=True)
    report: dict[str, Any] = {"file": FILENAME, "precision": precision, "gate_device": device,
                              "gate_precision": gate_precision, "torch": torch.__version__, "parity": stats,
                              "bytes": path.stat().st_size}
    if note:
        report["note"] = note
    try:
        report["checks"] = [dataclasses.asdict(r) | {"passed": r.passed}
                            for r in gate(precision, stats, tolerances)]
        passed, error = True, None
    except ParityError as err:
        passed, error = False, err
        report["error"] = str(err)
    report["seconds"] = round(time.perf_counter() - t, 1)
    log(f"  torchscript {precision} (gated {gate_precision} on {device}): cosine min "
        f"{stats['encoder_cosine_min']:.6f}, AUC drop {stats['auc_drop']:+.5f}, tau {stats['kendall_tau_mean']:.4f}"
        f" -> {'PASS' if passed else 'FAIL: ' + str(error)}")
    return GateResult(path, report, passed, error)
