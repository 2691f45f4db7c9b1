"""``export_preset``: every graph of a preset at one duration to ONNX, plus the manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import onnx
import torch

from ..config import DEFAULT_DURATION_S, DTYPE_NAMES, PRESETS
from ..errors import WeightsError
from ..events import ProgressEvent
from ..models.spec import ExportContext, default_graphs, graph_specs
from ..options import resolve_weights_source
from ..weights_dir import DEV_SEED, WeightsSource, file_digest, find_weight_file
from .manifest import (ENGINE_CACHE_DIR, MANIFEST_NAME, ExportError, ExportManifest, GraphRecord, sequence_lengths_for,
                       weights_fingerprint)
from .onnx import OPSET, graph_files, tensor_specs, tensorrt_incompatibilities, trace_to_onnx

EXPORT_DTYPES = tuple(DTYPE_NAMES)  # fp32 (the default) first

_EXPORT_SUFFIXES = (".onnx", ".onnx.data", ".partial")


def export_preset(preset_name: str, out_dir: str | Path, weights: str | Path | None = None, dtype: str = "fp32",
                  duration_s: float = DEFAULT_DURATION_S, weights_source: WeightsSource | str = "auto",
                  progress: Callable[[ProgressEvent], None] | None = None,
                  graphs: Sequence[str] | None = None) -> ExportManifest:
    """Export ``graphs`` (default: those the specs export with this weights source: the generator's
    seven and the detector, and with tiny random weights also the separator's and the MLLM's four)
    of ``preset_name`` for clips of ``duration_s`` seconds into ``out_dir`` and return the manifest
    written there. ``weights_source`` as ``EngineConfig.weights_source`` (auto: the preset's own).

    ``dtype`` is the graphs' type, recorded as the manifest's ``precision``: ``fp32`` for ONNX
    Runtime on a CPU (and fp32/tf32 TensorRT engines); ``bf16``/``fp16`` give typed graphs for
    16-bit TensorRT engines (TensorRT 11 takes the precision from the graph alone), traced from
    copies of the modules cast as the Engine casts them (:meth:`ExportContext.typed`). Graphs that
    ship as ONNX (the detector) stay fp32. The duration's sequence lengths (rotary tables, the
    sync up-sampling map) are baked into the flow graphs; the encoders and decoders keep dynamic
    lengths up to the duration's.
    """
    report = progress or (lambda event: None)
    if preset_name not in PRESETS:
        raise ExportError(f"unknown preset '{preset_name}' (choose from {', '.join(sorted(PRESETS))})")
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"export dtype '{dtype}' is not offered (use {', '.join(EXPORT_DTYPES)})")
    preset = PRESETS[preset_name]
    source = resolve_weights_source(preset_name, weights_source)
    specs = graph_specs()
    names = list(default_graphs(source) if graphs is None else graphs)
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise ExportError(f"unknown graphs {unknown} (known: {', '.join(specs)})")
    lengths = sequence_lengths_for(preset_name, duration_s)
    ctx = ExportContext(preset, duration_s, lengths, source, weights=None if weights is None else Path(weights),
                        dtype=DTYPE_NAMES[dtype])
    recorded_source = _weights_source(ctx)  # before any work: a missing weight file fails fast
    out_dir = _prepare_out_dir(Path(out_dir))

    records: dict[str, GraphRecord] = {}
    for name in names:
        stage = f"export {name}"
        report(ProgressEvent(stage, 0, 1))
        spec = specs[name]
        path = out_dir / f"{name}.onnx"
        try:
            _write(spec, ctx, path)
        except WeightsError as exc:
            raise ExportError(str(exc)) from None
        model = onnx.load(str(path), load_external_data=False)
        inputs, outputs = tensor_specs(model)
        records[name] = GraphRecord(
            name=name, family=spec.family,
            files={file.name: file_digest(file) for file in graph_files(path)},
            inputs=inputs, outputs=outputs, dynamic_axes=spec.axes(ctx),
            weights=weights_fingerprint(ctx.module(spec)), atol=spec.atol, rtol=spec.rtol,
            tensorrt_incompatibilities=tensorrt_incompatibilities(model))
        report(ProgressEvent(stage, 1, 1))

    manifest = ExportManifest(
        preset=preset_name, duration_s=float(duration_s), sequence_lengths=lengths, precision=dtype, opset=OPSET,
        source=recorded_source, graphs=records,
        exporter={"torch": torch.__version__, "onnx": onnx.__version__, "method": "torch.onnx.export(dynamo=True)"})
    manifest.save(out_dir)
    return manifest


def _write(spec, ctx: ExportContext, path: Path) -> None:
    """Trace the spec's module in the export's dtype at the ``opt`` sizes, or write the ONNX the spec ships."""
    if spec.write_onnx is not None:
        spec.write_onnx(path)
        return
    inputs = spec.typed_inputs(ctx, spec.sample_inputs(ctx, spec.opt_sizes(ctx)))
    trace_to_onnx(spec, ctx.typed_module(spec), inputs, spec.axes(ctx), path)


def _weights_source(ctx: ExportContext) -> dict:
    """Where the weights came from: the seed of random ones, or each official file's SHA-256."""
    source = ctx.weights_source
    if source.random:
        return {"weights_source": source.value, "seed": DEV_SEED, "weights_dir": None, "files": {}}
    if not ctx.preset.files:
        raise ExportError(f"preset '{ctx.preset.name}' has no official weights (weights source "
                          f"{WeightsSource.TINY_RANDOM.value})")
    if ctx.weights is None:
        raise ExportError(f"preset '{ctx.preset.name}' needs --weights DIR (or --random-weights)")
    files = {}
    for spec in ctx.preset.files:
        path = find_weight_file(ctx.weights, spec)
        files[spec.role] = {"name": path.name, "sha256": file_digest(path), "bytes": path.stat().st_size}
    return {"weights_source": source.value, "seed": None, "weights_dir": str(ctx.weights.resolve()), "files": files}


def _prepare_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` or clear a previous export in it; never touch a folder of other files.

    The old manifest goes first, so an export interrupted from here on leaves a directory that
    every reader refuses. A TensorRT engine cache stays: its keys include the ONNX hashes.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"export target {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [p for p in out_dir.iterdir() if p.name not in (MANIFEST_NAME, ENGINE_CACHE_DIR)]
    foreign = [p.name for p in entries if not p.is_file() or not p.name.endswith(_EXPORT_SUFFIXES)]
    if foreign:
        raise ExportError(f"{out_dir} holds other files ({', '.join(sorted(foreign)[:3])}): "
                          "export into a new or empty directory")
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for entry in entries:
        entry.unlink()
    return out_dir
