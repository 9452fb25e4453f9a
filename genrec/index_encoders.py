"""The encoders an index build can use, for ``encoders=`` of :func:`genrec.core.index.build_index` and
:func:`~genrec.core.index.add_items`: the core's own ONNX encoder, the TorchScript one (torch: what a
``--backend torch`` repository serves, so new items match the index) and the Ray fan-out (actors across a
cluster). The core imports neither torch nor Ray; the caller chooses what it may load. The CLI and the
benchmarks pass :data:`ALL`; torch and Ray are imported only when a build uses them.
"""

from __future__ import annotations

from pathlib import Path

from genrec.core.index import Encoder, IndexConfig, IndexEncoders, ort_encoder
from genrec.ray_encoder import encode_on_ray


def torchscript_encoder(graph: Path, cfg: IndexConfig) -> Encoder:
    """``<precision>/encoder.pt`` run by torch on ``cfg.device`` (``--encoder torchscript``)."""
    from genrec.model_repository.torchscript_runtime import TorchScriptEncoder

    return TorchScriptEncoder(graph, device=cfg.device, threads=cfg.threads)


ALL = IndexEncoders(local={"onnx": ort_encoder, "torchscript": torchscript_encoder}, cluster=encode_on_ray)
"""Every encoder ``IndexConfig.encoder`` / ``IndexConfig.ray`` can name."""
