"""PyTorch eager backend: a graph is a function over a module, run under inference mode."""
from __future__ import annotations

from typing import Callable

import torch

from .base import Tensors


class TorchGraph:
    """Wraps ``fn(**inputs) -> dict`` so stages call it like any other backend's graph.

    Floating-point inputs are moved to the graph's device and compute dtype, except those named in
    ``fp32_inputs`` (time steps, guidance strength: precision matters more than speed there);
    integer inputs (token ids) keep their dtype.
    """

    backend = "torch"

    def __init__(self, name: str, fn: Callable[..., dict[str, torch.Tensor]], device: torch.device,
                 dtype: torch.dtype, fp32_inputs: frozenset[str] = frozenset()):
        self.name = name
        self._fn = fn
        self.device = device
        self.dtype = dtype
        self.fp32_inputs = fp32_inputs

    def _prepare(self, name: str, value: torch.Tensor) -> torch.Tensor:
        if not value.is_floating_point():
            return value.to(self.device, non_blocking=True)
        dtype = torch.float32 if name in self.fp32_inputs else self.dtype
        return value.to(self.device, dtype, non_blocking=True)

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return self._fn(**{k: self._prepare(k, v) for k, v in inputs.items()})


class TorchBackend:
    name = "torch"

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype

    @staticmethod
    def available() -> bool:
        return True

    def graph(self, name: str, fn: Callable[..., dict[str, torch.Tensor]],
              fp32_inputs: frozenset[str] = frozenset()) -> TorchGraph:
        return TorchGraph(name, fn, self.device, self.dtype, fp32_inputs)
