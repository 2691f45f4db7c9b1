"""``deepsound-rt verify --export DIR [--backend onnxruntime|tensorrt]``: every exported graph on
ONNX Runtime (CPU) or TensorRT (CUDA) against the torch module it was exported from, on the same
inputs; max-abs error per graph, PASS or FAIL.

The torch modules are rebuilt from the manifest (preset, duration, weights source) and must have
exactly the exported weights (SHA-256), else the export is stale and refused. A typed (bf16/fp16)
graph is compared with the fp32 torch module and may be off by at most twice what the torch module
in that dtype is off (plus the fp32 tolerance): :data:`TYPED_PARITY_FACTOR`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..backends import GraphLoader
from ..config import DTYPE_NAMES, PRESETS
from ..console import escape, report_console
from ..errors import DeepSoundError
from ..export.manifest import ExportError, ExportManifest, GraphRecord, weights_fingerprint
from ..models.spec import ExportContext, Outputs, graph_specs
from ..weights_dir import WeightsSource

VERIFY_DEVICES = {"onnxruntime": "cpu", "tensorrt": "cuda"}
"""The backends ``verify --export`` runs graphs on (the first is the default) and where: ONNX
Runtime on the CPU, TensorRT on the current GPU."""
VERIFY_BACKENDS = tuple(VERIFY_DEVICES)
TYPED_ELEMENT_TYPES = frozenset({"bfloat16", "float16"})  # as the manifest names a typed graph's tensors
TYPED_PARITY_FACTOR = 2.0
"""A typed graph passes when its error against the fp32 torch module is at most this many times the
torch module's own error in that dtype (plus the fp32 tolerance): it may round elsewhere than torch
does, but must not be less accurate than the torch path it reproduces. On every dev graph the ratio
is 0.76-1.35 in bf16 and fp16 (export/README.md)."""


@dataclass
class GraphParity:
    """Graph vs torch for one graph: the worst output's max-abs error against its tolerance, and
    for a typed graph the torch module's own error in that dtype (what the tolerance comes from)."""

    name: str
    max_abs: float
    atol: float
    outputs: dict[str, float] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    torch_s: float = 0.0
    graph_s: float = 0.0
    error: str | None = None
    backend: str = VERIFY_BACKENDS[0]
    typed_torch_error: float | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.max_abs <= self.atol


def verify_export(export_dir: str | Path, weights: str | Path | None = None,
                  graphs: Sequence[str] | None = None, backend: str = VERIFY_BACKENDS[0]) -> list[GraphParity]:
    """Check ``graphs`` (default: all in the manifest) of the export in ``export_dir`` on ``backend``.

    ``weights`` overrides the weights directory the manifest records (official-weight exports).
    Raises ``ExportError`` for a missing, corrupt or stale export; a graph that runs but differs
    beyond tolerance is a failed report, not an exception.
    """
    if backend not in VERIFY_BACKENDS:
        raise DeepSoundError(f"verify runs exports on {' or '.join(VERIFY_BACKENDS)}, not '{backend}'")
    export_dir = Path(export_dir)
    manifest = ExportManifest.load(export_dir)
    names = list(manifest.graphs if graphs is None else graphs)
    manifest.check_files(export_dir, names)
    source = manifest.source
    weights_dir = weights if weights is not None else source.get("weights_dir")
    ctx = ExportContext(PRESETS[manifest.preset], manifest.duration_s, manifest.sequence_lengths,
                        WeightsSource(source["weights_source"]),
                        weights=None if weights_dir is None else Path(weights_dir), dtype=_export_dtype(manifest))
    loader = GraphLoader(backend, export_dir, torch.device(VERIFY_DEVICES[backend]), torch.float32, manifest.preset)
    loader.choose(names)  # a backend that cannot run here fails before any module is built
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
        on_torch, on_graph = spec.parity_runs(ctx, graph)
        on_typed = spec.parity_runs(ctx, graph, typed=True)[0] if is_typed(record) else None
        reports.append(_compare(name, on_torch, on_graph, record.atol, record.rtol, backend, on_typed))
    return reports


