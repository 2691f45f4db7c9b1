"""CUDA graphs over the PyTorch backend: capture a graph module once per input shape, then replay.

A velocity step of the flow network or a vocoder pass is hundreds of small kernels; replaying
them as one CUDA graph removes the per-kernel launch cost, which dominates at bf16 speeds.
Inputs are copied into the captured (static) buffers and outputs copied out, so callers see
ordinary tensors. A module that cannot be captured runs eagerly, with a warning, instead.

Capture errors are thread-local: with ``overlap`` other stages run on other threads and streams
while a graph is captured, and only the capturing thread's own calls may break its capture.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..models.mllm.static_cache import CAPTURE_LOCK
from ..models.spec import GraphSpec
from .base import Tensors
from .torch_backend import TorchGraph

log = logging.getLogger(__name__)
WARMUP_RUNS = 2  # before capture: lets allocators and lazy initialisation settle outside the graph


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list[torch.Tensor], outputs: tuple[torch.Tensor, ...]):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


class CudaGraphTorchGraph(TorchGraph):
    """``module`` (a graph module, possibly compiled: ``backend`` names what runs it) replayed."""

    def __init__(self, spec: GraphSpec, module: nn.Module, device: torch.device, dtype: torch.dtype,
                 backend: str = "torch"):
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        super().__init__(spec, module, device, dtype)
        self.backend = f"{backend}+cudagraph"
        self._captured: dict[tuple, _Captured | None] = {}  # None: capture failed, run eagerly

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        missing = [n for n in self.spec.inputs if n not in inputs]
        if missing:
            raise KeyError(f"graph {self.name} needs inputs {missing}")
        prepared = [self._prepare(n, inputs[n]) for n in self.spec.inputs]
        key = tuple((tuple(t.shape), t.dtype) for t in prepared)
        if key not in self._captured:
            self._captured[key] = self._capture(prepared)
        captured = self._captured[key]
        if captured is None:
            return super().run(inputs)
        for static, value in zip(captured.inputs, prepared):
            static.copy_(value, non_blocking=True)
        captured.graph.replay()
        return {name: out.clone() for name, out in zip(self.spec.outputs, captured.outputs)}

    def _capture(self, prepared: list[torch.Tensor]) -> _Captured | None:
        static = [t.clone() for t in prepared]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.inference_mode(), torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self.module(*static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with CAPTURE_LOCK, torch.inference_mode(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                result = self.module(*static)
        except RuntimeError as exc:
            log.warning("graph %s cannot be captured as a CUDA graph (%s); running it eagerly", self.name, exc)
            torch.cuda.current_stream(self.device).synchronize()
            return None
        outputs = result if isinstance(result, tuple) else (result,)
        return _Captured(graph, static, outputs)
