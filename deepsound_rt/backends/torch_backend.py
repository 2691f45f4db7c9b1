"""PyTorch eager backend: a graph is one of our graph modules, run under inference mode."""
from __future__ import annotations

import torch
from torch import nn

from ..models.spec import GraphSpec
from .base import Tensors


class TorchGraph:
    """Runs a graph module with inputs given by name, in the order its spec declares.

    Floating-point inputs are moved to the graph's device and compute dtype, except those the
    spec keeps in float32; integer inputs (token ids) keep their dtype.
    """

    backend = "torch"

    def __init__(self, spec: GraphSpec, module: nn.Module, device: torch.device, dtype: torch.dtype):
        self.name = spec.name
        self.module = module
        self.spec = spec.bound(module)
        self.device = device
        self.dtype = dtype

    def _prepare(self, name: str, value: torch.Tensor) -> torch.Tensor:
        return value.to(self.device, self.spec.input_dtype(name, value, self.dtype), non_blocking=True)

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        missing = [n for n in self.spec.inputs if n not in inputs]
        if missing:
            raise KeyError(f"graph {self.name} needs inputs {missing}")
        with torch.inference_mode():
            result = self.module(*(self._prepare(n, inputs[n]) for n in self.spec.inputs))
        outputs = result if isinstance(result, tuple) else (result,)
        return dict(zip(self.spec.outputs, outputs))


class TorchBackend:
    """Graph modules run by PyTorch: eagerly, or compiled (``compile``: a torch.compile backend)
    and replayed as CUDA graphs (``cuda_graphs``, on a CUDA device) where a graph's spec says it
    is worth it. Compiling and capturing happen at a graph's first run."""

    name = "torch"

    def __init__(self, device: torch.device, dtype: torch.dtype, compile: str | None = None,
                 cuda_graphs: bool = False):
        self.device = device
        self.dtype = dtype
        self.compile = compile
        self.cuda_graphs = cuda_graphs and device.type == "cuda"

    @staticmethod
    def available() -> bool:
        return True

    def compiles(self, spec: GraphSpec) -> bool:
        return self.compile is not None and spec.compile

    def load(self, spec: GraphSpec, module: nn.Module) -> TorchGraph:
        graph = TorchGraph(spec, module, self.device, self.dtype)
        if self.compiles(spec):
            from .compiled import CompiledTorchGraph

            graph = CompiledTorchGraph(spec, module, self.device, self.dtype, self.compile)
        if self.cuda_graphs and spec.cuda_graph:
            from .cuda_graphs import CudaGraphTorchGraph

            graph = CudaGraphTorchGraph(spec, graph.module, self.device, self.dtype, graph.backend)
        return graph
