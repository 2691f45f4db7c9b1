"""``deepsound-rt verify --export DIR``: every exported graph on ONNX Runtime against the torch
module it was exported from, on the same inputs; max-abs error per graph, PASS or FAIL.

The torch modules are rebuilt from the manifest (preset, duration, weights source) and must have
exactly the exported weights (SHA-256), else the export is stale and refused.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..backends import GraphLoader
from ..config import PRESETS
from ..console import escape, report_console
from ..export.manifest import ExportError, ExportManifest, weights_fingerprint
from ..models.spec import ExportContext, Outputs, graph_specs
from ..weights_dir import WeightsSource


@dataclass
class GraphParity:
    """ORT vs torch for one graph: the worst output's max-abs error against its tolerance."""

    name: str
    max_abs: float
    atol: float
    outputs: dict[str, float] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    torch_s: float = 0.0
    onnxruntime_s: float = 0.0
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.max_abs <= self.atol


def verify_export(export_dir: str | Path, weights: str | Path | None = None,
                  graphs: Sequence[str] | None = None) -> list[GraphParity]:
    """Check ``graphs`` (default: all in the manifest) of the export in ``export_dir``.

    ``weights`` overrides the weights directory the manifest records (official-weight exports).
    Raises ``ExportError`` for a missing, corrupt or stale export; a graph that runs but differs
    beyond tolerance is a failed report, not an exception.
    """
    export_dir = Path(export_dir)
    manifest = ExportManifest.load(export_dir)
    names = list(manifest.graphs if graphs is None else graphs)
    manifest.check_files(export_dir, names)
    source = manifest.source
    weights_dir = weights if weights is not None else source.get("weights_dir")
    ctx = ExportContext(PRESETS[manifest.preset], manifest.duration_s, manifest.sequence_lengths,
                        WeightsSource(source["weights_source"]),
                        weights=None if weights_dir is None else Path(weights_dir))
    loader = GraphLoader("onnxruntime", export_dir, torch.device("cpu"), torch.float32, manifest.preset)
    specs = graph_specs()
    reports = []
    for name in names:
        if name not in specs:
            raise ExportError(f"export {export_dir} has graph '{name}', which this version does not know")
        spec, record = specs[name], manifest.graphs[name]
        module = ctx.module(spec)
        if weights_fingerprint(module).sha256 != record.weights.sha256:
            raise ExportError(f"graph {name} of export {export_dir} was exported from other weights than "
                              f"{weights_dir or 'the seeded random ones'} give now: the export is stale, re-export")
        graph = loader.load({name: module})[name]
        reports.append(_compare(name, *spec.parity_runs(ctx, graph), record.atol, record.rtol))
    return reports


def _compare(name: str, on_torch: Outputs, on_graph: Outputs, atol: float, rtol: float) -> GraphParity:
    """Run both sides and compare every output the torch side gives."""
    try:
        started = time.perf_counter()
        expected = on_torch()
        torch_s = time.perf_counter() - started
        started = time.perf_counter()
        got = on_graph()
        ort_s = time.perf_counter() - started
    except Exception as exc:  # report and go on with the other graphs
        return GraphParity(name, float("inf"), atol, error=f"{type(exc).__name__}: {exc}")
    errors, tolerances, shapes = {}, {}, {}
    for output, reference in expected.items():
        value = got.get(output)
        shapes[output] = tuple(reference.shape)
        reference = reference.double()
        tolerances[output] = atol + rtol * (float(reference.abs().max()) if reference.numel() else 0.0)
        if value is None or tuple(value.shape) != tuple(reference.shape):
            errors[output] = float("inf")
        else:
            errors[output] = float((value.double() - reference).abs().max()) if reference.numel() else 0.0
    worst = max(errors, key=lambda o: errors[o] / tolerances[o])
    return GraphParity(name, errors[worst], tolerances[worst], errors, shapes, torch_s, ort_s)


def print_parity(reports: Sequence[GraphParity]) -> None:
    console = report_console()
    for report in reports:
        verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
        if report.error:
            console.print(f"{verdict} graph {report.name}: {report.error}")
            continue
        shapes = escape(", ".join(f"{n} {tuple(s)}" for n, s in report.shapes.items()))
        console.print(f"{verdict} graph {report.name:<16} max-abs {report.max_abs:9.3g}  (tol {report.atol:.3g})  "
                      f"torch {report.torch_s * 1e3:7.1f} ms  onnxruntime {report.onnxruntime_s * 1e3:7.1f} ms  "
                      f"\\[{shapes}]")
    passed = sum(r.passed for r in reports)
    console.print(f"{passed}/{len(reports)} graphs match torch")


def run_export_verify(export_dir: str | Path, weights: str | Path | None = None) -> int:
    """What the CLI runs: print every graph's result; 0 when all pass, 1 otherwise."""
    reports = verify_export(export_dir, weights)
    print_parity(reports)
    return 0 if reports and all(r.passed for r in reports) else 1
