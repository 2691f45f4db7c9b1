"""Trace a graph module to ONNX, read its interface back, and check it for ops TensorRT lacks."""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from pathlib import Path
from typing import Iterator, Mapping

import onnx
import torch
from torch import nn

from ..models.spec import AxisRange, GraphSpec
from .manifest import ExportError, TensorSpec

OPSET = 18  # >= 17 for LayerNormalization; TensorRT 10 parses opsets 9-20, 11 up to 25
TENSORRT_OPSETS = range(9, 21)  # what every TensorRT the backend is written for parses
# ONNX ops TensorRT 10's parser rejects (onnx-tensorrt docs/operators.md, "N" rows).
TENSORRT_UNSUPPORTED_OPS = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "BlackmanWindow",
    "Col2Im", "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "HammingWindow", "HannWindow", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix",
    "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "STFT", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat",
    "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})
# Data-dependent control flow has no place in these graphs even where TensorRT could take it.
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
# Ops whose output shapes depend on input values: TensorRT sizes them at run time through an output
# allocator, which our backend does not use (it sizes every output from the input shapes).
DATA_DEPENDENT_SHAPE_OPS = frozenset({"NonZero", "NonMaxSuppression"})
# Operands read as shapes, sizes or indices of slicing: a graph input's values reaching one makes it
# a shape tensor (TensorRT's ``is_shape_inference_io``), which our backend does not bind either.
SHAPE_OPERANDS = {"Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Tile": (1,), "Range": (0, 1, 2),
                  "Slice": (1, 2, 3, 4), "Pad": (1,), "Resize": (2, 3), "TopK": (1,), "OneHot": (1,),
                  "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,)}
# Ops whose outputs depend on their input's shape only, never its values.
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
# Inputs TensorRT requires to be initializers or constants ("`axes` must be an initializer").
CONSTANT_INPUTS = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 3, "CumSum": 1, "ReduceL2": 1,
                   "ReduceMax": 1, "ReduceMean": 1, "ReduceMin": 1, "ReduceSum": 1, "ReduceProd": 1}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter reports progress on stdout and constant-folding notes through logging."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def dynamic_shapes(signature: GraphSpec, axes: Mapping[str, AxisRange],
                   module: nn.Module | None = None) -> tuple | None:
    """``torch.export`` dims per input (one ``Dim`` per axis name, so shared names stay equal);
    axes without a range are exported at their traced size. Inputs that ``module.forward`` takes
    as ``*args`` (the decoder's per-layer caches) are grouped the way ``torch.export`` binds them."""
    dims = {name: torch.export.Dim(name, min=r.min, max=r.max) for name, r in axes.items()}
    shapes = tuple(
        {axis: dims[axis_name] for axis, axis_name in signature.dynamic_axes.get(name, {}).items()
         if axis_name in dims} or None
        for name in signature.inputs
    )
    if not any(s is not None for s in shapes):
        return None
    parameters = list(inspect.signature(module.forward).parameters.values()) if module is not None else []
    packed = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    return shapes if packed is None else (*shapes[:packed], shapes[packed:])


def trace_to_onnx(spec: GraphSpec, module: nn.Module, inputs: Mapping[str, torch.Tensor],
                  axes: Mapping[str, AxisRange], path: Path, opset: int = OPSET) -> None:
    """Export ``module`` (the graph ``spec`` describes, built with our kernels off: they are opaque
    to the exporter) with the dynamo exporter.

    Weights go to ``<path>.data`` beside the graph, which is what lets graphs over 2 GB (CLIP
    ViT-H) be written at all. The ONNX program is optimised (constants folded) before saving.
    """
    signature = spec.bound(module)
    args = tuple(inputs[name] for name in signature.inputs)
    with _quiet_exporter():
        program = torch.onnx.export(
            module.eval(), args, None, dynamo=True, input_names=list(signature.inputs),
            output_names=list(signature.outputs), dynamic_shapes=dynamic_shapes(signature, axes, module),
            opset_version=opset, optimize=True, verbose=False)
        program.save(str(path), external_data=True)
    _check_dynamic_axes(onnx.load(str(path), load_external_data=False), signature, axes, path.stem)


