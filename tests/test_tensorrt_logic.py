"""The TensorRT backend without TensorRT: profiles, cache keys and invalidation, dtype mapping, and
the builder and execution code driven through stand-ins for TensorRT 10.x and 11.x
(``tests/tensorrt_standins.py``).

The stand-in tests check OUR calls (names, arguments, order, how return values are handled)
against modules that mirror the real bindings' names and return conventions per version; they are
not the real API, which has never run here.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from deepsound_rt.backends import tensorrt_backend as trt_backend
from deepsound_rt.backends.base import torch_dtype
from deepsound_rt.backends.onnxruntime_backend import OnnxRuntimeBackend, select_providers, tensorrt_provider_problem
from deepsound_rt.backends.tensorrt_backend import (
    BuildPlan,
    EngineCache,
    EngineCacheError,
    EngineKey,
    ShapeRange,
    TensorRTBackend,
    TensorRTGraph,
    build_plan,
    build_serialized_engine,
    check_opset,
    file_lock,
    load_or_build,
    network_flags,
    optimization_profile,
    save_timing_cache,
    tensorrt_logger,
)
from deepsound_rt.errors import DeepSoundError, InputError
from deepsound_rt.export.manifest import AxisRange, ExportError, GraphRecord, TensorSpec, WeightsFingerprint
from tests.tensorrt_standins import OTHER_DEVICE, tensorrt_10, tensorrt_11


def record(inputs: tuple[TensorSpec, ...], axes: dict[str, AxisRange], files: dict | None = None) -> GraphRecord:
    return GraphRecord(name="g", family="generator", files=files or {"g.onnx": "ab" * 32}, inputs=inputs,
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
    """Counts builds; an engine is readable unless it says "garbage"."""

    def __init__(self):
        self.count = 0

    def __call__(self) -> bytes:
        self.count += 1
        return f"engine-{self.count}".encode()

    @staticmethod
    def deserialize(serialized: bytes) -> str | None:
        return None if serialized.startswith(b"garbage") else serialized.decode()


def test_cache_builds_once_then_hits(tmp_path):
    cache, build = EngineCache(tmp_path), Builds()
    assert load_or_build(cache, key(), build, build.deserialize) == ("engine-1", "built")
    assert load_or_build(cache, key(), build, build.deserialize) == ("engine-1", "hit")
    assert build.count == 1
    assert load_or_build(cache, key(precision="bf16"), build, build.deserialize) == ("engine-2", "built")
    assert load_or_build(cache, key(), build, build.deserialize) == ("engine-1", "hit")
    assert not list(tmp_path.glob(".*.tmp-*"))  # no temporary left behind


def _vouch_for(cache: EngineCache, key: EngineKey, engine: bytes) -> None:
    """Replace the engine file and give it a sidecar that matches: only deserializing can tell."""
    engine_path, sidecar_path = cache.paths(key)
    engine_path.write_bytes(engine)
    sidecar_path.write_text(json.dumps({"key": key.fields(), "engine_sha256": hashlib.sha256(engine).hexdigest()}))


@pytest.mark.parametrize("damage", ["truncate", "replace", "drop_sidecar", "other_key_in_sidecar", "undeserializable"])
def test_a_damaged_cache_entry_is_rebuilt_or_refused(tmp_path, damage):
    cache, build = EngineCache(tmp_path), Builds()
    load_or_build(cache, key(), build, build.deserialize)
    engine_path, sidecar_path = cache.paths(key())
    if damage == "truncate":
        engine_path.write_bytes(engine_path.read_bytes()[:3])
    elif damage == "replace":
        engine_path.write_bytes(b"something else")
    elif damage == "drop_sidecar":
        sidecar_path.unlink()
    elif damage == "other_key_in_sidecar":
        sidecar = json.loads(sidecar_path.read_text())
        sidecar["key"]["precision"] = "fp32"
        sidecar_path.write_text(json.dumps(sidecar))
    else:
        _vouch_for(cache, key(), b"garbage from an older TensorRT")
    with pytest.raises(EngineCacheError, match="vocoder"):
        load_or_build(cache, key(), build, build.deserialize, on_corrupt="refuse")
    assert load_or_build(cache, key(), build, build.deserialize) == ("engine-2", "rebuilt")
    assert cache.lookup(key()) == (b"engine-2", None)


def test_dtype_names_of_every_runtime_map_to_torch():
    assert torch_dtype("FLOAT") is torch.float32 and torch_dtype("HALF") is torch.float16
    assert torch_dtype("BF16") is torch.bfloat16 and torch_dtype("INT64") is torch.int64
    assert torch_dtype("tensor(float)") is torch.float32 and torch_dtype("int64") is torch.int64
    with pytest.raises(TypeError):
        torch_dtype("FP8")


# -- the TensorRT API through the stand-ins ------------------------------------------------------


@pytest.fixture(params=[tensorrt_10, tensorrt_11], ids=["tensorrt10", "tensorrt11"])
def trt(request):
    """A fresh stand-in for each major version: every test below runs against both, and checks our
    calls against the stand-in's names and return conventions, not against the real API."""
    return request.param()


