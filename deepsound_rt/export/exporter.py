"""``export_preset``: every graph of a preset at one duration to ONNX, plus the manifest."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator, Sequence

import onnx
import torch

from ..config import DEFAULT_DURATION_S, DTYPE_NAMES, PRESETS
from ..errors import WeightsError
from ..events import ProgressEvent
from ..models.spec import ExportContext, default_graphs, graph_specs
from ..options import resolve_weights_source
from ..weights_dir import DEV_SEED, WeightsSource, file_digest, find_weight_file
from .manifest import (ENGINE_CACHE_DIR, FORMAT_PREFIX, MANIFEST_NAME, ExportError, ExportManifest, GraphRecord,
                       sequence_lengths_for, weights_fingerprint)
from .onnx import OPSET, graph_files, tensor_specs, tensorrt_incompatibilities, trace_to_onnx

EXPORT_DTYPES = tuple(DTYPE_NAMES)  # fp32 (the default) first
log = logging.getLogger(__name__)


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
    with _staged_export(Path(out_dir)) as out_dir:  # written beside the target, swapped in when complete
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
        if ctx.weights is not None:
            log.warning("ignored: --weights: weights source %s builds random networks and reads no weight file",
                        source.value)
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


@contextlib.contextmanager
def _staged_export(target: Path) -> Iterator[Path]:
    """A new hidden folder beside ``target`` to export into; on success it replaces ``target``.

    ``target`` must be new, empty, or hold only an export of ours (its manifest, the files that
    manifest names and the TensorRT engine cache); anything else is refused and left untouched.
    An export that fails or is interrupted removes its folder and leaves the old export as it
    was. The swap is two renames (old aside, new in place); then the engine cache (its keys
    include the ONNX hashes, so stale engines are never used) moves into the new export and only
    the files the old manifest names are deleted.
    """
    previous = _previous_export_files(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.export-{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if previous is None:
        os.rename(staging, target)
        return
    retired = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    os.rename(target, retired)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(retired, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if (retired / ENGINE_CACHE_DIR).is_dir():
        os.rename(retired / ENGINE_CACHE_DIR, target / ENGINE_CACHE_DIR)
    for name in previous:
        (retired / name).unlink(missing_ok=True)
    try:
        retired.rmdir()
    except OSError:  # something appeared in the old export while we wrote: keep it, say where
        log.warning("the previous export was kept in %s: it holds files its manifest does not name", retired)


def _previous_export_files(target: Path) -> list[str] | None:
    """What ``target`` holds that an export may replace: None when it does not exist, else the
    old manifest and the files it names (empty for an empty folder). A folder holding anything
    else, or a manifest that is not ours, is an ExportError and stays as it is."""
    if target.is_symlink():
        raise ExportError(f"export target {target} is a symbolic link: give the directory itself")
    if not target.exists():
        return None
    if not target.is_dir():
        raise ExportError(f"export target {target} exists and is not a directory")
    entries = {entry.name for entry in target.iterdir()}
    named = _names_in_our_manifest(target) if MANIFEST_NAME in entries else set()
    foreign = sorted(entries - named - {MANIFEST_NAME, ENGINE_CACHE_DIR})
    if foreign:
        raise ExportError(f"{target} holds files that are not part of a deepsound-rt export "
                          f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): "
                          "export into a new or empty directory")
    if ENGINE_CACHE_DIR in entries and not (target / ENGINE_CACHE_DIR).is_dir():
        raise ExportError(f"{target / ENGINE_CACHE_DIR} is not an engine cache directory: export elsewhere")
    return sorted(entries & (named | {MANIFEST_NAME}))


def _names_in_our_manifest(target: Path) -> set[str]:
    """The file names a manifest written by deepsound-rt (any format version) names; ExportError
    when ``manifest.json`` is not recognisably ours, so that nothing beside it is touched."""
    path = target / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
        if not str(data.get("format", "")).startswith(FORMAT_PREFIX):
            raise ValueError("format")
        names = {name for record in data["graphs"].values() for name in record["files"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ExportError(f"{path} is not the manifest of a deepsound-rt export: "
                          "export into a new or empty directory") from None
    if not all(isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..") for name in names):
        raise ExportError(f"{path} names files outside its own directory: not touched; export elsewhere")
    return names
