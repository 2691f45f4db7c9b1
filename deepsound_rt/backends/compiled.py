"""torch.compile over the PyTorch backend: a graph module compiled once per input shape.

Why: at bf16 speeds the velocity step and the separator spend much of their time in elementwise
work between the matmuls (adaLN modulation, RMSNorm, rotary embeddings in float32, gates), one
kernel per op; inductor fuses it into a few kernels around the matmuls and SDPA. Shapes are static
(``dynamic=False``): one compiled graph per clip duration, kept for the next clip of that duration.
Mode "default": no autotuning (compiling must fit the GPU script's minutes) and no CUDA graphs of
its own; ``cuda_graphs`` captures the compiled step with ours, which also runs from the worker
thread of the overlapped step runner (inductor's CUDA graph trees are bound to one thread).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .base import Tensors
from .torch_backend import TorchGraph

COMPILE_BACKENDS = ("inductor", "eager")
"""``inductor`` generates fused kernels; ``eager`` only traces (dynamo) and runs the traced ops as
they are: the same code path at no compile cost, for tests and CPU dry runs of the benchmark."""


def compile_callable(fn: Callable, backend: str) -> Callable:
    """``fn`` (a module or a function) compiled with static shapes."""
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"compile backend must be one of {COMPILE_BACKENDS}, got {backend!r}")
    return torch.compile(fn, backend=backend, dynamic=False)


class CompiledTorchGraph(TorchGraph):
    """A graph module run through :func:`compile_callable`; inputs as :class:`TorchGraph` takes them.

    ``per_item``: a graph of one input and one output whose batch items are independent runs them
    one at a time, so that one compiled graph serves every batch size (the separator's last batch
    of chunks is smaller than the others, and compiling it again would cost a minute on a GPU).
    """

    def __init__(self, name: str, module: nn.Module, device: torch.device, dtype: torch.dtype,
                 compile_backend: str = "inductor", per_item: bool = False):
        super().__init__(name, module, device, dtype)
        self.module = compile_callable(module, compile_backend)
        self.backend = "torch+compile" if compile_backend == "inductor" else f"torch+compile({compile_backend})"
        self.per_item = per_item

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        run = super().run
        if not self.per_item:
            return run(inputs)
        ((name, batch),) = inputs.items()
        outputs = [run({name: item}) for item in batch.split(1)]
        return {key: torch.cat([output[key] for output in outputs]) for key in outputs[0]}