ONNX_TYPES = {torch.float32: TensorProto.FLOAT, torch.bfloat16: TensorProto.BFLOAT16}


def tiny_onnx(path: Path, dtype: torch.dtype = torch.float32, output_dims: tuple = ("n", 5)) -> GraphRecord:
    """y = x @ W in ``dtype`` with a batch axis ``n`` (1..4, opt 2), plus int64 tokens; and its record."""
    elem = ONNX_TYPES[dtype]
    weight = helper.make_tensor("w", elem, [4, 5], [1.0] * 20)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", elem, ["n", 4]), helper.make_tensor_value_info("tokens", TensorProto.INT64, ["n", 77])],
        [helper.make_tensor_value_info("y", elem, list(output_dims))], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    files = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    return record((TensorSpec("x", name, ("n", 4)), TensorSpec("tokens", "int64", ("n", 77))),
                  {"n": AxisRange(1, 2, 4)}, files)


class FakeStream:
    """A torch.cuda.Stream that logs what waits on what into the stand-in's event list."""

    handles = itertools.count(1000)

    def __init__(self, events: list, handle: int | None = None):
        self.events = events
        self.cuda_stream = next(self.handles) if handle is None else handle

    def wait_stream(self, other: FakeStream) -> None:
        self.events.append(("wait_stream", self.cuda_stream, other.cuda_stream))


@pytest.fixture
def cuda(monkeypatch, trt):
    """torch.cuda as far as the backend uses it, on a machine without CUDA: the current stream is
    the legacy default stream (handle 0); device blocks and streams log into ``trt.events``."""
    caller = FakeStream(trt.events, handle=0)

    @contextlib.contextmanager
    def device(where):
        trt.events.append(("enter_device", str(where)))
        yield
        trt.events.append(("exit_device", str(where)))

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: caller)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream(trt.events))
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    return SimpleNamespace(caller=caller)


