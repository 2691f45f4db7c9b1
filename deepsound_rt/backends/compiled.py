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

import torch
from torch import nn

from ..models.spec import GraphSpec
from .base import Tensors
from .torch_backend import TorchGraph

COMPILE_BACKENDS = ("inductor", "eager")
"""``inductor`` generates fused kernels; ``eager`` only traces (dynamo) and runs the traced ops as
they are: the same code path at no compile cost, for tests and CPU dry runs of the benchmark."""


class CompiledTorchGraph(TorchGraph):
    """A graph module compiled with static shapes by ``compile_backend`` (one of
    ``COMPILE_BACKENDS``, which ``EngineConfig`` checks); inputs as :class:`TorchGraph` takes them.

    A spec with ``compile_per_item`` (one input and one output whose batch items are independent)
    runs its batch one item at a time, so that one compiled graph serves every batch size (the
    separator's last batch of chunks is smaller than the others, and compiling it again would cost
    a minute on a GPU).
    """

    def __init__(self, spec: GraphSpec, module: nn.Module, device: torch.device, dtype: torch.dtype,
                 compile_backend: str = "inductor"):
        super().__init__(spec, module, device, dtype)
        self.module = torch.compile(module, backend=compile_backend, dynamic=False)
        self.backend = "torch+compile" if compile_backend == "inductor" else f"torch+compile({compile_backend})"
        self.per_item = spec.compile_per_item

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        run = super().run
        if not self.per_item:
            return run(inputs)
        ((name, batch),) = inputs.items()
        outputs = [run({name: item}) for item in batch.split(1)]
        return {key: torch.cat([output[key] for output in outputs]) for key in outputs[0]}