def is_typed(record: GraphRecord) -> bool:
    """Whether the graph is a typed (bf16/fp16) one: the detector of a bf16 export stays fp32."""
    return any(spec.dtype in TYPED_ELEMENT_TYPES for spec in (*record.inputs, *record.outputs))


def _export_dtype(manifest: ExportManifest) -> torch.dtype:
    if manifest.precision not in DTYPE_NAMES:
        raise ExportError(f"the export's precision '{manifest.precision}' is unknown to this version: re-export")
    return DTYPE_NAMES[manifest.precision]


def typed_tolerance(torch_error: float, fp32_tolerance: float) -> float:
    """How far a typed graph may be from the fp32 torch result (see :data:`TYPED_PARITY_FACTOR`)."""
    return TYPED_PARITY_FACTOR * torch_error + fp32_tolerance


def _compare(name: str, on_torch: Outputs, on_graph: Outputs, atol: float, rtol: float, backend: str,
             on_typed: Outputs | None = None) -> GraphParity:
    """Run the sides and compare every output the torch side gives; with ``on_typed`` (the torch
    module in the graph's dtype) each output's tolerance grows by :func:`typed_tolerance`."""
    try:
        started = time.perf_counter()
        expected = on_torch()
        torch_s = time.perf_counter() - started
        typed = on_typed() if on_typed is not None else {}
        started = time.perf_counter()
        got = on_graph()
        graph_s = time.perf_counter() - started
    except Exception as exc:  # report and go on with the other graphs
        return GraphParity(name, float("inf"), atol, error=f"{type(exc).__name__}: {exc}", backend=backend)
    errors, tolerances, shapes, torch_errors = {}, {}, {}, {}
    for output, reference in expected.items():
        value = got.get(output)
        shapes[output] = tuple(reference.shape)
        reference = reference.double()
        tolerances[output] = atol + rtol * (float(reference.abs().max()) if reference.numel() else 0.0)
        if output in typed:
            torch_errors[output] = _max_abs(typed[output], reference)
            tolerances[output] = typed_tolerance(torch_errors[output], tolerances[output])
        errors[output] = _max_abs(value, reference) if value is not None and tuple(value.shape) == shapes[output] \
            else float("inf")
    worst = max(errors, key=lambda o: errors[o] / tolerances[o])
    return GraphParity(name, errors[worst], tolerances[worst], errors, shapes, torch_s, graph_s, backend=backend,
                       typed_torch_error=torch_errors.get(worst))


def _max_abs(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.detach().cpu().double() - reference).abs().max()) if reference.numel() else 0.0


def print_parity(reports: Sequence[GraphParity]) -> None:
    console = report_console()
    for report in reports:
        verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
        if report.error:
            console.print(f"{verdict} graph {report.name}: {report.error}")
            continue
        shapes = escape(", ".join(f"{n} {tuple(s)}" for n, s in report.shapes.items()))
        typed = "" if report.typed_torch_error is None else f", torch in its dtype {report.typed_torch_error:.3g}"
        console.print(f"{verdict} graph {report.name:<16} max-abs {report.max_abs:9.3g}  (tol {report.atol:.3g}{typed})  "
                      f"torch {report.torch_s * 1e3:7.1f} ms  {report.backend} {report.graph_s * 1e3:7.1f} ms  "
                      f"\\[{shapes}]")
    passed = sum(r.passed for r in reports)
    console.print(f"{passed}/{len(reports)} graphs match torch")


def run_export_verify(export_dir: str | Path, weights: str | Path | None = None,
                      backend: str = VERIFY_BACKENDS[0]) -> int:
    """What the CLI runs: print every graph's result; 0 when all pass, 1 otherwise."""
    reports = verify_export(export_dir, weights, backend=backend)
    print_parity(reports)
    return 0 if reports and all(r.passed for r in reports) else 1
