"""Stand-ins for the ``tensorrt`` package, one per major version, for tests that check OUR calls.

They are not TensorRT and prove nothing about it. Each has the names, signatures and return
conventions of the real Python bindings for the calls the backend makes, taken from NVIDIA/TensorRT
``python/src/infer/pyCore.cpp``, ``python/src/infer/pyFoundationalTypes.cpp`` and
``python/src/parsers/pyOnnx.cpp`` (enum values from ``include/NvInfer.h``):

- :func:`tensorrt_10`: tags v10.0.0 and v10.16 (the same for these calls). ``BuilderFlag`` has
  FP16 (0), INT8 (1), TF32 (6) and BF16 (17), the 16-bit ones deprecated since 10.12;
  ``NetworkDefinitionCreationFlag`` has EXPLICIT_BATCH (0, ignored in 10) and STRONGLY_TYPED (1).
- :func:`tensorrt_11`: tag v11.1. ``BuilderFlag`` has TF32 (6) and no FP16, INT8 or BF16;
  ``NetworkDefinitionCreationFlag`` has STRONGLY_TYPED (0, "retained for API compatibility but
  ignored": every network is strongly typed) and no EXPLICIT_BATCH.

Return conventions mirrored: ``OnnxParser.parse_from_file`` -> bool, with ``num_errors`` and
``get_error``; ``IBuilderConfig.add_optimization_profile`` -> profile index; ``set_timing_cache``
-> bool (False for a cache recorded on another device unless ``ignore_mismatch``);
``ITimingCache.combine`` -> bool; ``build_serialized_network`` -> a buffer or None;
``Runtime.deserialize_cuda_engine`` -> an engine or None; ``IExecutionContext.set_input_shape``,
``set_tensor_address`` and ``execute_async_v3`` -> bool (False for a shape outside the profile);
``get_tensor_shape`` -> dims with -1 where a size is not known; TF32 is set in a new builder config.

What they do in TensorRT's place: "parsing" reads the ONNX file's declared inputs and outputs; an
"engine" is JSON of those, the profile and the build settings; a context sizes an output axis from
the input axis of the same name, and leaves -1 where no input has it (a data-dependent shape).
"""
from __future__ import annotations

import enum
import json
from pathlib import Path

import onnx

ONNX_TYPES = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.BFLOAT16: "BF16",
              onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT32: "INT32", onnx.TensorProto.BOOL: "BOOL"}
