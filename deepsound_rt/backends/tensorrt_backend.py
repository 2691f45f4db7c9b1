"""TensorRT backend: engines built from the exported ONNX, cached on disk, run on torch CUDA tensors.

Written for TensorRT 10.x and 11.x (``TENSORRT_MAJORS``), against the names of NVIDIA/TensorRT's
Python bindings (``python/src/infer/pyCore.cpp`` at v10.0.0, v10.16 and v11.1). It has never run
here (no GPU, no TensorRT in this workplace): the tests drive it through a stand-in module per
major version. Everything that does not need ``tensorrt`` itself (profiles, cache keys, the cache,
the build plan) is plain Python; ``tensorrt`` is imported only when an engine is built or loaded.

- Precision comes from the export: a ``bf16``/``fp16`` export is a typed graph, built as a strongly
  typed network (TensorRT 11 knows no other kind and has no FP16/BF16 builder flags). An ``fp32``
  export builds ``fp32`` (TF32 cleared, as Polygraphy does) or ``tf32`` engines, and, on TensorRT
  10 only, ``fp16``/``bf16`` ones through the builder flags (weakly typed: TensorRT picks per layer).
- Profile: one optimisation profile per graph, from the manifest's (min, opt, max) per dynamic axis.
- Cache: ``<graph>-<key>.engine`` plus a ``.json`` sidecar holding the key's fields and the
  engine's SHA-256. The key hashes the ONNX files' digest, the TensorRT version, the GPU (name and
  compute capability), the precision and the profile, so any change builds a new engine. A
  sidecar that is missing or does not match its engine, or an engine TensorRT cannot deserialize,
  means the engine is rebuilt, or refused with ``on_corrupt="refuse"``. The timing cache is one
  file per GPU and TensorRT version, read and merged under a file lock, written via a temporary name.
- Execution: on a stream of the graph's own (not torch's current stream, usually the legacy default
  stream, on which TensorRT adds synchronisations: pytorch/TensorRT#3190), ordered against torch's
  current stream both ways; inside ``torch.cuda.device`` of the graph's device.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Mapping, TypeVar

import torch

from ..errors import DeepSoundError, InputError
from ..export.manifest import ExportError, GraphRecord
from ..io.output import write_bytes
from .base import Tensors, torch_dtype

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
ENGINE_PRECISIONS = {"fp32": ("fp32", "tf32", "bf16", "fp16"), "bf16": ("bf16",), "fp16": ("fp16",)}
"""Export dtype (the manifest's ``precision``) -> the engine precisions it can build."""
LEGACY_PRECISION_FLAGS = {"bf16": "BF16", "fp16": "FP16"}
"""Builder flags that turn an fp32 network into a 16-bit engine: TensorRT 10 only (deprecated in
10.12, removed in 11)."""
MAX_ONNX_OPSET = {10: 20, 11: 25}
"""Newest ONNX opset each major version's parser takes (TensorRT support matrices)."""
TENSORRT_MAJORS = tuple(MAX_ONNX_OPSET)
CacheStatus = Literal["hit", "built", "rebuilt"]
Engine = TypeVar("Engine")


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


def tensorrt_major(version: str) -> int:
    """The major version of a TensorRT version string; only the majors this backend is written for."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise DeepSoundError(f"cannot read TensorRT version '{version}'") from None
    if major not in TENSORRT_MAJORS:
        raise DeepSoundError(f"TensorRT {version} is not supported: this backend is written for TensorRT "
                             f"{' and '.join(f'{m}.x' for m in TENSORRT_MAJORS)} (pip install 'deepsound_rt[gpu]')")
    return major


def check_opset(opset: int, version: str) -> None:
    """Refuse an export whose opset the installed TensorRT's ONNX parser does not take."""
    newest = MAX_ONNX_OPSET[tensorrt_major(version)]
    if not 9 <= opset <= newest:
        raise DeepSoundError(f"the export uses ONNX opset {opset}; TensorRT {version} parses opsets 9-{newest}")


@dataclass(frozen=True)
class BuildPlan:
    """How a network is created and which builder flags are set and cleared."""

    strongly_typed: bool
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()


def build_plan(trt, export_dtype: str, precision: str) -> BuildPlan:
    """The plan for ``precision`` engines from an export of ``export_dtype`` on the installed TensorRT.

    Flags are looked up by name and only where the version has them, so a flag TensorRT removed is a
    one-line ``DeepSoundError``, never an ``AttributeError``.
    """
    if precision not in PRECISIONS:
        raise DeepSoundError(f"unknown TensorRT precision '{precision}' (use {', '.join(PRECISIONS)})")
    if export_dtype not in ENGINE_PRECISIONS:
        raise ExportError(f"export precision '{export_dtype}' is unknown to this version: re-export")
    if precision not in ENGINE_PRECISIONS[export_dtype]:
        raise DeepSoundError(f"a {export_dtype} export builds {export_dtype} engines, not {precision}: "
                             f"export with `deepsound-rt export --dtype {precision}` for those")
    flags = trt.BuilderFlag
    tf32 = ("TF32",) if hasattr(flags, "TF32") else ()
    if export_dtype == "fp32" and precision in LEGACY_PRECISION_FLAGS:
        flag = LEGACY_PRECISION_FLAGS[precision]
        if not hasattr(flags, flag):
            raise DeepSoundError(f"TensorRT {trt.__version__} has no BuilderFlag.{flag} (networks are strongly "
                                 f"typed): export with `deepsound-rt export --dtype {precision}` for {precision} engines")
        return BuildPlan(strongly_typed=False, set_flags=(flag,), clear_flags=tf32)
    if precision == "tf32":
        if not tf32:
            raise DeepSoundError(f"TensorRT {trt.__version__} has no BuilderFlag.TF32")
        return BuildPlan(strongly_typed=True, set_flags=tf32)
    return BuildPlan(strongly_typed=True, clear_flags=tf32)  # TF32 is on by default: "fp32" means fp32


def network_flags(trt, plan: BuildPlan) -> int:
    """``create_network`` flags: TensorRT 10 types a network strongly on request; 11 always does (its
    ``STRONGLY_TYPED`` is kept for compatibility and ignored), so it gets none."""
    if not plan.strongly_typed or tensorrt_major(trt.__version__) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


@functools.cache
def tensorrt_logger(trt):
    """One logger per process (per ``tensorrt`` module), shared by every builder and runtime."""
    return trt.Logger(trt.Logger.WARNING)


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
        if precision not in PRECISIONS:
            raise DeepSoundError(f"unknown TensorRT precision '{precision}' (use {', '.join(PRECISIONS)})")
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
        write_bytes(engine_path, engine)
        record = {"key": key.fields(), "engine_sha256": hashlib.sha256(engine).hexdigest()}
        write_bytes(sidecar_path, json.dumps(record, indent=1).encode())


def load_or_build(cache: EngineCache, key: EngineKey, build: Callable[[], bytes],
                  deserialize: Callable[[bytes], Engine | None],
                  on_corrupt: Literal["rebuild", "refuse"] = "rebuild") -> tuple[Engine, CacheStatus]:
    """The cached engine for ``key``, else a freshly built (and cached) one, deserialized.

    A cached engine is unusable when its sidecar does not vouch for it or when ``deserialize``
    returns ``None`` (TensorRT's answer for bytes it cannot read); it is then rebuilt, or refused.
    """
    serialized, problem = cache.lookup(key)
    if serialized is not None:
        engine = deserialize(serialized)
        if engine is not None:
            return engine, "hit"
        problem = "TensorRT cannot deserialize it"
    if problem != "missing" and on_corrupt == "refuse":
        raise EngineCacheError(f"cached TensorRT engine for {key.graph} in {cache.directory} is unusable: {problem}; "
                               "delete it or allow a rebuild")
    serialized = build()
    engine = deserialize(serialized)
    if engine is None:
        raise DeepSoundError(f"TensorRT cannot deserialize the engine it has just built for {key.graph}")
    cache.write(key, serialized)
    return engine, "built" if problem == "missing" else "rebuilt"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` (POSIX ``flock``) for the duration of the block."""
    import fcntl

    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def use_timing_cache(config, path: Path):
    """Attach the timing cache stored at ``path`` (empty when there is none) with strict checks.

    ``ignore_mismatch=False``: a cache recorded on another device is refused by TensorRT (its header
    warns of functional and performance bugs otherwise); the build then starts from an empty cache.
    """
    with file_lock(path):
        stored = path.read_bytes() if path.is_file() else b""
    timing = config.create_timing_cache(stored)
    if not config.set_timing_cache(timing, ignore_mismatch=False):
        timing = config.create_timing_cache(b"")
        if not config.set_timing_cache(timing, ignore_mismatch=False):
            raise DeepSoundError("TensorRT refused an empty timing cache")
    return timing


def save_timing_cache(config, path: Path) -> None:
    """Merge the build's timings with what other builds stored meanwhile, and store them, under the lock."""
    timing = config.get_timing_cache()
    with file_lock(path):
        if path.is_file():
            timing.combine(config.create_timing_cache(path.read_bytes()), ignore_mismatch=False)
        write_bytes(path, bytes(timing.serialize()))


def build_serialized_engine(trt, onnx_path: Path, profile: Mapping[str, ShapeRange], plan: BuildPlan,
                            timing_cache_path: Path | None = None, workspace_bytes: int | None = None) -> bytes:
    """Parse the ONNX (external data is read from beside it) and build one engine."""
    logger = tensorrt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeepSoundError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    for flag in plan.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if profile:
        shapes = builder.create_optimization_profile()
        for name, shape_range in profile.items():
            shapes.set_shape(name, shape_range.min, shape_range.opt, shape_range.max)
        if config.add_optimization_profile(shapes) < 0:
            raise DeepSoundError(f"TensorRT refused the optimisation profile of {onnx_path.name}: {dict(profile)}")
    if timing_cache_path is not None:
        use_timing_cache(config, timing_cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeepSoundError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    if timing_cache_path is not None:
        save_timing_cache(config, timing_cache_path)
    return bytes(serialized)


class TensorRTGraph:
    """One engine and its execution context; inputs and outputs are torch CUDA tensors whose types
    are the engine's (a bf16 export takes and gives bf16)."""

    backend = "tensorrt"
    manifest = None  # the ExportManifest it came from, set by GraphLoader

    def __init__(self, name: str, trt, runtime, engine, device: torch.device, cache_status: CacheStatus,
                 profile: Mapping[str, ShapeRange]):
        self.name = name
        self.device = device
        self.cache_status = cache_status
        self.profile = dict(profile)
        self._runtime = runtime  # the engine must not outlive its runtime
        self.engine = engine
        tensors = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        shape_tensors = [n for n in tensors if engine.is_shape_inference_io(n)]
        if shape_tensors:
            raise DeepSoundError(f"graph {name}: TensorRT needs the values of {shape_tensors} to infer shapes "
                                 "(shape tensors), which this backend does not bind; none of our graphs has any: re-export")
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in tensors}
        self.input_types = {n: torch_dtype(engine.get_tensor_dtype(n).name) for n in tensors if is_input[n]}
        self.output_types = {n: torch_dtype(engine.get_tensor_dtype(n).name) for n in tensors if not is_input[n]}
        with torch.cuda.device(device):
            self.context = engine.create_execution_context()
            self.stream = torch.cuda.Stream(device)
        if self.context is None:
            raise DeepSoundError(f"TensorRT could not create an execution context for graph {name} "
                                 "(out of device memory?)")

    def _allowed(self, name: str) -> str:
        if name in self.profile:
            return f"the engine's profile takes {self.profile[name].min} to {self.profile[name].max}"
        return f"the engine takes only {tuple(self.engine.get_tensor_shape(name))}"

    def _bind(self, name: str, tensor: torch.Tensor) -> None:
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise DeepSoundError(f"graph {self.name}: TensorRT refused the buffer of {name} "
                                 f"(shape {tuple(tensor.shape)}; {self._allowed(name)})")

    def run(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_types if n not in inputs]
        if missing:
            raise KeyError(f"graph {self.name} needs inputs {missing}")
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            feeds = {n: inputs[n].detach().to(self.device, dtype).contiguous() for n, dtype in self.input_types.items()}
            for name, tensor in feeds.items():
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise InputError(f"graph {self.name}: input {name} has shape {tuple(tensor.shape)}, and "
                                     f"{self._allowed(name)}")
                self._bind(name, tensor)
            outputs = {}
            for name, dtype in self.output_types.items():
                shape = tuple(self.context.get_tensor_shape(name))
                if any(size < 0 for size in shape):
                    raise DeepSoundError(f"graph {self.name}: output {name} has a data-dependent shape {shape}, "
                                         "which this backend does not allocate; none of our graphs has one: re-export")
                outputs[name] = torch.empty(shape, dtype=dtype, device=self.device)
                self._bind(name, outputs[name])
            # Buffers come from the caller's stream and TensorRT runs on ours: ours waits for the
            # caller's work so far (the inputs), the caller's later work waits for ours (the outputs).
            # Freed feeds can only be handed out again to work queued on the caller's stream after that.
            self.stream.wait_stream(caller)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run graph {self.name}")
            caller.wait_stream(self.stream)
        return outputs


class TensorRTBackend:
    """Builds (or finds in ``cache_dir``) one engine per exported graph.

    ``export_dtype`` and ``opset`` are the manifest's ``precision`` and ``opset``; ``precision``
    defaults to the export's (see :func:`build_plan` for the others an fp32 export can build).
    """

    name = "tensorrt"

    def __init__(self, device: torch.device, cache_dir: str | Path, export_dtype: str = "fp32",
                 precision: str | None = None, opset: int = 18,
                 on_corrupt: Literal["rebuild", "refuse"] = "rebuild", workspace_bytes: int | None = None):
        precision = precision or export_dtype
        if precision not in PRECISIONS:
            raise DeepSoundError(f"unknown TensorRT precision '{precision}' (use {', '.join(PRECISIONS)})")
        self.device = device
        self.export_dtype = export_dtype
        self.precision = precision
        self.opset = opset
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
            raise DeepSoundError("the tensorrt backend needs the tensorrt package (pip install 'deepsound_rt[gpu]')") from None
        check_opset(self.opset, trt.__version__)
        plan = build_plan(trt, self.export_dtype, self.precision)
        profile = optimization_profile(record)
        key = EngineKey.create(name, record.onnx_sha256, trt.__version__, gpu_identity(self.device), self.precision,
                               profile)
        self.cache.directory.mkdir(parents=True, exist_ok=True)
        timing_cache = self.cache.directory / f"timing-{key.gpu.replace(' ', '_')}-{trt.__version__}.cache"
        with torch.cuda.device(self.device):
            runtime = trt.Runtime(tensorrt_logger(trt))
            engine, status = load_or_build(
                self.cache, key,
                lambda: build_serialized_engine(trt, Path(export_dir) / record.onnx_file, profile, plan, timing_cache,
                                                self.workspace_bytes),
                runtime.deserialize_cuda_engine, self.on_corrupt)
        return TensorRTGraph(name, trt, runtime, engine, self.device, status, profile)


def gpu_identity(device: torch.device) -> str:
    """GPU name and compute capability: engines are specific to both."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm_{major}{minor}"
