"""The speech detector (silero-vad) as a graph, with its spec: the ONNX model its package ships, at 16 kHz.

silero-vad's wheel carries both a TorchScript model and ONNX models; "exporting" it is taking its
opset-18 ONNX model, fixing the sampling rate to 16 kHz (which folds away the 8 kHz branch and its
``If``, leaving a straight-line graph TensorRT can parse) and naming its tensors like ours. Parity
is ONNX Runtime on that graph against the TorchScript model on the same chunks.

One call scores one chunk: ``chunk`` is the previous 64 samples followed by 512 new ones (16 kHz),
``state`` the LSTM state carried from the previous call (zeros at the start).
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..errors import DeepSoundError
from .spec import AxisRange, ExportContext, GraphSpec, register_graph

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 512
CONTEXT_SAMPLES = 64
STATE_SIZE = 128
SHIPPED_ONNX = "silero_vad_op18_ifless.onnx"
SHIPPED_TORCHSCRIPT = "silero_vad.jit"


def silero_data_dir() -> Path:
    """The installed silero-vad package's data folder, found without importing the package:
    importing it calls ``torch.set_num_threads(1)`` for the whole process."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise DeepSoundError("the speech detector needs the silero-vad package (pip install silero-vad)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def shipped_silero_dir() -> Path:
    """The silero-vad data folder, checked to hold the two models the detector export uses."""
    data = silero_data_dir()
    for name in (SHIPPED_ONNX, SHIPPED_TORCHSCRIPT):
        if not (data / name).is_file():
            raise DeepSoundError(f"silero-vad is installed without {name} (looked in {data})")
    return data


class DetectorGraph(nn.Module):
    """silero-vad's 16 kHz network, one chunk per call: (speech probability, next LSTM state)."""

    def __init__(self, network: torch.jit.ScriptModule):
        super().__init__()
        self.network = network

    def forward(self, chunk: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 576) samples, (2, B, 128) state -> (B, 1) probabilities, (2, B, 128) state."""
        return self.network(chunk, state)


def load_detector_module() -> DetectorGraph:
    """The TorchScript network of the installed silero-vad package (16 kHz branch), on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation note
        scripted = torch.jit.load(str(shipped_silero_dir() / SHIPPED_TORCHSCRIPT), map_location="cpu")
    return DetectorGraph(scripted._model).eval()


def write_detector_onnx(path: Path) -> None:
    """The shipped opset-18 model with the sampling rate fixed to 16 kHz and our tensor names."""
    import onnx_ir as ir
    from onnxscript import optimizer

    model = ir.load(str(shipped_silero_dir() / SHIPPED_ONNX))
    inputs = {value.name: value for value in model.graph.inputs}
    rate = inputs["sr"]
    model.graph.inputs.remove(rate)
    rate.const_value = ir.tensor(np.array(SAMPLE_RATE, dtype=np.int64))
    model.graph.register_initializer(rate)
    optimizer.optimize(model)  # folds the rate test and inlines the 16 kHz branch
    for name, value in list(model.graph.initializers.items()):
        if not value.uses():
            del model.graph.initializers[name]
    inputs["input"].name = "chunk"
    inputs["input"].shape = ir.Shape(["batch", CONTEXT_SAMPLES + CHUNK_SAMPLES])
    renamed = {"output": "speech_prob", "stateN": "next_state"}
    for value in model.graph.outputs:
        value.name = renamed[value.name]
    ir.save(model, str(path))


def detector_example_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Speech-like chunks (a few harmonics with noise) and a small non-zero state."""
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(CONTEXT_SAMPLES + CHUNK_SAMPLES) / SAMPLE_RATE
    pitch = 120 + 80 * torch.rand(batch, 1, generator=generator)
    voiced = sum(torch.sin(2 * torch.pi * k * pitch * time) / k for k in range(1, 5))
    chunk = 0.3 * voiced + 0.05 * torch.randn(batch, time.numel(), generator=generator)
    state = 0.1 * torch.randn(2, batch, STATE_SIZE, generator=generator)
    return {"chunk": chunk.float(), "state": state}


def _inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    return detector_example_inputs(sizes["batch"])


DETECTOR_SPEC = register_graph(GraphSpec(
    "detector", "detector", ("chunk", "state"), ("speech_prob", "next_state"),
    lambda ctx: load_detector_module(), _inputs,
    dynamic_axes={"chunk": {0: "batch"}, "state": {1: "batch"}, "speech_prob": {0: "batch"},
                  "next_state": {1: "batch"}},
    fp32_inputs=frozenset({"chunk", "state"}),  # the TorchScript network is float32 only
    axes=lambda ctx: {"batch": AxisRange(1, 1, 16)}, check_sizes=lambda ctx: {"batch": 3}, atol=1e-5,
    write_onnx=write_detector_onnx))
