"""Export stage: PyTorch checkpoint -> ONNX encoder + heads in FP32 / FP16 / INT8, gated on parity.

    from genrec.export import export, ExportConfig
    artifacts = export("build/run", "build/artifacts", ExportConfig(precision=("int8",)))
"""

from genrec.export.parity import ExportError, ParityError
from genrec.export.pipeline import Artifacts, ExportConfig, export

__all__ = ["Artifacts", "ExportConfig", "ExportError", "ParityError", "export"]