OTHER_DEVICE = b"timing cache of another device:"
"""Timing-cache bytes the stand-in treats as recorded on another GPU."""


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class BuilderFlag10(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    TF32 = 6
    BF16 = 17


class BuilderFlag11(enum.IntEnum):
    TF32 = 6


class NetworkDefinitionCreationFlag10(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class NetworkDefinitionCreationFlag11(enum.IntEnum):
    STRONGLY_TYPED = 0


class TensorRTStandIn:
    """A ``tensorrt`` module stand-in; its attributes record what the code under test asked."""

    TensorIOMode = TensorIOMode
    MemoryPoolType = MemoryPoolType
    DataType = DataType

    def __init__(self, version: str, builder_flags: type[enum.IntEnum], network_flags: type[enum.IntEnum]):
        self.__version__ = version
        self.BuilderFlag = builder_flags
        self.NetworkDefinitionCreationFlag = network_flags
        self.loggers = 0
        self.network_flags: list[int] = []
        self.configs: list[BuilderConfig] = []
        self.contexts: list[ExecutionContext] = []
        self.shape_tensors: set[str] = set()  # inputs the next engines report as shape-inference I/O
        self.events: list[tuple] = []  # contexts created and runs, in order (tests add stream events)
        standin = self

        class Logger:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

            def __init__(self, min_severity=WARNING):
                standin.loggers += 1
                self.min_severity = min_severity

        class Builder:
            def __init__(self, logger):
                self.logger = logger

            def create_network(self, flags=0):
                standin.network_flags.append(flags)
                return Network(flags)

            def create_builder_config(self):
                config = BuilderConfig(builder_flags)
                standin.configs.append(config)
                return config

            def create_optimization_profile(self):
                return OptimizationProfile()

            def build_serialized_network(self, network, config):
                if network.inputs is None:
                    return None
                return json.dumps({"inputs": network.inputs, "outputs": network.outputs, "profile": config.profile,
                                   "flags": sorted(config.flags), "network_flags": network.flags,
                                   "shape_tensors": sorted(standin.shape_tensors)}).encode()

        class Runtime:
            def __init__(self, logger):
                self.logger = logger

            def deserialize_cuda_engine(self, serialized_engine):
                try:
                    return CudaEngine(json.loads(bytes(serialized_engine)), standin)
                except (ValueError, KeyError, TypeError):
                    return None

        self.Logger, self.Builder, self.Runtime, self.OnnxParser = Logger, Builder, Runtime, OnnxParser


def tensorrt_10() -> TensorRTStandIn:
    return TensorRTStandIn("10.16.1", BuilderFlag10, NetworkDefinitionCreationFlag10)


def tensorrt_11() -> TensorRTStandIn:
    return TensorRTStandIn("11.1.0", BuilderFlag11, NetworkDefinitionCreationFlag11)


class Network:
    def __init__(self, flags: int):
        self.flags = flags
        self.inputs: list | None = None
        self.outputs: list | None = None


class ParserError:
    def __init__(self, desc: str):
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return self._desc


class OnnxParser:
    def __init__(self, network: Network, logger):
        self.network = network
        self.errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> ParserError:
        return self.errors[index]

    def parse_from_file(self, model: str) -> bool:
        try:
            graph = onnx.load(model, load_external_data=False).graph
        except Exception as exc:  # TensorRT reports an unreadable model as a parser error, not an exception
            self.errors.append(ParserError(f"cannot read {Path(model).name}: {type(exc).__name__}"))
            return False
        unsupported = [n.op_type for n in graph.node if n.domain not in ("", "ai.onnx")]
        if unsupported:
            self.errors.append(ParserError(f"unsupported op {unsupported[0]}"))
            return False

        def io(value) -> list:
            tensor = value.type.tensor_type
            dims = [d.dim_value if not d.dim_param else d.dim_param for d in tensor.shape.dim]
            return [value.name, ONNX_TYPES[tensor.elem_type], dims]

        initializers = {i.name for i in graph.initializer}
        self.network.inputs = [io(v) for v in graph.input if v.name not in initializers]
        self.network.outputs = [io(v) for v in graph.output]
        return True


class TimingCache:
    def __init__(self, data: bytes):
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return self.data

    def combine(self, input_cache: TimingCache, ignore_mismatch: bool) -> bool:
        if input_cache.data.startswith(OTHER_DEVICE) and not ignore_mismatch:
            return False
        self.data += input_cache.data
        return True


class BuilderConfig:
    def __init__(self, builder_flags: type[enum.IntEnum]):
        self.flags = {"TF32"} if hasattr(builder_flags, "TF32") else set()  # TensorRT's default
        self.profile: dict[str, list] = {}
        self.pool_limits: dict = {}
        self.timing_cache: TimingCache | None = None
        self.ignore_mismatch: list[bool] = []

    def set_flag(self, flag) -> None:
        self.flags.add(flag.name)

    def clear_flag(self, flag) -> None:
        self.flags.discard(flag.name)

    def get_flag(self, flag) -> bool:
        return flag.name in self.flags

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        self.pool_limits[pool] = pool_size

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self.profile = profile.shapes
        return 0

    def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache:
        return TimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.ignore_mismatch.append(ignore_mismatch)
        if cache.data.startswith(OTHER_DEVICE) and not ignore_mismatch:
            return False
        self.timing_cache = cache
        cache.data += b"+timings"
        return True

    def get_timing_cache(self) -> TimingCache | None:
        return self.timing_cache


class OptimizationProfile:
    def __init__(self):
        self.shapes: dict[str, list] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - the binding's argument names
        self.shapes[input] = [list(min), list(opt), list(max)]


class CudaEngine:
    def __init__(self, plan: dict, standin: TensorRTStandIn):
        self.plan = plan
        self.standin = standin
        self.io = {name: (TensorIOMode.INPUT, dtype, dims) for name, dtype, dims in plan["inputs"]}
        self.io |= {name: (TensorIOMode.OUTPUT, dtype, dims) for name, dtype, dims in plan["outputs"]}

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, index: int) -> str:
        return list(self.io)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.io[name][0]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self.io[name][1]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in self.io[name][2])

    def is_shape_inference_io(self, name: str) -> bool:
        return name in self.plan["shape_tensors"]

    def create_execution_context(self) -> ExecutionContext:
        context = ExecutionContext(self)
        self.standin.contexts.append(context)
        self.standin.events.append(("create_execution_context",))
        return context


class ExecutionContext:
    def __init__(self, engine: CudaEngine):
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.streams: list[int] = []

    def set_input_shape(self, name: str, shape) -> bool:
        mode, _, dims = self.engine.io[name]
        shape = tuple(shape)
        if mode != TensorIOMode.INPUT or len(shape) != len(dims):
            return False
        low, _, high = self.engine.plan["profile"].get(name, [self.engine.get_tensor_shape(name)] * 3)
        if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        sizes = {}
        for input_name, (mode, _, dims) in self.engine.io.items():
            if mode == TensorIOMode.INPUT and input_name in self.shapes:
                sizes |= {d: s for d, s in zip(dims, self.shapes[input_name]) if isinstance(d, str)}
        return tuple(d if isinstance(d, int) else sizes.get(d, -1) for d in self.engine.io[name][2])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self.engine.io or memory == 0:
            return False
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.streams.append(stream_handle)
        self.engine.standin.events.append(("execute_async_v3", stream_handle))
        return set(self.addresses) == set(self.engine.io)
