"""TensorRT backend: engines built from the exported ONNX, cached on disk, run on torch CUDA tensors.

This file has never run here (no GPU, no TensorRT in this workplace); everything that does not
need ``tensorrt`` itself (profiles, cache keys, the cache and its invalidation, dtype mapping) is
plain Python and unit-tested, and the code that does need it is the standard TensorRT 10 Python
API, imported only when an engine is built or loaded.

- Profile: one optimisation profile per graph, from the manifest's (min, opt, max) per dynamic axis.
- Precision: ``fp32``, ``tf32``, ``fp16`` or ``bf16`` builder flags; the ONNX is always fp32.
- Cache: ``<graph>-<key>.engine`` plus a ``.json`` sidecar holding the key's fields and the
  engine's SHA-256. The key hashes the ONNX files' digest, the TensorRT version, the GPU (name and
  compute capability), the precision and the profile, so any change builds a new engine. A
  sidecar that is missing or does not match its engine (a tampered or truncated file) means the
  engine is rebuilt, or refused with ``on_corrupt="refuse"``.
- Execution: input and output addresses are torch tensors' device pointers; ``execute_async_v3``
  runs on torch's current stream, so ordering with torch work needs no extra synchronisation.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping

import torch

from ..errors import DeepSoundError
from ..export.manifest import ExportError, GraphRecord
from .base import Tensors, torch_dtype

PRECISION_FLAGS: dict[str, tuple[str, ...]] = {"fp32": (), "tf32": ("TF32",), "fp16": ("FP16",), "bf16": ("BF16",)}
DTYPE_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
CacheStatus = Literal["hit", "built", "rebuilt"]


class EngineCacheError(DeepSoundError):
    """A cached engine does not match its record (and the caller chose to refuse, not rebuild)."""


@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max shape of one input in a TensorRT optimisation profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def optimization_profile(record: GraphRecord) -> dict[str, ShapeRange]:
    """Shape ranges of the inputs with dynamic axes; fixed inputs need no profile entry."""
    profile = {}
    for spec in record.inputs:
        if all(isinstance(d, int) for d in spec.shape):
            continue
        sizes: dict[str, list[int]] = {"min": [], "opt": [], "max": []}
        for dim in spec.shape:
            if isinstance(dim, int):
                for values in sizes.values():
                    values.append(dim)
                continue
            if dim not in record.dynamic_axes:
                raise ExportError(f"graph {record.name}: input {spec.name} has axis '{dim}' without a size range "
                                  "in the manifest; re-export")
            axis = record.dynamic_axes[dim]
            for field_name, values in sizes.items():
                values.append(getattr(axis, field_name))
        profile[spec.name] = ShapeRange(tuple(sizes["min"]), tuple(sizes["opt"]), tuple(sizes["max"]))
    return profile


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; ``digest`` names its cache file."""

    graph: str
    onnx_sha256: str
    tensorrt_version: str
    gpu: str
    precision: str
    profile: tuple[tuple[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]], ...]

    @classmethod
    def create(cls, graph: str, onnx_sha256: str, tensorrt_version: str, gpu: str, precision: str,
               profile: Mapping[str, ShapeRange]) -> EngineKey:
        if precision not in PRECISION_FLAGS:
            raise DeepSoundError(f"unknown TensorRT precision '{precision}' (use {', '.join(PRECISION_FLAGS)})")
        ranges = tuple(sorted((name, (r.min, r.opt, r.max)) for name, r in profile.items()))
        return cls(graph, onnx_sha256, tensorrt_version, gpu, precision, ranges)

    def fields(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples as lists, as the sidecar stores them

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()


class EngineCache:
    """Serialized engines in a directory, each with a sidecar that proves it is what its name says."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        stem = f"{key.graph}-{key.digest[:24]}"
        return self.directory / f"{stem}.engine", self.directory / f"{stem}.json"

    def lookup(self, key: EngineKey) -> tuple[bytes | None, str | None]:
        """The cached engine for ``key``, read once and checked against its recorded SHA-256, or
        why it cannot be used (``"missing"`` when there is none)."""
        engine_path, sidecar_path = self.paths(key)
        if not engine_path.is_file():
            return None, "missing"
        try:
            sidecar = json.loads(sidecar_path.read_text())
        except (OSError, ValueError):
            return None, f"{sidecar_path.name} is missing or unreadable"
        if sidecar.get("key") != key.fields():
            return None, f"{sidecar_path.name} records another build (ONNX, TensorRT, GPU, precision or profile)"
        engine = engine_path.read_bytes()
        if sidecar.get("engine_sha256") != hashlib.sha256(engine).hexdigest():
            return None, f"{engine_path.name} does not match its recorded SHA-256 (truncated or replaced)"
        return engine, None

    def write(self, key: EngineKey, engine: bytes) -> None:
        """Engine first, sidecar last, each via a temporary name: a crash leaves no valid-looking pair."""
        self.directory.mkdir(parents=True, exist_ok=True)
        engine_path, sidecar_path = self.paths(key)
        sidecar_path.unlink(missing_ok=True)
        partial = engine_path.with_suffix(".engine.partial")
        partial.write_bytes(engine)
        partial.replace(engine_path)
        record = {"key": key.fields(), "engine_sha256": hashlib.sha256(engine).hexdigest()}
        partial = sidecar_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(record, indent=1))
        partial.replace(sidecar_path)


def load_or_build(cache: EngineCache, key: EngineKey, build: Callable[[], bytes],
                  on_corrupt: Literal["rebuild", "refuse"] = "rebuild") -> tuple[bytes, CacheStatus]:
    """The cached engine for ``key``, else a freshly built (and cached) one."""
    engine, problem = cache.lookup(key)
    if engine is not None:
        return engine, "hit"
    if problem != "missing" and on_corrupt == "refuse":
        raise EngineCacheError(f"cached TensorRT engine for {key.graph} in {cache.directory} is unusable: {problem}; "
                               "delete it or allow a rebuild")
    engine = build()
    cache.write(key, engine)
    return engine, "built" if problem == "missing" else "rebuilt"


def gpu_identity(device: torch.device) -> str:
    """GPU name and compute capability: engines are specific to both."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm_{major}{minor}"


def build_serialized_engine(trt, onnx_path: Path, profile: Mapping[str, ShapeRange], precision: str,
                            timing_cache_path: Path | None = None, workspace_bytes: int | None = None) -> bytes:
    """Parse the ONNX (external data is read from beside it) and build one engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeepSoundError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    for flag in PRECISION_FLAGS[precision]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if profile:
        shapes = builder.create_optimization_profile()
        for name, shape_range in profile.items():
            shapes.set_shape(name, shape_range.min, shape_range.opt, shape_range.max)
        config.add_optimization_profile(shapes)
    timing = None
    if timing_cache_path is not None:
        previous = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
        timing = config.create_timing_cache(previous)
        config.set_timing_cache(timing, ignore_mismatch=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeepSoundError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    if timing is not None:
        timing_cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


class TensorRTGraph:
    """One engine and its execution context; inputs and outputs are torch CUDA tensors."""

    backend = "tensorrt"
    manifest = None  # the ExportManifest it came from, set by load_backend_graphs

    def __init__(self, name: str, trt, runtime, engine, device: torch.device, cache_status: CacheStatus):
        self.name = name
        self.device = device
        self.cache_status = cache_status
        self._runtime = runtime  # the engine must not outlive its runtime
        self.engine = engine
        self.context = engine.create_execution_context()
        tensors = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in tensors}
        self.input_types = {n: torch_dtype(engine.get_tensor_dtype(n).name) for n in tensors if is_input[n]}
        self.output_types = {n: torch_dtype(engine.get_tensor_dtype(n).name) for n in tensors if not is_input[n]}

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_types if n not in inputs]
        if missing:
            raise KeyError(f"graph {self.name} needs inputs {missing}")
        feeds = {n: inputs[n].detach().to(self.device, dtype).contiguous() for n, dtype in self.input_types.items()}
        for name, tensor in feeds.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {name: torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device=self.device)
                   for name, dtype in self.output_types.items()}
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        # Same stream as the allocations above: the allocator cannot hand ``feeds`` out again
        # before this work is done, so dropping them on return is safe.
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT failed to run graph {self.name}")
        return outputs


class TensorRTBackend:
    """Builds (or finds in ``cache_dir``) one engine per exported graph at ``precision``."""

    name = "tensorrt"

    def __init__(self, device: torch.device, precision: str, cache_dir: str | Path,
                 on_corrupt: Literal["rebuild", "refuse"] = "rebuild", workspace_bytes: int | None = None):
        if precision not in PRECISION_FLAGS:
            raise DeepSoundError(f"unknown TensorRT precision '{precision}' (use {', '.join(PRECISION_FLAGS)})")
        self.device = device
        self.precision = precision
        self.cache = EngineCache(cache_dir)
        self.on_corrupt = on_corrupt
        self.workspace_bytes = workspace_bytes

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()

    def load(self, name: str, export_dir: Path, record: GraphRecord) -> TensorRTGraph:
        if self.device.type != "cuda":
            raise DeepSoundError(f"TensorRT runs on CUDA devices, not {self.device}")
        try:
            import tensorrt as trt
        except ImportError:
            raise DeepSoundError("the tensorrt backend needs the tensorrt package (pip install tensorrt)") from None
        profile = optimization_profile(record)
        key = EngineKey.create(name, record.onnx_sha256, trt.__version__, gpu_identity(self.device), self.precision,
                               profile)
        self.cache.directory.mkdir(parents=True, exist_ok=True)
        timing_cache = self.cache.directory / f"timing-{key.gpu.replace(' ', '_')}-{trt.__version__}.cache"
        with torch.cuda.device(self.device):
            serialized, status = load_or_build(
                self.cache, key, lambda: build_serialized_engine(
                    trt, Path(export_dir) / record.onnx_file, profile, self.precision, timing_cache,
                    self.workspace_bytes),
                self.on_corrupt)
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise EngineCacheError(f"TensorRT could not deserialize the engine for {name}: "
                                   f"delete {self.cache.paths(key)[0]} to rebuild it")
        return TensorRTGraph(name, trt, runtime, engine, self.device, status)
