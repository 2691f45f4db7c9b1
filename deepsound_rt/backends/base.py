"""The one interface every stage talks to: a named graph that maps named tensors to named tensors.

Stages never learn which backend runs a graph; the Engine picks the backend per stage. Each
backend loads graphs its own way (a module for torch, an export directory for ONNX Runtime and
TensorRT) and hands back objects with this one ``run``.
"""
from __future__ import annotations

from typing import Mapping, Protocol

import torch

Tensors = Mapping[str, torch.Tensor]


class Graph(Protocol):
    """A loaded network (or part of one) ready to run."""

    name: str
    backend: str

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        """Run once on named inputs; returns named outputs on the graph's device."""
        ...


# Element types by the names each runtime uses, all mapped to torch dtypes. ONNX Runtime writes
# "tensor(float)", the manifest numpy names ("float32"), TensorRT its DataType member names.
ORT_TYPES = {
    "tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16,
    "tensor(double)": torch.float64, "tensor(int64)": torch.int64, "tensor(int32)": torch.int32,
    "tensor(int8)": torch.int8, "tensor(uint8)": torch.uint8, "tensor(bool)": torch.bool,
}
NUMPY_NAMES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
TENSORRT_TYPES = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT64": torch.int64,
    "INT32": torch.int32, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for an ORT type string, a numpy dtype name or a TensorRT DataType name."""
    for table in (ORT_TYPES, NUMPY_NAMES, TENSORRT_TYPES):
        if name in table:
            return table[name]
    raise TypeError(f"no torch dtype for element type {name!r}")
