"""Everything around TensorRT that can run without it: profiles, cache keys and invalidation, dtype
mapping, and the builder and execution code driven through a fake ``tensorrt`` module."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from deepsound_rt.backends import tensorrt_backend as trt_backend
from deepsound_rt.backends.base import torch_dtype
from deepsound_rt.backends.tensorrt_backend import (
    DTYPE_PRECISIONS,
    EngineCache,
    EngineCacheError,
    EngineKey,
    ShapeRange,
    TensorRTBackend,
    TensorRTGraph,
    build_serialized_engine,
    load_or_build,
    optimization_profile,
)
from deepsound_rt.errors import DeepSoundError
from deepsound_rt.export.manifest import AxisRange, ExportError, GraphRecord, TensorSpec, WeightsFingerprint


def record(inputs: tuple[TensorSpec, ...], axes: dict[str, AxisRange]) -> GraphRecord:
    return GraphRecord(name="g", family="generator", files={"g.onnx": "ab" * 32}, inputs=inputs,
                       outputs=(TensorSpec("y", "float32", (1,)),), dynamic_axes=axes,
                       weights=WeightsFingerprint("", "", ()), atol=1e-4, rtol=1e-4)


def test_profile_covers_dynamic_inputs_with_min_opt_max():
    rec = record((TensorSpec("frames", "float32", (1, "clip_frames", 3, 384, 384)),
                  TensorSpec("t", "float32", ()),
                  TensorSpec("tokens", "int64", ("texts", 77))),
                 {"clip_frames": AxisRange(1, 64, 64), "texts": AxisRange(1, 2, 2)})
    profile = optimization_profile(rec)
    assert set(profile) == {"frames", "tokens"}  # fixed inputs need no entry
    assert profile["frames"] == ShapeRange((1, 1, 3, 384, 384), (1, 64, 3, 384, 384), (1, 64, 3, 384, 384))
    assert profile["tokens"] == ShapeRange((1, 77), (2, 77), (2, 77))


def test_profile_refuses_an_axis_without_a_range():
    rec = record((TensorSpec("x", "float32", ("mystery", 4)),), {})
    with pytest.raises(ExportError, match="mystery"):
        optimization_profile(rec)


def key(**changes) -> EngineKey:
    fields = dict(graph="vocoder", onnx_sha256="0" * 64, tensorrt_version="10.9.0", gpu="NVIDIA H100 sm_90",
                  precision="fp16", profile={"mel": ShapeRange((1, 128, 2), (1, 128, 690), (1, 128, 690))})
    fields.update(changes)
    return EngineKey.create(**fields)


def test_cache_key_depends_on_every_field():
    base = key().digest
    assert key().digest == base
    variants = [key(onnx_sha256="1" * 64), key(tensorrt_version="10.10.0"), key(gpu="NVIDIA H200 sm_90"),
                key(precision="bf16"), key(profile={"mel": ShapeRange((1, 128, 2), (1, 128, 100), (1, 128, 690))})]
    assert len({v.digest for v in variants} | {base}) == len(variants) + 1
    with pytest.raises(DeepSoundError, match="precision"):
        key(precision="int4")


class Builds:
    def __init__(self):
        self.count = 0

    def __call__(self) -> bytes:
        self.count += 1
        return f"engine-{self.count}".encode()


def test_cache_builds_once_then_hits(tmp_path):
    cache, build = EngineCache(tmp_path), Builds()
    assert load_or_build(cache, key(), build) == (b"engine-1", "built")
    assert load_or_build(cache, key(), build) == (b"engine-1", "hit")
    assert build.count == 1
    assert load_or_build(cache, key(precision="bf16"), build) == (b"engine-2", "built")  # other key, other file
    assert load_or_build(cache, key(), build) == (b"engine-1", "hit")


@pytest.mark.parametrize("damage", ["truncate", "replace", "drop_sidecar", "other_key_in_sidecar"])
def test_a_damaged_cache_entry_is_rebuilt_or_refused(tmp_path, damage):
    cache, build = EngineCache(tmp_path), Builds()
    load_or_build(cache, key(), build)
    engine_path, sidecar_path = cache.paths(key())
    if damage == "truncate":
        engine_path.write_bytes(engine_path.read_bytes()[:3])
    elif damage == "replace":
        engine_path.write_bytes(b"something else")
    elif damage == "drop_sidecar":
        sidecar_path.unlink()
    else:
        sidecar = json.loads(sidecar_path.read_text())
        sidecar["key"]["precision"] = "fp32"
        sidecar_path.write_text(json.dumps(sidecar))
    assert cache.lookup(key())[1] not in (None, "missing")
    with pytest.raises(EngineCacheError, match="vocoder"):
        load_or_build(cache, key(), build, on_corrupt="refuse")
    assert load_or_build(cache, key(), build) == (b"engine-2", "rebuilt")
    assert cache.lookup(key())[1] is None


def test_dtype_names_of_every_runtime_map_to_torch():
    assert torch_dtype("FLOAT") is torch.float32 and torch_dtype("HALF") is torch.float16
    assert torch_dtype("BF16") is torch.bfloat16 and torch_dtype("INT64") is torch.int64
    assert torch_dtype("tensor(float)") is torch.float32 and torch_dtype("int64") is torch.int64
    with pytest.raises(TypeError):
        torch_dtype("FP8")
    assert DTYPE_PRECISIONS == {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# -- the TensorRT API through a fake module ------------------------------------------------------


class FakeTensorRT:
    """The slice of the TensorRT 10 Python API the backend uses, recording what is asked of it."""

    __version__ = "10.0.fake"
    Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    BuilderFlag = SimpleNamespace(FP16="FP16", BF16="BF16", TF32="TF32")
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    def __init__(self, parses: bool = True):
        self.parses = parses
        self.flags: list[str] = []
        self.shapes: dict[str, tuple] = {}
        self.timing_cache_in: bytes | None = None
        fake = self

        class Parser:
            num_errors = 0 if parses else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                return fake.parses

            def get_error(self, index):
                return "unsupported op Foo"

        class Config:
            def set_flag(self, flag):
                fake.flags.append(flag)

            def set_memory_pool_limit(self, pool, size):
                pass

            def add_optimization_profile(self, profile):
                pass

            def create_timing_cache(self, data):
                fake.timing_cache_in = data
                return SimpleNamespace(serialize=lambda: b"timing")

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

            def get_timing_cache(self):
                return SimpleNamespace(serialize=lambda: b"timing")

        class Profile:
            def set_shape(self, name, low, opt, high):
                fake.shapes[name] = (low, opt, high)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return object()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"serialized"

        self.OnnxParser, self.Builder = Parser, Builder


def test_builder_sets_precision_profile_and_timing_cache(tmp_path):
    trt = FakeTensorRT()
    profile = {"mel": ShapeRange((1, 128, 2), (1, 128, 690), (1, 128, 690))}
    timing = tmp_path / "timing.cache"
    assert build_serialized_engine(trt, tmp_path / "vocoder.onnx", profile, "bf16", timing) == b"serialized"
    assert trt.flags == ["BF16"] and trt.shapes == {"mel": ((1, 128, 2), (1, 128, 690), (1, 128, 690))}
    assert trt.timing_cache_in == b"" and timing.read_bytes() == b"timing"
    build_serialized_engine(trt, tmp_path / "vocoder.onnx", profile, "fp32", timing)
    assert trt.timing_cache_in == b"timing"  # the next build starts from the saved timings


def test_builder_reports_parser_errors(tmp_path):
    with pytest.raises(DeepSoundError, match="unsupported op Foo"):
        build_serialized_engine(FakeTensorRT(parses=False), tmp_path / "g.onnx", {}, "fp16")


class FakeEngine:
    """Two inputs (one dynamic) and one output whose shape the context derives."""

    tensors = {"x": ("INPUT", "FLOAT"), "tokens": ("INPUT", "INT64"), "y": ("OUTPUT", "HALF")}
    num_io_tensors = 3

    def get_tensor_name(self, index):
        return list(self.tensors)[index]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return SimpleNamespace(name=self.tensors[name][1])

    def create_execution_context(self):
        return FakeContext()


class FakeContext:
    def __init__(self):
        self.shapes, self.addresses, self.streams = {}, {}, []

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape

    def get_tensor_shape(self, name):
        return (self.shapes["x"][0], 5)

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer

    def execute_async_v3(self, stream):
        self.streams.append(stream)
        return True


def test_graph_binds_torch_buffers_and_runs_on_torchs_stream(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(cuda_stream=1234))
    graph = TensorRTGraph("g", FakeTensorRT(), runtime=None, engine=FakeEngine(), device=torch.device("cpu"),
                          cache_status="hit")
    assert graph.input_types == {"x": torch.float32, "tokens": torch.int64}
    x = torch.ones(3, 4, dtype=torch.float64)  # cast to the engine's float32
    outputs = graph.run({"x": x, "tokens": torch.zeros(3, 77, dtype=torch.int64)})
    assert outputs["y"].shape == (3, 5) and outputs["y"].dtype is torch.float16
    assert graph.context.shapes == {"x": (3, 4), "tokens": (3, 77)}
    assert graph.context.addresses["y"] == outputs["y"].data_ptr() and graph.context.streams == [1234]
    with pytest.raises(KeyError, match="tokens"):
        graph.run({"x": x})


def test_backend_is_refused_off_cuda_and_without_tensorrt(tmp_path):
    backend = TensorRTBackend(torch.device("cpu"), "fp16", tmp_path)
    with pytest.raises(DeepSoundError, match="CUDA"):
        backend.load("g", tmp_path, record((), {}))
    with pytest.raises(DeepSoundError, match="precision"):
        TensorRTBackend(torch.device("cpu"), "fp8", tmp_path)
    if not torch.cuda.is_available():
        assert not trt_backend.TensorRTBackend.available()


def test_the_op_check_names_what_tensorrt_would_reject():
    import onnx
    from onnx import TensorProto, helper

    from deepsound_rt.export.onnx import tensorrt_incompatibilities

    then_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y_then"])], "then", [],
                                    [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [2])])
    nodes = [
        helper.make_node("Shape", ["x"], ["computed_axes"]),
        helper.make_node("Unsqueeze", ["x", "computed_axes"], ["u"]),
        helper.make_node("Unsqueeze", ["x", "fixed_axes"], ["v"]),
        helper.make_node("SplitToSequence", ["x"], ["sequence"]),
        helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=then_branch),
        helper.make_node("Custom", ["x"], ["z"], domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                       helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
                       helper.make_tensor_value_info("d", TensorProto.DOUBLE, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [helper.make_tensor("fixed_axes", TensorProto.INT64, [1], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert tensorrt_incompatibilities(model) == [
        "Unsqueeze with computed axes", "control flow If", "custom op com.example::Custom", "float64 tensors (d)",
        "opset 21", "unsupported op SplitToSequence"]
    clean = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "ok", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]), opset_imports=[helper.make_opsetid("", 18)])
    assert tensorrt_incompatibilities(clean) == [] and onnx.checker.check_model(clean) is None
