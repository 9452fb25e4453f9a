"""PyTorch -> ONNX, and the FP16 / INT8 conversions, using what onnxruntime already provides."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from genrec.contract import GraphSpec


def to_onnx(module: torch.nn.Module, example: tuple[torch.Tensor, ...], spec: GraphSpec, path: Path,
            opset: int) -> Path:
    """TorchScript-based export (one self-contained file), names and dynamic axes from ``spec``."""
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)   # shape-dependent slicing is intended
        torch.onnx.export(module, example, str(path), input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes(), opset_version=opset, do_constant_folding=True,
                          dynamo=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    _check_names(model, spec)
    return path


def _check_names(model: onnx.ModelProto, spec: GraphSpec) -> None:
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != spec.input_names or got_out != spec.output_names:
        raise RuntimeError(f"{spec.name}: exported names {got_in} -> {got_out} differ from the contract "
                           f"{spec.input_names} -> {spec.output_names}")


def to_fp16(src: Path, dst: Path, *, bert: dict | None) -> Path:
    """FP16 with FP32 inputs/outputs (the GPU artifact).

    ``bert`` = {"num_heads", "hidden_size"} runs ORT's transformer optimizer first (attention /
    LayerNorm / GELU fusion), as recommended for BERT-family encoders; None converts the graph as is.
    """
    from onnxruntime.transformers.onnx_model import OnnxModel
    from onnxruntime.transformers.optimizer import optimize_model

    if bert is not None:
        model = optimize_model(str(src), model_type="bert", num_heads=bert["num_heads"],
                               hidden_size=bert["hidden_size"], opt_level=0)
    else:
        model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    model.save_model_to_file(str(dst))
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    return dst


@dataclasses.dataclass(frozen=True)
class Int8Recipe:
    """One dynamic-quantization setting. Which one ships is decided by measurement (see export)."""

    name: str
    per_channel: bool
    reduce_range: bool
    fused: bool                     # quantize the ORT-optimized (fused) graph instead of the raw export
    keep_fp32: tuple[str, ...] = ()  # node-name suffixes left in FP32 (e.g. the FFN output projections)

    def excluded(self, model: onnx.ModelProto) -> list[str]:
        return [n.name for n in model.graph.node
                if any(n.name.endswith(suffix) for suffix in self.keep_fp32) and "/attention/" not in n.name]


# In order of preference (fastest first); export keeps the first one that passes the parity gate.
INT8_RECIPES = {
    r.name: r for r in (
        Int8Recipe("per_channel_reduce_range_fused", per_channel=True, reduce_range=True, fused=True),
        Int8Recipe("per_channel_reduce_range", per_channel=True, reduce_range=True, fused=False),
        # BERT FFN output activations have outliers that per-tensor activation quantization handles worst
        Int8Recipe("per_channel_reduce_range_fused_fp32_ffn_out", per_channel=True, reduce_range=True, fused=True,
                   keep_fp32=("/output/dense/MatMul",)),
        Int8Recipe("per_tensor", per_channel=False, reduce_range=False, fused=False),
    )
}


def to_int8(src: Path, dst: Path, recipe: Int8Recipe, *, bert: dict | None) -> Path:
    """Dynamic INT8 quantization of weights (activations quantized at run time): the CPU artifact."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        extra = {}
        if recipe.fused and bert is not None:
            from onnxruntime.transformers.optimizer import optimize_model

            optimize_model(str(src), model_type="bert", num_heads=bert["num_heads"], hidden_size=bert["hidden_size"],
                           opt_level=0).save_model_to_file(str(pre))
            extra["DefaultTensorType"] = onnx.TensorProto.FLOAT     # fused ops lack type info otherwise
        else:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        with _quiet_root_logger():   # ORT logs a pre-processing hint at WARNING for the fused graph
            quantize_dynamic(str(pre), str(dst), per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                             weight_type=QuantType.QInt8, extra_options=extra,
                             nodes_to_exclude=recipe.excluded(onnx.load(str(pre))) or None)
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    return dst


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
