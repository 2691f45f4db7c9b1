"""Typed (bf16/fp16) exports: the torch bf16 path's types, fp32 islands included, and parity on ONNX
Runtime's CPU provider, which runs a typed graph as its float32 reference form (every op in float32
between roundings to the graph's 16-bit type).

The dev export here is the smallest that proves it, for a 2 s clip: the flow velocity (bf16 weights
and activations, fp32 ``t``/``cfg_strength``, the rotary table and timestep embedding as fp32
islands) and the detector, which stays fp32. Every other graph takes 15-20 s more to trace in bf16
(measured results for every dev graph: export/README.md).
"""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from deepsound_rt.backends.onnxruntime_backend import OnnxRuntimeBackend, float_compute_model
from deepsound_rt.cli import main
from deepsound_rt.config import PRESETS
from deepsound_rt.export import ExportManifest
from deepsound_rt.export.manifest import sequence_lengths_for
from deepsound_rt.export.onnx import trace_to_onnx
from deepsound_rt.models.spec import ExportContext, GraphSpec
from deepsound_rt.verify.export_parity import _compare, verify_export
from deepsound_rt.weights_dir import WeightsSource

TYPED_SUBSET = ["flow_velocity", "detector"]
DURATION_S = 2.0


@pytest.fixture(scope="module")
def bf16_export(tmp_path_factory) -> Path:
    """``deepsound-rt export --dtype bf16`` (its parity check is the test below)."""
    out = tmp_path_factory.mktemp("exports") / "dev_bf16"
    assert main(["export", "--preset", "dev", "--dtype", "bf16", "--duration", str(DURATION_S), "--graphs",
                 *TYPED_SUBSET, "--out", str(out), "--no-verify"]) == 0
    return out


def _types(path: Path) -> dict[str, int]:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    return types | {t.name: t.data_type for t in graph.initializer}


def test_a_bf16_export_has_the_torch_bf16_paths_types(bf16_export):
    manifest = ExportManifest.load(bf16_export)
    assert manifest.precision == "bf16" and list(manifest.graphs) == TYPED_SUBSET
    velocity = {spec.name: spec.dtype for spec in manifest.graphs["flow_velocity"].inputs}
    assert velocity.pop("t") == velocity.pop("cfg_strength") == "float32"  # kept fp32 by the spec
    assert set(velocity.values()) == {"bfloat16"}
    assert [o.dtype for o in manifest.graphs["flow_velocity"].outputs] == ["bfloat16"]
    assert {s.dtype for s in (*manifest.graphs["detector"].inputs, *manifest.graphs["detector"].outputs)} == {"float32"}
    # the fp32 islands: the rotary table, the timestep embedding's sin/cos, the RMS norms
    model = onnx.load(str(bf16_export / "flow_velocity.onnx"), load_external_data=False)
    types = _types(bf16_export / "flow_velocity.onnx")
    latent = manifest.sequence_lengths["latent"]
    rotary = [t.data_type for t in model.graph.initializer if len(t.dims) > 2 and t.dims[1] == latent and t.dims[-1] == 2]
    assert rotary and set(rotary) == {TensorProto.FLOAT}  # (1, latent, pairs, 2): the table, as the folder left it
    assert {types[n.input[0]] for n in model.graph.node if n.op_type in ("Sin", "Cos", "Sqrt")} == {TensorProto.FLOAT}
    weights = [t.data_type for t in model.graph.initializer if len(t.dims) == 2 and min(t.dims) > 1]
    assert weights and set(weights) == {TensorProto.BFLOAT16}


def test_a_bf16_export_matches_torch_on_onnxruntime(bf16_export):
    reports = verify_export(bf16_export)
    assert all(r.passed for r in reports), [(r.name, r.max_abs, r.atol, r.typed_torch_error, r.error) for r in reports]
    typed = {r.name for r in reports if r.typed_torch_error is not None}
    assert typed == set(TYPED_SUBSET) - {"detector"}


