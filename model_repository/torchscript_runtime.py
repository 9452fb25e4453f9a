"""The TorchScript encoder runtime: ``ART_DIR/<precision>/encoder.pt`` (``genrec export --torchscript``) run by torch,
numpy in and out like ``genrec.core.runtime.OrtEncoder``.

What the ``--backend torch`` encoder model runs inside Triton (backends/encoder_torch.py), and what ``genrec index
build --encoder torchscript`` and the export gate run, so an index and the gate see the very vectors served. Needs
torch and numpy only, so it loads wherever that model is served; the export side (tracing, gating) stays in
``genrec.export.torchscript``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class TorchScriptEncoder:
    """numpy in, numpy out, like ``genrec.core.runtime.OrtEncoder``: (N, L) int64 x2 -> (N, D) float32.

    ``device`` cpu or cuda (cuda:N); the weights keep the dtype they were traced in. On CUDA the inputs go
    through pinned host memory and the call synchronizes once (the ``.cpu()`` of the result).

    ``optimize`` (off by default): TorchScript's profiling executor specializes the graph to the input shapes
    it sees and compiles fused kernels for them; a serving encoder sees a new (N, L) nearly every batch (ragged
    requests padded to their longest text), so it runs the traced graph op by op, as eager PyTorch does."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0, optimize: bool = False):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={device} but torch sees no CUDA device (torch {torch.__version__})")
        if threads > 0 and device == "cpu":
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.module = torch.jit.load(str(path), map_location=self.device).eval()
        self.cuda = self.device.type == "cuda"
        self.optimize = optimize

    def torch_call(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.jit.optimized_execution(self.optimize):
            return self.module(ids, mask)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(np.ascontiguousarray(input_ids))
        mask = torch.from_numpy(np.ascontiguousarray(attention_mask))
        if self.cuda:
            ids = ids.pin_memory().to(self.device, non_blocking=True)
            mask = mask.pin_memory().to(self.device, non_blocking=True)
        return self.torch_call(ids, mask).cpu().numpy()

    def warmup(self, max_length: int = 32, batches: tuple[int, ...] = (1, 64, 512)) -> None:
        """First calls pay for CUDA context, cuBLAS handles and kernel selection: keep them out of requests."""
        for n in batches:
            for length in (8, max_length):
                self(np.full((n, length), 1000, dtype=np.int64), np.ones((n, length), dtype=np.int64))
