"""``export_preset``: every graph of a preset at one duration to ONNX, plus the manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import onnx
import torch

from ..config import PRESETS
from ..models.loading import DEV_SEED
from ..progress import ProgressEvent
from ..weights_dir import find_weight_file
from .manifest import ENGINE_CACHE_DIR, MANIFEST_NAME, ExportError, ExportManifest, GraphRecord, sequence_lengths_for, sha256_file, \
    weights_fingerprint
from .onnx import OPSET, graph_files, tensor_specs, tensorrt_incompatibilities
from .registry import GRAPH_SPECS, ExportContext, default_graphs
from .typed import EXPORT_DTYPES

_EXPORT_SUFFIXES = (".onnx", ".onnx.data", ".partial")


def export_preset(preset_name: str, out_dir: str | Path, weights: str | Path | None = None, dtype: str = "fp32",
                  duration_s: float = 8.0, random_weights: bool = False,
                  progress: Callable[[ProgressEvent], None] | None = None,
                  graphs: Sequence[str] | None = None) -> ExportManifest:
    """Export ``graphs`` (default: the generator's seven and the detector, and for dev also the
    separator's and the MLLM's four) of ``preset_name`` for clips of ``duration_s`` seconds into
    ``out_dir`` and return the manifest written there.

    ``dtype`` is the graphs' type: ``fp32`` for ONNX Runtime on a CPU (and fp32/tf32 TensorRT
    engines), ``bf16``/``fp16`` for 16-bit TensorRT engines (TensorRT 11 takes the precision from
    the graph; see :mod:`.typed`). The detector ships as fp32 and stays so. The duration's sequence lengths
    (rotary tables, the sync up-sampling map) are baked into the flow graphs; the encoders and
    decoders keep dynamic lengths up to the duration's.
    """
    report = progress or (lambda event: None)
    if preset_name not in PRESETS:
        raise ExportError(f"unknown preset '{preset_name}' (choose from {', '.join(sorted(PRESETS))})")
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"export dtype '{dtype}' is not offered (use {', '.join(EXPORT_DTYPES)})")
    preset = PRESETS[preset_name]
    names = list(default_graphs(preset) if graphs is None else graphs)
    unknown = [name for name in names if name not in GRAPH_SPECS]
    if unknown:
        raise ExportError(f"unknown graphs {unknown} (known: {', '.join(GRAPH_SPECS)})")
    lengths = sequence_lengths_for(preset_name, duration_s)
    random = preset.random_weights or random_weights
    ctx = ExportContext(preset, duration_s, lengths, weights=None if weights is None else Path(weights),
                        random_weights=random_weights, dtype=dtype)
    source = _weights_source(ctx, random)  # before any work: a missing weight file fails fast
    out_dir = _prepare_out_dir(Path(out_dir))

    records: dict[str, GraphRecord] = {}
    for name in names:
        stage = f"export {name}"
        report(ProgressEvent(stage, 0, 1))
        spec = GRAPH_SPECS[name]
        path = out_dir / f"{name}.onnx"
        spec.export(ctx, path)
        model = onnx.load(str(path), load_external_data=False)
        inputs, outputs = tensor_specs(model)
        records[name] = GraphRecord(
            name=name, family=spec.family,
            files={file.name: sha256_file(file) for file in graph_files(path)},
            inputs=inputs, outputs=outputs, dynamic_axes=spec.axes(ctx),
            weights=weights_fingerprint(ctx.module(spec)), atol=spec.atol, rtol=spec.rtol,
            tensorrt_incompatibilities=tensorrt_incompatibilities(model))
        report(ProgressEvent(stage, 1, 1))

    manifest = ExportManifest(
        preset=preset_name, duration_s=float(duration_s), sequence_lengths=lengths, precision=dtype, opset=OPSET,
        source=source, graphs=records,
        exporter={"torch": torch.__version__, "onnx": onnx.__version__, "method": "torch.onnx.export(dynamo=True)"})
    manifest.save(out_dir)
    return manifest


def _weights_source(ctx: ExportContext, random: bool) -> dict:
    """Where the weights came from: the seed of random ones, or each official file's SHA-256."""
    if random:
        return {"random_weights": True, "seed": DEV_SEED, "weights_dir": None, "files": {}}
    if ctx.weights is None:
        raise ExportError(f"preset '{ctx.preset.name}' needs --weights DIR (or --random-weights)")
    files = {}
    for spec in ctx.preset.files:
        path = find_weight_file(ctx.weights, spec)
        files[spec.role] = {"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    return {"random_weights": False, "seed": None, "weights_dir": str(ctx.weights.resolve()), "files": files}


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