def _check_dynamic_axes(model: onnx.ModelProto, signature: GraphSpec, axes: Mapping[str, AxisRange],
                        graph: str) -> None:
    """The exporter quietly fixes an axis to its traced size when the code guards on it; refuse that."""
    declared = {value.name: value.type.tensor_type.shape.dim for value in model.graph.input}
    for name in signature.inputs:
        for axis, axis_name in signature.dynamic_axes.get(name, {}).items():
            if axis_name in axes and axes[axis_name].min < axes[axis_name].max and not declared[name][axis].dim_param:
                raise ExportError(f"export of {graph} fixed axis '{axis_name}' of "
                                  f"input '{name}' to {declared[name][axis].dim_value}: the module's code depends on "
                                  "that size (see TORCH_LOGS=+dynamic)")


def graph_files(path: Path) -> list[Path]:
    """The graph file and, when present, its external data file."""
    data = path.with_name(path.name + ".data")
    return [path, data] if data.is_file() else [path]


def tensor_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) as the graph declares them; symbolic dims keep their names."""

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in tensor_type.shape.dim)
        return TensorSpec(value.name, dtype, shape)

    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(spec(v) for v in model.graph.input if v.name not in initializers)
    return inputs, tuple(spec(v) for v in model.graph.output)


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _nodes(subgraph)


def shape_tensor_inputs(graph: onnx.GraphProto) -> set[str]:
    """Graph inputs whose values (not only their shapes) reach an operand read as a shape."""
    sources: dict[str, set[str]] = {value.name: {value.name} for value in graph.input}
    found: set[str] = set()
    for node in graph.node:  # ONNX nodes are topologically sorted
        if node.op_type in SHAPE_ONLY_OPS:
            continue
        for index in SHAPE_OPERANDS.get(node.op_type, ()):
            if index < len(node.input):
                found |= sources.get(node.input[index], set())
        reached = set().union(*(sources.get(name, set()) for name in node.input))
        if reached:
            for output in node.output:
                sources[output] = reached
    return found


def tensorrt_incompatibilities(model: onnx.ModelProto) -> list[str]:
    """What would keep TensorRT's ONNX parser (10.x and 11.x) or our TensorRT backend from building
    and running this graph as exported: ops it lacks, custom domains, control flow, axes that are
    not constants, float64 tensors, an opset outside 9-20 (10.x's range; 11.x takes up to 25),
    data-dependent output shapes and shape-tensor inputs. Empty is good."""
    problems: set[str] = set()
    constants = {t.name for t in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version not in TENSORRT_OPSETS:
            problems.add(f"opset {opset.version}")
    for node in _nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            problems.add(f"custom op {node.domain}::{node.op_type}")
        elif node.op_type in TENSORRT_UNSUPPORTED_OPS:
            problems.add(f"unsupported op {node.op_type}")
        elif node.op_type in CONTROL_FLOW_OPS:
            problems.add(f"control flow {node.op_type}")
        index = CONSTANT_INPUTS.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] and node.input[index] not in constants:
            problems.add(f"{node.op_type} with computed axes")
        if node.op_type in DATA_DEPENDENT_SHAPE_OPS:
            problems.add(f"data-dependent shape ({node.op_type})")
    problems |= {f"shape from the values of input {name}" for name in shape_tensor_inputs(model.graph)}
    doubles = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.DOUBLE]
    doubles += [v.name for v in (*model.graph.input, *model.graph.output, *model.graph.value_info)
                if v.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE]
    if doubles:
        problems.add(f"float64 tensors ({', '.join(sorted(doubles)[:3])})")
    return sorted(problems)
