"""Backends: one interface (load a graph, run it with named tensors) for each runtime, and the
choice of runtime per graph.

``torch`` runs the graph modules themselves; ``onnxruntime`` and ``tensorrt`` run an export
directory (``deepsound-rt export``), which was made for one preset at one duration. ``auto``
takes, per graph, the best backend that is installed and has the graph:
tensorrt > onnxruntime > torch, except that graphs where our fused kernels run on the device
(:data:`~deepsound_rt.models.graphs.KERNEL_GRAPHS`) stay on torch unless TensorRT is there.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Mapping, Sequence

import torch

from ..errors import DeepSoundError
from ..models.graphs import GENERATOR_GRAPHS, KERNEL_GRAPHS
from .base import Graph

if TYPE_CHECKING:
    from ..export.manifest import ExportManifest
    from ..models.loading import GeneratorModels

BACKENDS = ("tensorrt", "onnxruntime", "torch")  # best first
AUTO = "auto"


def available_backends(device: torch.device | None = None) -> list[str]:
    """Installed backends, best first; ``device`` (when given) drops those that cannot run on it."""
    names = []
    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        if device is None or device.type == "cuda":
            names.append("tensorrt")
    if importlib.util.find_spec("onnxruntime") is not None:
        names.append("onnxruntime")
    return names + ["torch"]


def choose_backends(requested: str | None, available: Sequence[str], graph_names: Sequence[str],
                    exported: Collection[str] = (), kernel_graphs: Collection[str] = ()) -> dict[str, str]:
    """graph -> backend. ``None``/``"auto"``: per graph the best available backend that can run
    it (ONNX Runtime and TensorRT only graphs in ``exported``); graphs in ``kernel_graphs`` (our
    kernels run in their torch form) skip ONNX Runtime, which runs their exported form slower.
    A named backend must be available and, unless it is torch, have every graph in the export."""
    requested = requested or AUTO
    if requested == AUTO:
        def usable(backend: str, name: str) -> bool:
            if backend == "torch":
                return True
            return name in exported and not (backend == "onnxruntime" and name in kernel_graphs)

        return {name: next(b for b in BACKENDS if b in available and usable(b, name)) for name in graph_names}
    if requested not in BACKENDS:
        raise DeepSoundError(f"unknown backend '{requested}' (use {AUTO}, {', '.join(BACKENDS)})")
    if requested not in available:
        raise DeepSoundError(f"backend '{requested}' is not available here (available: {', '.join(available)})")
    if requested != "torch":
        missing = [name for name in graph_names if name not in exported]
        if missing and not exported:
            raise DeepSoundError(f"backend '{requested}' runs exported graphs: give the export directory that "
                                 "`deepsound-rt export` made (--export DIR)")
        if missing:
            raise DeepSoundError(f"backend '{requested}' runs exported graphs and the export lacks {missing}: "
                                 "export them with `deepsound-rt export`")
    return {name: requested for name in graph_names}


def kernel_graphs_on(device: torch.device) -> tuple[str, ...]:
    """The graphs whose torch form runs our fused kernels on ``device`` (none when the kernels are
    not built for it or are switched off)."""
    from .. import kernels

    if kernels.runtime_path() == "torch" or kernels.default_path(device) == "torch":
        return ()
    return KERNEL_GRAPHS


def load_backend_graphs(backend: str | Mapping[str, str] | None, export_dir: str | Path | None,
                        models: GeneratorModels | None, device: torch.device, dtype: torch.dtype,
                        preset_name: str, duration_s: float, graph_names: Sequence[str] = GENERATOR_GRAPHS,
                        engine_cache_dir: str | Path | None = None, check_files: bool = True) -> dict[str, Graph]:
    """Load ``graph_names`` on the chosen backends (a name for all, or graph -> backend).

    With ``export_dir``, the export must be of ``preset_name`` at ``duration_s`` (same sequence
    lengths), its files must match their hashes (``check_files``), and, when ``models`` are given,
    its weights must be theirs (dtype casts allowed); each violation is an ``ExportError``.
    ``models`` may be ``None`` when no graph runs on torch. TensorRT engines are cached in
    ``engine_cache_dir`` (default: ``<export_dir>/tensorrt``) and built at the export's precision
    (``deepsound-rt export --dtype``), whatever ``dtype`` the torch graphs run in.
    """
    from ..export.manifest import ENGINE_CACHE_DIR, ExportError, ExportManifest, weights_fingerprint
    from .torch_backend import TorchBackend

    manifest: ExportManifest | None = None
    if export_dir is not None:
        export_dir = Path(export_dir)
        manifest = ExportManifest.load(export_dir)
        manifest.check_compatible(preset_name, duration_s, export_dir)
    exported = manifest.graphs if manifest is not None else {}
    choice = dict(backend) if isinstance(backend, Mapping) else choose_backends(
        backend, available_backends(device), graph_names, exported, kernel_graphs_on(device))
    on_torch = [name for name in graph_names if choice[name] == "torch"]
    from_export = [name for name in graph_names if choice[name] != "torch"]
    modules = models.graph_modules() if models is not None else {}
    if from_export:
        if manifest is None:
            raise DeepSoundError(f"graphs {from_export} need an export directory for {choice[from_export[0]]}")
        if check_files:
            manifest.check_files(export_dir, from_export)
        for name in from_export:
            if name in modules and not weights_fingerprint(modules[name], exact=False).same_weights(
                    manifest.graphs[name].weights):
                raise ExportError(f"export {export_dir} was made from other weights than those loaded (graph {name}): "
                                  f"re-export with the same preset and weights")

    graphs: dict[str, Graph] = {}
    torch_backend = TorchBackend(device, dtype)
    for name in on_torch:
        graphs[name] = torch_backend.load(name, _torch_module(name, modules, device))
    if from_export:
        cache_dir = Path(engine_cache_dir) if engine_cache_dir is not None else export_dir / ENGINE_CACHE_DIR
        loaders = _export_loaders(device, cache_dir, manifest)
        for name in from_export:
            record = manifest.graphs[name]
            graph = loaders[choice[name]](name, export_dir, record)
            graph.manifest = manifest
            graphs[name] = graph
    return graphs


def _torch_module(name: str, generator_modules: Mapping[str, torch.nn.Module], device: torch.device) -> torch.nn.Module:
    """The module the torch backend runs for ``name``: the detector comes from its package, the
    rest from the loaded generator models."""
    if name == "detector":
        from ..export.detector import load_detector_module

        return load_detector_module().to(device)
    if name not in generator_modules:
        raise DeepSoundError(f"graph {name} runs on torch, which needs the loaded models")
    return generator_modules[name]


def _export_loaders(device: torch.device, cache_dir: Path, manifest: ExportManifest) -> dict:
    """backend name -> (name, export_dir, record) -> graph; each runtime imported only when used."""

    def onnxruntime(name, export_dir, record):
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(device, tensorrt_cache_dir=cache_dir / "onnxruntime",
                                  export_dtype=manifest.precision).load(name, export_dir / record.onnx_file, record)

    def tensorrt(name, export_dir, record):
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(device, cache_dir, manifest.precision, opset=manifest.opset).load(
            name, export_dir, record)

    return {"onnxruntime": onnxruntime, "tensorrt": tensorrt}


def check_export_duration(graphs: Mapping[str, Graph], preset_name: str, duration_s: float) -> None:
    """Refuse (``ExportError``) a run whose duration differs from the one exported graphs were
    made for; the Engine calls this once it knows the clip's real duration."""
    for graph in graphs.values():
        manifest: ExportManifest | None = getattr(graph, "manifest", None)
        if manifest is not None:
            manifest.check_compatible(preset_name, duration_s)
            return