def load(trt, tmp_path: Path, export_dtype: str = "fp32", precision: str | None = None, opset: int = 18,
         on_corrupt: str = "rebuild", **onnx_options) -> TensorRTGraph:
    """TensorRTBackend.load on cuda:1 of a tiny export in ``tmp_path`` (needs the ``cuda`` fixture)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[export_dtype]
    rec = tiny_onnx(tmp_path / "g.onnx", dtype, **onnx_options)
    backend = TensorRTBackend(torch.device("cuda:1"), tmp_path / "engines", export_dtype, precision, opset, on_corrupt)
    return backend.load("g", tmp_path, rec)


def on_cpu(graph: TensorRTGraph) -> TensorRTGraph:
    """The loaded graph made to allocate on the CPU, so that run() works without CUDA."""
    graph.device = torch.device("cpu")
    return graph


# 1. precision from the export; flags only where the version has them


def test_build_plans_per_version(trt):
    """Typed exports build strongly typed networks without precision flags on both versions; the
    fp32-export-plus-flag route exists on 10 only, and on 11 is a one-line error, not AttributeError."""
    ten = trt.__version__.startswith("10.")
    assert build_plan(trt, "bf16", "bf16") == BuildPlan(strongly_typed=True, clear_flags=("TF32",))
    assert build_plan(trt, "fp16", "fp16") == BuildPlan(strongly_typed=True, clear_flags=("TF32",))
    assert network_flags(trt, build_plan(trt, "bf16", "bf16")) == (1 << 1 if ten else 0)  # 11: always typed
    for precision, flag in (("bf16", "BF16"), ("fp16", "FP16")):
        if ten:
            assert build_plan(trt, "fp32", precision) == BuildPlan(False, (flag,), ("TF32",))
        else:
            with pytest.raises(DeepSoundError, match=rf"no BuilderFlag.{flag}.*--dtype {precision}") as error:
                build_plan(trt, "fp32", precision)
            assert "\n" not in str(error.value)
    with pytest.raises(DeepSoundError, match="a bf16 export builds bf16 engines, not fp16"):
        build_plan(trt, "bf16", "fp16")
    with pytest.raises(DeepSoundError, match="unknown TensorRT precision"):
        build_plan(trt, "fp32", "int8")


def test_a_bf16_export_builds_a_typed_engine_that_takes_and_gives_bf16(trt, cuda, tmp_path):
    graph = load(trt, tmp_path, "bf16")
    config, = trt.configs
    assert not {"FP16", "BF16"} & config.flags and trt.network_flags == [1 << 1 if trt.__version__.startswith("10.") else 0]
    assert graph.input_types == {"x": torch.bfloat16, "tokens": torch.int64} and graph.output_types == {"y": torch.bfloat16}
    outputs = on_cpu(graph).run({"x": torch.ones(3, 4), "tokens": torch.zeros(3, 77, dtype=torch.int64)})
    assert outputs["y"].dtype is torch.bfloat16 and outputs["y"].shape == (3, 5)


def test_an_fp32_export_asked_for_bf16_uses_the_flag_on_10_and_is_refused_on_11(trt, cuda, tmp_path):
    if trt.__version__.startswith("10."):
        graph = load(trt, tmp_path, "fp32", precision="bf16")
        assert "BF16" in trt.configs[0].flags and trt.network_flags == [0]  # weakly typed: flags need that
        assert graph.output_types == {"y": torch.float32}  # I/O keep the export's types
    else:
        with pytest.raises(DeepSoundError, match="--dtype bf16"):
            load(trt, tmp_path, "fp32", precision="bf16")
        assert trt.configs == []  # refused before anything was built


# 2. fp32 means fp32


def test_fp32_engines_clear_tf32_and_tf32_engines_differ_from_them(trt, cuda, tmp_path):
    load(trt, tmp_path, "fp32")
    load(trt, tmp_path, "fp32", precision="tf32")
    fp32, tf32 = trt.configs
    assert "TF32" not in fp32.flags and "TF32" in tf32.flags  # TF32 is on in a new config
    engines = sorted((tmp_path / "engines").glob("*.engine"))
    assert len(engines) == 2 and engines[0].read_bytes() != engines[1].read_bytes()


# 3. a stream of our own


def test_graph_runs_on_its_own_stream_ordered_against_torchs_both_ways(trt, cuda, tmp_path):
    graph = on_cpu(load(trt, tmp_path))
    trt.events.clear()
    x = torch.ones(3, 4, dtype=torch.float64)  # cast to the engine's float32
    outputs = graph.run({"x": x, "tokens": torch.zeros(3, 77, dtype=torch.int64)})
    ours, caller = graph.stream.cuda_stream, cuda.caller.cuda_stream
    assert ours != caller == 0
    assert [e for e in trt.events if e[0] in ("wait_stream", "execute_async_v3")] == [
        ("wait_stream", ours, caller), ("execute_async_v3", ours), ("wait_stream", caller, ours)]
    context = graph.context
    assert context.shapes == {"x": (3, 4), "tokens": (3, 77)} and context.addresses["y"] == outputs["y"].data_ptr()
    assert outputs["y"].shape == (3, 5) and outputs["y"].dtype is torch.float32
    with pytest.raises(KeyError, match="tokens"):
        graph.run({"x": x})


# 4. return values and shapes checked


def test_an_input_outside_the_profile_is_a_one_line_error_naming_it(trt, cuda, tmp_path):
    graph = on_cpu(load(trt, tmp_path))
    with pytest.raises(InputError) as error:
        graph.run({"x": torch.ones(7, 4), "tokens": torch.zeros(7, 77, dtype=torch.int64)})
    message = str(error.value)
    assert "input x has shape (7, 4)" in message and "(1, 4) to (4, 4)" in message and "\n" not in message


def test_a_refused_buffer_is_a_one_line_error_naming_it(trt, cuda, tmp_path, monkeypatch):
    graph = on_cpu(load(trt, tmp_path))
    monkeypatch.setattr(graph.context, "set_tensor_address", lambda name, memory: name != "tokens")
    with pytest.raises(DeepSoundError, match=r"refused the buffer of tokens \(shape \(2, 77\); .*\(1, 77\) to \(4, 77\)"):
        graph.run({"x": torch.ones(2, 4), "tokens": torch.zeros(2, 77, dtype=torch.int64)})


def test_data_dependent_output_shapes_are_refused_before_allocating(trt, cuda, tmp_path):
    graph = on_cpu(load(trt, tmp_path, output_dims=("n", "nonzero_count")))
    with pytest.raises(DeepSoundError, match=r"output y has a data-dependent shape \(2, -1\)"):
        graph.run({"x": torch.ones(2, 4), "tokens": torch.zeros(2, 77, dtype=torch.int64)})


def test_shape_tensor_inputs_are_refused_at_load(trt, cuda, tmp_path):
    trt.shape_tensors = {"tokens"}
    with pytest.raises(DeepSoundError, match=r"values of \['tokens'\] to infer shapes"):
        load(trt, tmp_path)


# 5. the execution context and every run on the graph's device


def test_context_and_runs_happen_inside_the_graphs_device(trt, cuda, tmp_path):
    graph = load(trt, tmp_path)
    created = trt.events.index(("create_execution_context",))
    entered = max(i for i, e in enumerate(trt.events[:created]) if e[0] == "enter_device")
    assert trt.events[entered] == ("enter_device", "cuda:1")
    assert ("exit_device", "cuda:1") in trt.events[created:]
    graph = on_cpu(graph)
    trt.events.clear()
    graph.run({"x": torch.ones(2, 4), "tokens": torch.zeros(2, 77, dtype=torch.int64)})
    kinds = [e[0] for e in trt.events]
    assert kinds[0] == "enter_device" and kinds[-1] == "exit_device" and "execute_async_v3" in kinds


# 6. timing cache and corrupt engines


def test_timing_cache_is_strict_merged_and_reused(trt, cuda, tmp_path):
    load(trt, tmp_path)
    timing, = (tmp_path / "engines").glob("timing-*.cache")
    assert trt.configs[0].ignore_mismatch == [False] and timing.read_bytes() == b"+timings"
    load(trt, tmp_path, precision="tf32")
    assert trt.configs[1].ignore_mismatch == [False]
    assert timing.read_bytes().startswith(b"+timings+timings")  # the second build started from the first's
    assert not list((tmp_path / "engines").glob(".*.tmp-*"))


def test_a_timing_cache_of_another_device_is_not_used(trt, cuda, tmp_path):
    (tmp_path / "engines").mkdir()
    timing = tmp_path / "engines" / "timing-NVIDIA_H100_sm_90-{}.cache".format(trt.__version__)
    timing.write_bytes(OTHER_DEVICE + b"old")
    load(trt, tmp_path)
    assert trt.configs[0].ignore_mismatch == [False, False]  # refused, then an empty cache
    assert timing.read_bytes() == b"+timings"


def test_saving_the_timing_cache_waits_for_the_lock_and_never_leaves_half_a_file(trt, tmp_path, monkeypatch):
    path = tmp_path / "timing.cache"
    path.write_bytes(b"before")
    config = trt.Builder(None).create_builder_config()
    config.set_timing_cache(config.create_timing_cache(b"new"), ignore_mismatch=False)
    saver = threading.Thread(target=save_timing_cache, args=(config, path))
    with file_lock(path):
        saver.start()
        saver.join(0.3)
        assert saver.is_alive() and path.read_bytes() == b"before"  # blocked while another holds the lock
    saver.join(5)
    assert path.read_bytes() == b"new+timingsbefore"  # merged with what was stored
    monkeypatch.setattr(os, "replace", lambda source, target: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(DeepSoundError, match="timing.cache: cannot write"):
        save_timing_cache(config, path)
    assert path.read_bytes() == b"new+timingsbefore"
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_a_cached_engine_tensorrt_cannot_deserialize_is_rebuilt_or_refused(trt, cuda, tmp_path):
    first = load(trt, tmp_path)
    assert first.cache_status == "built" and load(trt, tmp_path).cache_status == "hit"
    cache = EngineCache(tmp_path / "engines")
    engine_path, = cache.directory.glob("*.engine")
    sidecar = json.loads(engine_path.with_suffix(".json").read_text())
    engine_path.write_bytes(b"not an engine")  # with a sidecar that vouches for it: only TensorRT can tell
    engine_path.with_suffix(".json").write_text(json.dumps(
        {"key": sidecar["key"], "engine_sha256": hashlib.sha256(b"not an engine").hexdigest()}))
    with pytest.raises(EngineCacheError, match="cannot deserialize"):
        load(trt, tmp_path, on_corrupt="refuse")
    assert load(trt, tmp_path).cache_status == "rebuilt"


# 7. one logger, version-aware opsets


def test_one_logger_serves_every_build_and_runtime(trt, cuda, tmp_path):
    load(trt, tmp_path)
    load(trt, tmp_path, precision="tf32")
    assert trt.loggers == 1 and tensorrt_logger(trt) is tensorrt_logger(trt)


def test_opset_limits_follow_the_installed_version(trt, cuda, tmp_path):
    newest = 20 if trt.__version__.startswith("10.") else 25
    check_opset(newest, trt.__version__)
    with pytest.raises(DeepSoundError, match=f"parses opsets 9-{newest}"):
        load(trt, tmp_path, opset=newest + 1)
    with pytest.raises(DeepSoundError, match="written for TensorRT 10.x and 11.x"):
        check_opset(18, "8.6.1")


def test_builder_reports_parser_errors(trt, tmp_path):
    with pytest.raises(DeepSoundError, match="cannot parse .*missing.onnx"):
        build_serialized_engine(trt, tmp_path / "missing.onnx", {}, build_plan(trt, "fp32", "fp32"))


def test_builder_sets_the_profile_and_workspace(trt, tmp_path):
    tiny_onnx(tmp_path / "g.onnx")
    profile = {"x": ShapeRange((1, 4), (2, 4), (4, 4))}
    serialized = build_serialized_engine(trt, tmp_path / "g.onnx", profile, build_plan(trt, "fp32", "fp32"),
                                         workspace_bytes=1 << 30)
    assert json.loads(serialized)["profile"] == {"x": [[1, 4], [2, 4], [4, 4]]}
    assert trt.configs[0].pool_limits == {trt.MemoryPoolType.WORKSPACE: 1 << 30}


def test_backend_is_refused_off_cuda_and_for_unknown_precisions(tmp_path):
    backend = TensorRTBackend(torch.device("cpu"), tmp_path)
    with pytest.raises(DeepSoundError, match="CUDA"):
        backend.load("g", tmp_path, record((), {}))
    with pytest.raises(DeepSoundError, match="precision"):
        TensorRTBackend(torch.device("cpu"), tmp_path, precision="fp8")
    if not torch.cuda.is_available():
        assert not trt_backend.TensorRTBackend.available()


# 8. ONNX Runtime's TensorRT execution provider


ORT_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_onnxruntime_tensorrt_provider_gets_the_profile_and_the_exports_precision(tmp_path):
    profile = {"x": ShapeRange((1, 4), (2, 4), (4, 4)), "tokens": ShapeRange((1, 77), (2, 77), (4, 77))}
    (name, options), *_ = select_providers(ORT_PROVIDERS, torch.device("cuda:0"), "bf16", tmp_path, profile)
    assert name == "TensorrtExecutionProvider"
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]) == (
        "x:1x4,tokens:1x77", "x:2x4,tokens:2x77", "x:4x4,tokens:4x77")
    assert options["trt_bf16_enable"] and not options["trt_fp16_enable"]
    (_, options), *_ = select_providers(ORT_PROVIDERS, torch.device("cuda:0"), "fp32", tmp_path, {})
    assert "trt_bf16_enable" not in options and "trt_profile_min_shapes" not in options


def test_tensorrt_11_needs_onnxruntime_1_27_and_says_so_in_one_line(tmp_path):
    problem = tensorrt_provider_problem("1.26.1", "11.1.0")
    assert "onnxruntime-gpu >= 1.27" in problem and "1.26.1" in problem and "\n" not in problem
    assert tensorrt_provider_problem("1.27.0", "11.0.0") is None and tensorrt_provider_problem("1.22.0", "10.9.0") is None
    assert tensorrt_provider_problem("1.22.0", None) is None
    with pytest.warns(UserWarning, match="1.27"):
        chosen = select_providers(ORT_PROVIDERS, torch.device("cuda:0"), "bf16", tmp_path, tensorrt_problem=problem)
    assert [name for name, _ in chosen] == ORT_PROVIDERS[1:]


def test_onnxruntime_backend_hands_the_records_profile_and_versions_to_the_provider(tmp_path, monkeypatch):
    import onnxruntime as ort

    from deepsound_rt.backends import onnxruntime_backend

    rec = tiny_onnx(tmp_path / "g.onnx")
    asked = {}

    class Session:
        def __init__(self, path, options, providers, provider_options):
            asked.update(zip(providers, provider_options))

        def get_providers(self):
            return list(asked)

        def get_inputs(self):
            return [SimpleNamespace(name="x", type="tensor(float)")]

        def get_outputs(self):
            return [SimpleNamespace(name="y", type="tensor(float)")]

    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ORT_PROVIDERS)
    monkeypatch.setattr(onnxruntime_backend, "installed_tensorrt_version", lambda: "10.16.1")
    backend = OnnxRuntimeBackend(torch.device("cuda:0"), tensorrt_cache_dir=tmp_path / "cache", export_dtype="bf16")
    backend.load("g", tmp_path / "g.onnx", rec)
    options = asked["TensorrtExecutionProvider"]
    assert options["trt_profile_max_shapes"] == "x:4x4,tokens:4x77" and options["trt_bf16_enable"]
    monkeypatch.setattr(onnxruntime_backend, "installed_tensorrt_version", lambda: "11.1.0")
    monkeypatch.setattr(ort, "__version__", "1.26.0")
    asked.clear()
    with pytest.warns(UserWarning, match="1.27"):
        backend.load("g", tmp_path / "g.onnx", rec)
    assert list(asked) == ORT_PROVIDERS[1:]


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
        helper.make_node("NonZero", ["x"], ["where"]),
        helper.make_node("Add", ["sizes", "one"], ["sizes_plus_one"]),  # values of an input, one op away
        helper.make_node("Reshape", ["x", "sizes_plus_one"], ["reshaped"]),
        helper.make_node("Shape", ["sizes"], ["sizes_shape"]),
        helper.make_node("Reshape", ["x", "sizes_shape"], ["fine"]),  # only its shape: not a shape tensor
    ]
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                       helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
                       helper.make_tensor_value_info("d", TensorProto.DOUBLE, [2]),
                       helper.make_tensor_value_info("sizes", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [helper.make_tensor("fixed_axes", TensorProto.INT64, [1], [0]), helper.make_tensor("one", TensorProto.INT64, [], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert tensorrt_incompatibilities(model) == [
        "Unsqueeze with computed axes", "control flow If", "custom op com.example::Custom", "data-dependent shape (NonZero)",
        "float64 tensors (d)", "opset 21", "shape from the values of input sizes",
        "unsupported op SplitToSequence"]
    clean = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "ok", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]), opset_imports=[helper.make_opsetid("", 18)])
    assert tensorrt_incompatibilities(clean) == [] and onnx.checker.check_model(clean) is None


def test_the_gpu_extra_pins_the_versions_the_backend_is_written_for():
    """`pip install deepsound_rt[gpu]` must install a TensorRT whose major the backend takes and an
    onnxruntime-gpu whose TensorRT provider runs it (setup.py read as text: it is not importable)."""
    import ast
    import re

    from deepsound_rt.backends.onnxruntime_backend import TENSORRT_11_ONNXRUNTIME
    from deepsound_rt.backends.tensorrt_backend import TENSORRT_MAJORS

    setup = ast.parse((Path(__file__).parents[1] / "setup.py").read_text())
    extras = next(k.value for node in ast.walk(setup) if isinstance(node, ast.Call)
                  for k in node.keywords if k.arg == "extras_require")
    pins = dict(re.match(r"([\w-]+)(.*)", pin).groups() for pin in ast.literal_eval(extras)["gpu"])
    low, high = re.fullmatch(r">=(\d+)\.0,<(\d+)", pins["tensorrt"]).groups()
    assert tuple(range(int(low), int(high))) == TENSORRT_MAJORS
    assert pins["onnxruntime-gpu"].startswith(">=" + ".".join(map(str, TENSORRT_11_ONNXRUNTIME)) + ",")
