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

from genrec.core.contract import GraphSpec


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
    """One dynamic-quantization setting. Which one ships is decided by measurement (see export).

    ``per_text``: ORT's DynamicQuantizeLinear takes one activation scale over the whole input tensor, padding
    included, so a batched text's INT8 vector depends on its batch-mates (measured max |d| 0.03 next to long
    texts). A per-text recipe wraps the quantized graph in a Loop that runs every row alone, cut to its own
    length (:func:`wrap_per_text`): one scale per text, batch-invariant by construction in any ONNX runtime.
    """

    name: str
    per_channel: bool
    reduce_range: bool
    fused: bool                     # quantize the ORT-optimized (fused) graph instead of the raw export
    keep_fp32: tuple[str, ...] = ()  # node-name suffixes left in FP32 (e.g. the FFN output projections)
    per_text: bool = True           # one activation scale per text (batch-invariant), see above
    auto: bool = True               # tried by `--int8-recipe auto`

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
        # the pre-issue-12 recipe: one scale per batch, so scores depend on batch-mates. It fails the gate's
        # batch-invariance check; kept (outside auto) to measure and to test that the gate catches it.
        Int8Recipe("per_batch_per_channel_reduce_range_fused", per_channel=True, reduce_range=True, fused=True,
                   per_text=False, auto=False),
    )
}


def to_int8(src: Path, dst: Path, recipe: Int8Recipe, *, bert: dict | None) -> Path:
    """Dynamic INT8 quantization of weights (activations quantized at run time): the CPU artifact.
    ``recipe.per_text`` wraps the result with :func:`wrap_per_text` (one activation scale per text)."""
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
            quant = Path(tmp) / "quant.onnx" if recipe.per_text else dst
            quantize_dynamic(str(pre), str(quant), per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                             weight_type=QuantType.QInt8, extra_options=extra,
                             nodes_to_exclude=recipe.excluded(onnx.load(str(pre))) or None)
        if recipe.per_text:
            wrap_per_text(quant, dst)
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    return dst


def wrap_per_text(src: Path, dst: Path) -> Path:
    """Wrap an encoder graph (N, L) -> (N, D) in a Loop over its N rows: each text runs alone, cut to its own
    length (right padding, as the tokenizer pads), so its vector never depends on batch-mates or padding.

    Every op of the original graph moves into the Loop body unchanged (weights stay outer-scope
    initializers); the model is stamped ``genrec.rows = independent`` (:data:`genrec.core.runtime.ROWS_KEY`) so
    :class:`genrec.core.runtime.OrtEncoder` can spread the rows over threads (one intra-op thread each), which
    is faster on small CPUs than one 2-thread run per tiny row.
    """
    from onnx import TensorProto, helper

    from genrec.core.runtime import ROWS_INDEPENDENT, ROWS_KEY

    model = onnx.load(str(src))
    g = model.graph
    ids_in, mask_in = (i.name for i in g.input)
    out_name = g.output[0].name
    dim = g.output[0].type.tensor_type.shape.dim[1].dim_value
    if not dim:
        raise ValueError(f"{src}: the output's feature dimension must be static to wrap it per text")

    def ints(name: str, values: list[int]) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)

    rename = {ids_in: "row_input_ids", mask_in: "row_attention_mask", out_name: "row_vector"}
    inner = []
    for node in g.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename.get(x, x) for x in node.input]
        copy.output[:] = [rename.get(x, x) for x in node.output]
        inner.append(copy)
    make = helper.make_node
    row = [  # row i of the outer inputs, cut to max(1, its mask sum) tokens
        make("Unsqueeze", ["i", "pt_axis0"], ["pt_i"]),
        make("Add", ["pt_i", "pt_one"], ["pt_i1"]),
        make("Slice", [mask_in, "pt_i", "pt_i1", "pt_axis0"], ["pt_mask_row"]),
        make("ReduceSum", ["pt_mask_row", "pt_axis1"], ["pt_len0"], keepdims=0),
        make("Max", ["pt_len0", "pt_one"], ["pt_len"]),
        make("Concat", ["pt_i", "pt_zero"], ["pt_starts"], axis=0),
        make("Concat", ["pt_i1", "pt_len"], ["pt_ends"], axis=0),
        make("Slice", [ids_in, "pt_starts", "pt_ends", "pt_axes01"], ["row_input_ids"]),
        make("Slice", [mask_in, "pt_starts", "pt_ends", "pt_axes01"], ["row_attention_mask"]),
        make("Identity", ["cond_in"], ["cond_out"]),
    ]
    body = helper.make_graph(
        row + inner, "one_text",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("row_vector", TensorProto.FLOAT, None)])
    outer = helper.make_graph(
        [make("Shape", [ids_in], ["pt_n1"], end=1),
         make("Squeeze", ["pt_n1", "pt_axis0"], ["pt_n"]),
         make("Loop", ["pt_n", ""], ["pt_stacked"], body=body),                  # (N, 1, D)
         make("Reshape", ["pt_stacked", "pt_shape"], [out_name])],                 # (N, D); N = 0 works too
        g.name, list(g.input), list(g.output),
        initializer=[*g.initializer, ints("pt_axis0", [0]), ints("pt_axis1", [1]), ints("pt_axes01", [0, 1]),
                     ints("pt_one", [1]), ints("pt_zero", [0]), ints("pt_shape", [-1, dim])])
    wrapped = helper.make_model(outer, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                producer_name=model.producer_name, producer_version=model.producer_version)
    helper.set_model_props(wrapped, {**{p.key: p.value for p in model.metadata_props}, ROWS_KEY: ROWS_INDEPENDENT})
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(wrapped, str(dst))
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
