"""ONNX Runtime backend: an exported graph in an ``InferenceSession``, run with torch tensors.

On a CPU inputs and outputs cross as numpy arrays (no copy for contiguous CPU tensors). On CUDA
(onnxruntime-gpu) inputs and outputs stay on the device through I/O binding: the outputs are
torch tensors that ONNX Runtime writes into, sized from the first run of each input shape.
Providers are chosen TensorRT EP > CUDA EP > CPU from what the installed build offers.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import DeepSoundError
from .base import Tensors, torch_dtype

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
                 torch.int64: np.int64, torch.int32: np.int32, torch.int8: np.int8, torch.uint8: np.uint8,
                 torch.bool: np.bool_}


def default_threads() -> int:
    """CPU cores this process may use (its affinity mask, not the host's core count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def select_providers(available: Sequence[str], device: torch.device, dtype: torch.dtype,
                     tensorrt_cache_dir: Path | None = None) -> list[tuple[str, dict]]:
    """Execution providers with their options, best first; CPU always closes the list.

    The TensorRT EP needs a cache directory (building its engines takes minutes) and gets fp16
    only for fp16 (bf16 would trade range for speed the fp16 flag does not give back).
    """
    if device.type != "cuda":
        return [("CPUExecutionProvider", {})]
    index = device.index or 0
    chosen: list[tuple[str, dict]] = []
    if "TensorrtExecutionProvider" in available and tensorrt_cache_dir is not None:
        chosen.append(("TensorrtExecutionProvider", {
            "device_id": index, "trt_fp16_enable": dtype == torch.float16, "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(tensorrt_cache_dir), "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(tensorrt_cache_dir)}))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    if not chosen:
        raise DeepSoundError(f"device {device} asked of ONNX Runtime, but this onnxruntime has no CUDA provider "
                             f"(it offers {', '.join(available)}): install onnxruntime-gpu")
    return chosen + [("CPUExecutionProvider", {})]


class OnnxRuntimeGraph:
    """One session. Inputs are cast to the graph's declared types; outputs are torch tensors on
    ``device`` (the CPU unless a GPU provider runs the graph)."""

    backend = "onnxruntime"
    manifest = None  # the ExportManifest it came from, set by load_backend_graphs

    def __init__(self, name: str, session, device: torch.device):
        self.name = name
        self.session = session
        self.providers = session.get_providers()
        self.device = device if self.providers[0] in GPU_PROVIDERS else torch.device("cpu")
        self.input_types = {i.name: torch_dtype(i.type) for i in session.get_inputs()}
        self.output_types = {o.name: torch_dtype(o.type) for o in session.get_outputs()}
        self._output_shapes: dict[tuple, list[tuple[int, ...]]] = {}

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_types if n not in inputs]
        if missing:
            raise KeyError(f"graph {self.name} needs inputs {missing}")
        if self.device.type == "cuda":
            return self._run_on_device(inputs)
        feeds = {n: inputs[n].detach().to("cpu", dtype).contiguous().numpy() for n, dtype in self.input_types.items()}
        values = self.session.run(list(self.output_types), feeds)
        return {name: torch.from_numpy(value) for name, value in zip(self.output_types, values)}

    def _run_on_device(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        """I/O binding with torch's buffers; torch's stream is drained first so inputs are ready."""
        index = self.device.index or 0
        binding = self.session.io_binding()
        feeds = [inputs[n].detach().to(self.device, dtype).contiguous() for n, dtype in self.input_types.items()]
        for (name, dtype), tensor in zip(self.input_types.items(), feeds):
            binding.bind_input(name, "cuda", index, _NUMPY_DTYPES[dtype], tuple(tensor.shape), tensor.data_ptr())
        shape_key = tuple(tuple(t.shape) for t in feeds)
        shapes = self._output_shapes.get(shape_key)
        torch.cuda.current_stream(self.device).synchronize()
        if shapes is None:  # first run of this input shape: let ONNX Runtime size the outputs
            for name in self.output_types:
                binding.bind_output(name, "cuda", index)
            self.session.run_with_iobinding(binding)
            values = binding.get_outputs()
            self._output_shapes[shape_key] = [tuple(v.shape()) for v in values]
            return {name: torch.from_numpy(v.numpy()).to(self.device) for name, v in zip(self.output_types, values)}
        outputs = {name: torch.empty(shape, dtype=dtype, device=self.device)
                   for (name, dtype), shape in zip(self.output_types.items(), shapes)}
        for name, tensor in outputs.items():
            binding.bind_output(name, "cuda", index, _NUMPY_DTYPES[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())
        self.session.run_with_iobinding(binding)
        return outputs


_shared_arena_lock = threading.Lock()
_shared_arena: bool | None = None  # None: not tried yet


def shared_cpu_arena() -> bool:
    """Register one CPU arena for every session of this process (once); False where this
    onnxruntime cannot.

    Without an arena each run maps its activations afresh and faults every page in (the dev
    Synchformer graph runs 2x slower); with one arena per session every session keeps its own
    peak for good (CLIP 6 GB + Synchformer 5 GB at full size). One shared arena keeps only the
    largest graph's peak, reused by all.
    """
    global _shared_arena
    with _shared_arena_lock:
        if _shared_arena is None:
            import onnxruntime as ort

            try:
                memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                # max memory: unlimited; extend by what is asked (not the next power of two)
                ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, 1, -1, -1))
                _shared_arena = True
            except (AttributeError, RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail):
                _shared_arena = False
        return _shared_arena


class OnnxRuntimeBackend:
    """Sessions with every graph optimisation on, intra-op threads = usable cores, one CPU arena
    shared by all sessions (:func:`shared_cpu_arena`)."""

    name = "onnxruntime"

    def __init__(self, device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
                 threads: int | None = None, tensorrt_cache_dir: Path | None = None):
        self.device = device
        self.dtype = dtype
        self.threads = threads or default_threads()
        self.tensorrt_cache_dir = tensorrt_cache_dir

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    def load(self, name: str, onnx_path: Path) -> OnnxRuntimeGraph:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        if shared_cpu_arena():
            options.add_session_config_entry("session.use_env_allocators", "1")
        else:
            options.enable_cpu_mem_arena = False  # one arena per session would hold every session's peak
        options.log_severity_level = 3  # errors only: unused-initializer notes are not for users
        providers = select_providers(ort.get_available_providers(), self.device, self.dtype, self.tensorrt_cache_dir)
        if providers[0][0] == "TensorrtExecutionProvider":
            Path(self.tensorrt_cache_dir).mkdir(parents=True, exist_ok=True)
        session = ort.InferenceSession(str(onnx_path), options, providers=[p for p, _ in providers],
                                       provider_options=[o for _, o in providers])
        return OnnxRuntimeGraph(name, session, self.device)
