"""ONNX Runtime backend: an exported graph in an ``InferenceSession``, run with torch tensors.

On a CPU inputs and outputs cross as numpy arrays (no copy for contiguous CPU tensors). On CUDA
(onnxruntime-gpu) inputs and outputs stay on the device through I/O binding: the outputs are
torch tensors that ONNX Runtime writes into, sized from the first run of each input shape.
Providers are chosen TensorRT EP > CUDA EP > CPU from what the installed build offers.

A bf16/fp16 export (``deepsound-rt export --dtype``) on the CPU provider, which lacks most 16-bit
kernels, runs as :func:`float_compute_model` makes it: every op in float32 on inputs rounded to
the graph's 16-bit type, its 16-bit outputs rounded again. Callers still see the graph's own types.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..errors import DeepSoundError
from .base import Tensors, torch_dtype

if TYPE_CHECKING:
    from ..export.manifest import GraphRecord
    from .tensorrt_backend import ShapeRange

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TENSORRT_11_ONNXRUNTIME = (1, 27)
"""The first ONNX Runtime whose TensorRT execution provider runs TensorRT 11."""
_BINDING_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
                  torch.int64: np.int64, torch.int32: np.int32, torch.int8: np.int8, torch.uint8: np.uint8,
                  torch.bool: np.bool_, torch.bfloat16: TensorProto.BFLOAT16}
"""Element types for I/O binding: numpy types, or ONNX's number where numpy has none (ONNX Runtime >= 1.20)."""
_HALF_TYPES = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})


def default_threads() -> int:
    """CPU cores this process may use (its affinity mask, not the host's core count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("+")[0].split(".")[:2] if part.isdigit())


def tensorrt_provider_problem(onnxruntime_version: str, tensorrt_version: str | None) -> str | None:
    """Why this ONNX Runtime's TensorRT execution provider cannot run the installed TensorRT, or None."""
    if tensorrt_version is None or _release(tensorrt_version)[0] < 11:
        return None
    if _release(onnxruntime_version) >= TENSORRT_11_ONNXRUNTIME:
        return None
    return (f"TensorRT {tensorrt_version} needs onnxruntime-gpu >= {'.'.join(map(str, TENSORRT_11_ONNXRUNTIME))} for "
            f"its execution provider (installed: {onnxruntime_version}); ONNX Runtime uses its CUDA provider")


def installed_tensorrt_version() -> str | None:
    """The ``tensorrt`` package's version, without importing it."""
    try:
        return importlib.metadata.version("tensorrt")
    except importlib.metadata.PackageNotFoundError:
        return None


def _profile_option(profile: Mapping[str, ShapeRange], which: str) -> str:
    """ONNX Runtime's profile syntax: ``name:1x3x224x224,other:2x77``."""
    return ",".join(f"{name}:{'x'.join(map(str, getattr(r, which)))}" for name, r in profile.items())


def select_providers(available: Sequence[str], device: torch.device, export_dtype: str = "fp32",
                     tensorrt_cache_dir: Path | None = None, profile: Mapping[str, ShapeRange] | None = None,
                     tensorrt_problem: str | None = None) -> list[tuple[str, dict]]:
    """Execution providers with their options, best first; CPU always closes the list.

    The TensorRT EP needs a cache directory (building its engines takes minutes), gets the export's
    precision (``trt_fp16_enable``/``trt_bf16_enable`` for 16-bit exports) and the manifest's
    profile as explicit min/opt/max shapes (otherwise it rebuilds engines whenever a shape falls
    outside those seen so far). ``tensorrt_problem`` (:func:`tensorrt_provider_problem`) skips it
    with a one-line warning.
    """
    if device.type != "cuda":
        return [("CPUExecutionProvider", {})]
    index = device.index or 0
    chosen: list[tuple[str, dict]] = []
    if "TensorrtExecutionProvider" in available and tensorrt_cache_dir is not None:
        if tensorrt_problem is not None:
            warnings.warn(tensorrt_problem, stacklevel=2)
        else:
            options = {"device_id": index, "trt_fp16_enable": export_dtype == "fp16", "trt_engine_cache_enable": True,
                       "trt_engine_cache_path": str(tensorrt_cache_dir), "trt_timing_cache_enable": True,
                       "trt_timing_cache_path": str(tensorrt_cache_dir)}
            if export_dtype == "bf16":
                options["trt_bf16_enable"] = True
            if profile:
                options |= {f"trt_profile_{which}_shapes": _profile_option(profile, which) for which in ("min", "opt", "max")}
            chosen.append(("TensorrtExecutionProvider", options))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    if not chosen:
        raise DeepSoundError(f"device {device} asked of ONNX Runtime, but this onnxruntime has no CUDA provider "
                             f"(it offers {', '.join(available)}): install onnxruntime-gpu")
    return chosen + [("CPUExecutionProvider", {})]


