"""``deepsound-rt verify --export DIR [--backend onnxruntime|tensorrt]``: every exported graph on
ONNX Runtime (CPU) or TensorRT (CUDA) against the torch module it was exported from, on the same
inputs; max-abs error per graph, PASS or FAIL.

The torch modules are rebuilt from the manifest (preset, duration, weights source) and must have
exactly the exported weights (SHA-256), else the export is stale and refused. A typed (bf16/fp16)
graph is compared with the fp32 torch module and may be off by at most twice what the torch module
in that dtype is off (plus the fp32 tolerance): :data:`~deepsound_rt.export.typed.TYPED_PARITY_FACTOR`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from rich.console import Console
from rich.markup import escape

from ..config import PRESETS
from ..errors import DeepSoundError
from ..export.manifest import ENGINE_CACHE_DIR, ExportError, ExportManifest, GraphRecord, weights_fingerprint
from ..export.registry import GRAPH_SPECS, ExportContext, Outputs
from ..export.typed import TYPED_NAMES, typed_tolerance

VERIFY_BACKENDS = ("onnxruntime", "tensorrt")


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
    backend: str = "onnxruntime"
    typed_torch_error: float | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.max_abs <= self.atol


def verify_export(export_dir: str | Path, weights: str | Path | None = None,
                  graphs: Sequence[str] | None = None, backend: str = "onnxruntime") -> list[GraphParity]:
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
                        weights=None if weights_dir is None else Path(weights_dir),
                        random_weights=bool(source.get("random_weights")), dtype=manifest.precision)
    load = _loader(backend, export_dir, manifest)
    reports = []
    for name in names:
        if name not in GRAPH_SPECS:
            raise ExportError(f"export {export_dir} has graph '{name}', which this version does not know")
        spec, record = GRAPH_SPECS[name], manifest.graphs[name]
        module = ctx.module(spec)
        if weights_fingerprint(module).sha256 != record.weights.sha256:
            raise ExportError(f"graph {name} of export {export_dir} was exported from other weights than "
                              f"{weights_dir or 'the seeded random ones'} give now: the export is stale, re-export")
        graph = load(name, record)
        on_torch, on_graph = spec.parity_runs(ctx, graph)
        on_typed = spec.parity_runs(ctx, graph, typed=True)[0] if is_typed(record) else None
        reports.append(_compare(name, on_torch, on_graph, record.atol, record.rtol, backend, on_typed))
    return reports


def is_typed(record: GraphRecord) -> bool:
    """Whether the graph is a typed (bf16/fp16) one: the detector of a bf16 export stays fp32."""
    return any(spec.dtype in TYPED_NAMES for spec in (*record.inputs, *record.outputs))


def _loader(backend: str, export_dir: Path, manifest: ExportManifest):
    """(name, record) -> graph on ``backend``: ONNX Runtime on the CPU, TensorRT on the current GPU."""
    if backend == "tensorrt":
        from ..backends.tensorrt_backend import TensorRTBackend

        trt = TensorRTBackend(torch.device("cuda"), export_dir / ENGINE_CACHE_DIR, manifest.precision,
                              opset=manifest.opset)
        return lambda name, record: trt.load(name, export_dir, record)
    from ..backends.onnxruntime_backend import OnnxRuntimeBackend

    ort = OnnxRuntimeBackend(torch.device("cpu"), export_dtype=manifest.precision)
    return lambda name, record: ort.load(name, export_dir / record.onnx_file, record)


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


def print_parity(reports: Sequence[GraphParity], console: Console | None = None) -> None:
    console = console or Console(soft_wrap=True, highlight=False)
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


def run_export_verify(export_dir: str | Path, weights: str | Path | None = None, backend: str = "onnxruntime") -> int:
    """What the CLI runs: print every graph's result; 0 when all pass, 1 otherwise."""
    reports = verify_export(export_dir, weights, backend=backend)
    print_parity(reports)
    return 0 if reports and all(r.passed for r in reports) else 1
