"""PyTorch eager backend: a graph is one of our graph modules, run under inference mode."""
from __future__ import annotations

import torch
from torch import nn

from .base import Tensors


class TorchGraph:
    """Runs a graph module with inputs given by name, in the module's declared order.

    Floating-point inputs are moved to the graph's device and compute dtype, except those the
    signature keeps in float32; integer inputs (token ids) keep their dtype.
    """

    backend = "torch"

    def __init__(self, name: str, module: nn.Module, device: torch.device, dtype: torch.dtype):
        self.name = name
        self.module = module
        self.signature = module.signature
        self.device = device
        self.dtype = dtype

    def _prepare(self, name: str, value: torch.Tensor) -> torch.Tensor:
        if not value.is_floating_point():
            return value.to(self.device, non_blocking=True)
        dtype = torch.float32 if name in self.signature.fp32_inputs else self.dtype
        return value.to(self.device, dtype, non_blocking=True)

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        missing = [n for n in self.signature.inputs if n not in inputs]
        if missing:
            raise KeyError(f"graph {self.name} needs inputs {missing}")
        with torch.inference_mode():
            result = self.module(*(self._prepare(n, inputs[n]) for n in self.signature.inputs))
        outputs = result if isinstance(result, tuple) else (result,)
        return dict(zip(self.signature.outputs, outputs))


class TorchBackend:
    name = "torch"

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype

    @staticmethod
    def available() -> bool:
        return True

    def load(self, name: str, module: nn.Module) -> TorchGraph:
        return TorchGraph(name, module, self.device, self.dtype)