def float_compute_model(path: Path) -> onnx.ModelProto | None:
    """The graph at ``path`` with every op computed in float32 (external data loaded), or None when
    it has no 16-bit float tensors.

    Inputs of 16-bit float types enter as float32 and are rounded to their type first, outputs
    leave as float32 (exactly their values); 16-bit initializers become float32 (exactly); each op
    with 16-bit inputs or outputs reads them as float32 and rounds its outputs to their 16-bit type.
    Casts and constants keep their types (ONNX Runtime's CPU provider has them in every type), so
    the model's own fp32 islands and roundings stay where they are: the reference run of a typed
    graph where the hardware to run it is missing.
    """
    model = onnx.load(str(path), load_external_data=False)
    typed = onnx.shape_inference.infer_shapes(model)  # types only: no weights needed
    graph = typed.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types |= {t.name: t.data_type for t in graph.initializer}
    if not _HALF_TYPES & set(types.values()):
        return None
    as_float = {t.name for t in graph.initializer if t.data_type in _HALF_TYPES}
    nodes, upcast = [], set()

    def float_input(name: str) -> str:
        if not name or types.get(name) not in _HALF_TYPES or name in as_float:
            return name
        if name not in upcast:
            nodes.append(helper.make_node("Cast", [name], [f"{name}__fp32"], to=TensorProto.FLOAT))
            upcast.add(name)
        return f"{name}__fp32"

    inputs = []
    for value in graph.input:
        if value.type.tensor_type.elem_type in _HALF_TYPES and value.name not in as_float:
            nodes.append(helper.make_node("Cast", [f"{value.name}__in"], [value.name], to=value.type.tensor_type.elem_type))
            value = _retyped(value, f"{value.name}__in")
        inputs.append(value)
    for node in graph.node:
        half_outputs = [o for o in node.output if types.get(o) in _HALF_TYPES]
        if node.op_type in ("Cast", "Constant") or not (half_outputs or any(types.get(i) in _HALF_TYPES for i in node.input)):
            nodes.append(node)
            continue
        if any(o and o not in types for o in node.output):
            raise DeepSoundError(f"cannot type the outputs of {node.op_type} node {node.name} for a float32 run")
        computed = onnx.NodeProto()
        computed.CopyFrom(node)
        computed.input[:] = [float_input(i) for i in node.input]
        computed.output[:] = [f"{o}__fp32out" if o in half_outputs else o for o in node.output]
        nodes.append(computed)
        nodes += [helper.make_node("Cast", [f"{o}__fp32out"], [o], to=types[o]) for o in half_outputs]
    outputs = []
    for value in graph.output:
        if value.type.tensor_type.elem_type in _HALF_TYPES:
            nodes.append(helper.make_node("Cast", [value.name], [f"{value.name}__out"], to=TensorProto.FLOAT))
            value = _retyped(value, f"{value.name}__out")
        outputs.append(value)
    onnx.external_data_helper.load_external_data_for_model(model, str(Path(path).parent))
    initializers = [numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name) if t.name in as_float
                    else t for t in model.graph.initializer]
    computed_graph = helper.make_graph(nodes, graph.name, inputs, outputs, initializers)
    return helper.make_model(computed_graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def _retyped(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    """``value`` under ``name`` as float32."""
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    copy.name = name
    copy.type.tensor_type.elem_type = TensorProto.FLOAT
    return copy


class OnnxRuntimeGraph:
    """One session. Inputs are cast to the graph's declared types and outputs come back in them,
    as torch tensors on ``device`` (the CPU unless a GPU provider runs the graph). ``declared``
    (input types, output types) are the exported graph's where the session runs another form of it
    (:func:`float_compute_model`)."""

    backend = "onnxruntime"
    manifest = None  # the ExportManifest it came from, set by GraphLoader

    def __init__(self, name: str, session, device: torch.device,
                 declared: tuple[dict[str, torch.dtype], dict[str, torch.dtype]] | None = None):
        self.name = name
        self.session = session
        self.providers = session.get_providers()
        self.device = device if self.providers[0] in GPU_PROVIDERS else torch.device("cpu")
        self._session_types = {i.name: torch_dtype(i.type) for i in session.get_inputs()}
        session_outputs = [o.name for o in session.get_outputs()]
        self.input_types, self.output_types = declared or (
            dict(self._session_types), {o.name: torch_dtype(o.type) for o in session.get_outputs()})
        self._session_outputs = dict(zip(self.output_types, session_outputs))
        self._output_shapes: dict[tuple, list[tuple[int, ...]]] = {}

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_types if n not in inputs]
        if missing:
            raise KeyError(f"graph {self.name} needs inputs {missing}")
        if self.device.type == "cuda":
            return self._run_on_device(inputs)
        feeds = {session_name: inputs[n].detach().to("cpu", dtype).to(session_dtype).contiguous().numpy()
                 for (n, dtype), (session_name, session_dtype) in zip(self.input_types.items(), self._session_types.items())}
        values = self.session.run(list(self._session_outputs.values()), feeds)
        return {name: torch.from_numpy(value).to(dtype) for (name, dtype), value in zip(self.output_types.items(), values)}

    def _run_on_device(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        """I/O binding with torch's buffers; torch's stream is drained first so inputs are ready.
        The first run of each input shape lets ONNX Runtime size the outputs, then runs again into
        torch buffers of those sizes."""
        index = self.device.index or 0
        binding = self.session.io_binding()
        feeds = [inputs[n].detach().to(self.device, dtype).contiguous() for n, dtype in self.input_types.items()]
        for (name, dtype), tensor in zip(self.input_types.items(), feeds):
            binding.bind_input(name, "cuda", index, _BINDING_TYPES[dtype], tuple(tensor.shape), tensor.data_ptr())
        shape_key = tuple(tuple(t.shape) for t in feeds)
        torch.cuda.current_stream(self.device).synchronize()
        if shape_key not in self._output_shapes:
            for name in self.output_types:
                binding.bind_output(name, "cuda", index)
            self.session.run_with_iobinding(binding)
            self._output_shapes[shape_key] = [tuple(v.shape()) for v in binding.get_outputs()]
            binding.clear_binding_outputs()
        outputs = {name: torch.empty(shape, dtype=dtype, device=self.device)
                   for (name, dtype), shape in zip(self.output_types.items(), self._output_shapes[shape_key])}
        for name, tensor in outputs.items():
            binding.bind_output(name, "cuda", index, _BINDING_TYPES[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())
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
    shared by all sessions (:func:`shared_cpu_arena`). ``export_dtype`` is the manifest's
    ``precision``: the TensorRT execution provider builds at it."""

    name = "onnxruntime"

    def __init__(self, device: torch.device = torch.device("cpu"), threads: int | None = None,
                 tensorrt_cache_dir: Path | None = None, export_dtype: str = "fp32"):
        self.device = device
        self.threads = threads or default_threads()
        self.tensorrt_cache_dir = tensorrt_cache_dir
        self.export_dtype = export_dtype

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    def load(self, name: str, onnx_path: Path, record: GraphRecord | None = None) -> OnnxRuntimeGraph:
        """A session for the graph at ``onnx_path``; ``record`` (its manifest entry) gives the
        TensorRT execution provider its profile."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        if shared_cpu_arena():
            options.add_session_config_entry("session.use_env_allocators", "1")
        else:
            options.enable_cpu_mem_arena = False  # one arena per session would hold every session's peak
        options.log_severity_level = 3  # errors only: unused-initializer notes are not for users
        profile = None
        if record is not None:
            from .tensorrt_backend import optimization_profile

            profile = optimization_profile(record)
        providers = select_providers(ort.get_available_providers(), self.device, self.export_dtype,
                                     self.tensorrt_cache_dir, profile,
                                     tensorrt_provider_problem(ort.__version__, installed_tensorrt_version()))
        if providers[0][0] == "TensorrtExecutionProvider":
            Path(self.tensorrt_cache_dir).mkdir(parents=True, exist_ok=True)

        def session(path: Path):
            return ort.InferenceSession(str(path), options, providers=[p for p, _ in providers],
                                        provider_options=[o for _, o in providers])

        computed = float_compute_model(onnx_path) if providers[0][0] == "CPUExecutionProvider" else None
        if computed is None:
            return OnnxRuntimeGraph(name, session(onnx_path), self.device)
        with tempfile.TemporaryDirectory(prefix="deepsound_rt_fp32_") as scratch:
            path = Path(scratch) / Path(onnx_path).name
            onnx.save_model(computed, str(path), save_as_external_data=True, location=f"{path.name}.data")
            return OnnxRuntimeGraph(name, session(path), self.device, declared_types(onnx_path))


def declared_types(path: Path) -> tuple[dict[str, torch.dtype], dict[str, torch.dtype]]:
    """(inputs, outputs) -> torch dtype, as the graph at ``path`` declares them."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def dtype(value: onnx.ValueInfoProto) -> torch.dtype:
        return torch_dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name)

    return ({v.name: dtype(v) for v in graph.input if v.name not in initializers},
            {v.name: dtype(v) for v in graph.output})