def test_verify_on_tensorrt_without_tensorrt_is_a_one_line_error(bf16_export, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    assert main(["verify", "--export", str(bf16_export), "--backend", "tensorrt"]) == 2
    error = capsys.readouterr().err.strip()
    assert "tensorrt" in error and "deepsound_rt[gpu]" in error and "\n" not in error


class TimeEmbedding(torch.nn.Module):
    """sin/cos of t·f for f up to 1000 then a linear layer: the angles need float32 (in bf16,
    t·1000 is off by up to 2), as MMAudio's timestep embedding does. ``island=False`` loses it."""

    def __init__(self, island: bool = True):
        super().__init__()
        self.island = island
        self.register_buffer("freqs", torch.logspace(0, 3, 16))
        self.proj = torch.nn.Linear(32, 8)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.island:  # as the models do: rebuilt in float32 after a cast, never rounded
            self.freqs = torch.logspace(0, 3, 16, device=self.freqs.device)
        return self

    def forward(self, t, x):
        angles = t.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        features = torch.cat([angles.cos(), angles.sin()], dim=-1).to(self.proj.weight.dtype)
        return self.proj(features) + x


def _context(dtype: torch.dtype) -> ExportContext:
    return ExportContext(PRESETS["dev"], DURATION_S, sequence_lengths_for("dev", DURATION_S), WeightsSource.TINY_RANDOM,
                         dtype=dtype)


class KeptAndLost(torch.nn.Module):
    """One embedding that keeps its island and one that loses it, on the same weights: one export
    (tracing is what costs) gives both graphs."""

    def __init__(self):
        super().__init__()
        self.keeps, self.lost = TimeEmbedding(), TimeEmbedding(island=False)
        self.lost.load_state_dict(self.keeps.state_dict())

    def forward(self, t, x):
        return self.keeps(t, x), self.lost(t, x)


def _spec(module: torch.nn.Module, outputs: tuple[str, ...] = ("y",)) -> GraphSpec:
    return GraphSpec("time_embedding", "test", ("t", "x"), outputs, build=lambda ctx: module,
                     sample_inputs=lambda ctx, sizes: {}, fp32_inputs=frozenset({"t"}))


def test_typed_parity_passes_a_graph_that_keeps_its_islands_and_fails_one_that_lost_them(tmp_path):
    torch.manual_seed(0)
    module = KeptAndLost().eval()
    inputs = {"t": torch.tensor([0.37, 0.81]), "x": torch.randn(2, 8)}
    ctx, spec = _context(torch.bfloat16), _spec(module, ("keeps", "lost"))
    typed = ctx.typed_module(spec)  # as the exporter does for bf16: the typed copy, typed inputs
    trace_to_onnx(spec, typed, spec.typed_inputs(ctx, inputs), {}, tmp_path / "typed.onnx")
    assert module.keeps.freqs.dtype is torch.float32 and module.keeps.proj.weight.dtype is torch.float32  # untouched
    assert typed.keeps.freqs.dtype is torch.float32 and typed.keeps.proj.weight.dtype is torch.bfloat16
    assert typed.lost.freqs.dtype is torch.bfloat16

    def run(m, feeds):
        def outputs():
            with torch.inference_mode():
                return {"y": m(feeds["t"], feeds["x"])}
        return outputs

    graph = OnnxRuntimeBackend().load("typed", tmp_path / "typed.onnx")
    assert graph.input_types == {"t": torch.float32, "x": torch.bfloat16}
    assert graph.output_types == {"keeps": torch.bfloat16, "lost": torch.bfloat16}
    got = graph.run(inputs)
    typed_feeds = {"t": inputs["t"], "x": inputs["x"].bfloat16()}
    reports = {name: _compare(name, run(module.keeps, inputs), lambda name=name: {"y": got[name]}, 1e-4, 1e-4,
                              "onnxruntime", on_typed=run(typed.keeps, typed_feeds))  # the torch bf16 path
               for name in ("keeps", "lost")}
    assert reports["keeps"].passed and not reports["lost"].passed
    assert reports["lost"].max_abs > 5 * reports["keeps"].max_abs


def test_the_float32_form_rounds_where_the_typed_graph_does(tmp_path):
    """y = bf16(sin(float(x) * 1000)) @ w, with w bf16: against the same steps written in torch."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x32", "k"], ["scaled"]), helper.make_node("Sin", ["scaled"], ["s"]),
         helper.make_node("Cast", ["s"], ["s16"], to=TensorProto.BFLOAT16),
         helper.make_node("MatMul", ["s16", "w"], ["y"])], "typed",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["n", 2])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [1000.0]),
         helper.make_tensor("w", TensorProto.BFLOAT16, [3, 2], [0.5, -1.25, 2.0, 0.75, -0.5, 1.5])])
    path = tmp_path / "typed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    computed = float_compute_model(path)
    assert {t.data_type for t in computed.graph.initializer} == {TensorProto.FLOAT}
    x = torch.rand(5, 3) * 4 - 2
    out = OnnxRuntimeBackend().load("typed", path).run({"x": x})["y"]
    w = torch.tensor([[0.5, -1.25], [2.0, 0.75], [-0.5, 1.5]], dtype=torch.float64)
    s = torch.sin(x.bfloat16().double() * 1000).float().bfloat16().double()
    expected = (s @ w).float().bfloat16()  # three exact products per output, one rounding
    assert out.dtype is torch.bfloat16 and torch.equal(out, expected)
    fp32 = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "fp32",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(fp32, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "fp32.onnx"))
    assert float_compute_model(tmp_path / "fp32.onnx") is None  # runs as it is


def test_typed_copies_are_made_once_and_share_what_the_originals_share():
    shared = torch.nn.Linear(2, 2)
    originals = {"a": torch.nn.Sequential(shared), "b": torch.nn.Sequential(shared, torch.nn.ReLU())}
    ctx = _context(torch.float16)
    a, b = (ctx.typed(key, lambda ctx, key=key: originals[key]) for key in ("a", "b"))
    assert a[0] is b[0] and a[0] is not shared and ctx.typed("a", None) is a
    assert a[0].weight.dtype is torch.float16 and shared.weight.dtype is torch.float32
    assert ctx.shared("a", None) is originals["a"]
    fp32 = _context(torch.float32)
    assert fp32.typed("a", lambda ctx: originals["a"]) is originals["a"]  # fp32: the module itself
    spec = _spec(torch.nn.Identity())
    fed = spec.typed_inputs(ctx, {"x": torch.ones(1), "t": torch.ones(1), "ids": torch.ones(1, dtype=torch.int64)})
    assert (fed["x"].dtype, fed["t"].dtype, fed["ids"].dtype) == (torch.float16, torch.float32, torch.int64)


def test_an_engine_loads_a_bf16_export_and_gets_bf16_from_it(bf16_export):
    """The Engine's path (fingerprint check against its fp32 modules, the export's precision handed
    to the backend): bf16 graphs give bf16 outputs whatever dtype the torch stages run in."""
    from deepsound_rt.backends import GraphLoader
    from deepsound_rt.models.graphs import FLOW_VELOCITY

    ctx = _context(torch.float32)
    graphs = GraphLoader("onnxruntime", bf16_export).load({"flow_velocity": ctx.module(FLOW_VELOCITY)})
    inputs = FLOW_VELOCITY.check_inputs(ctx)
    velocity = graphs["flow_velocity"].run(inputs)["velocity"]
    assert velocity.dtype is torch.bfloat16 and velocity.shape == inputs["x"].shape and velocity.isfinite().all()
