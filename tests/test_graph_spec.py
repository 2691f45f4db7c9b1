"""Registering a GraphSpec is all a new graph needs: a graph declared in this test alone is
exported, loaded on ONNX Runtime through the normal backend choice, and checked by the normal
verify path."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deepsound_rt.backends import GraphLoader
from deepsound_rt.export import ExportManifest, export_preset
from deepsound_rt.models import spec as spec_registry
from deepsound_rt.models.spec import AxisRange, GraphSpec, default_graphs, register_graph
from deepsound_rt.verify.export_parity import run_export_verify, verify_export
from deepsound_rt.weights_dir import WeightsSource

NAME = "test_scale_and_shift"


class ScaleAndShift(nn.Module):
    """y = x · scale + shift per column, with fixed weights (the same on every build)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
        self.shift = nn.Parameter(torch.tensor([1.0, 0.0, -3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


SPEC = GraphSpec(
    NAME, "test", ("x",), ("y",), build=lambda ctx: ScaleAndShift().eval(),
    sample_inputs=lambda ctx, sizes: {"x": torch.randn(sizes["rows"], 3, generator=ctx.rng())},
    dynamic_axes={"x": {0: "rows"}, "y": {0: "rows"}}, axes=lambda ctx: {"rows": AxisRange(1, 4, 32)},
    check_sizes=lambda ctx: {"rows": 7}, atol=1e-6, exported_with=frozenset())


@pytest.fixture
def registered():
    register_graph(SPEC)
    yield SPEC
    spec_registry._REGISTRY.pop(NAME)


def test_a_registered_spec_is_exported_loaded_and_verified(registered, tmp_path, capsys):
    assert NAME not in default_graphs(WeightsSource.TINY_RANDOM)  # exported on request only
    manifest = export_preset("dev", tmp_path / "export", graphs=[NAME])
    assert list(manifest.graphs) == [NAME] and manifest.graphs[NAME].family == "test"
    assert manifest.graphs[NAME].dynamic_axes == {"rows": AxisRange(1, 4, 32)}
    assert ExportManifest.load(tmp_path / "export").graphs[NAME].inputs[0].shape == ("rows", 3)

    graph = GraphLoader("auto", tmp_path / "export").load({NAME: ScaleAndShift()})[NAME]
    assert graph.backend == "onnxruntime"
    x = torch.randn(5, 3)
    torch.testing.assert_close(graph.run({"x": x})["y"], x * torch.tensor([0.5, -1.0, 2.0]) + torch.tensor([1.0, 0, -3]))

    (report,) = verify_export(tmp_path / "export")
    assert report.name == NAME and report.passed and report.shapes == {"y": (7, 3)}
    assert run_export_verify(tmp_path / "export") == 0
    assert "1/1 graphs match torch" in capsys.readouterr().out
