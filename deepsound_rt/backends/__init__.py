"""Backends: one interface (load a graph, run it with named tensors) for each runtime, and the
choice of runtime per graph.

``torch`` runs the graph modules themselves; ``onnxruntime`` and ``tensorrt`` run an export
directory (``deepsound-rt export``), which was made for one preset at one duration. ``auto``
takes, per graph, the best backend that is installed and has the graph:
tensorrt > onnxruntime > torch, except that graphs whose spec says our fused kernels serve them
stay on torch where those kernels run, unless TensorRT is there. :class:`GraphLoader` is the one
loading path for every graph (generator, separator, MLLM, detector).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Mapping, Sequence

import torch
from torch import nn

from ..errors import DeepSoundError
from ..models.spec import graph_spec
from .base import Graph

if TYPE_CHECKING:
    from ..export.manifest import ExportManifest

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
        needs = "; it needs a CUDA GPU and pip install 'deepsound_rt[gpu]'" if requested == "tensorrt" else ""
        raise DeepSoundError(f"backend '{requested}' is not available here (available: {', '.join(available)}{needs})")
    if requested != "torch":
        missing = [name for name in graph_names if name not in exported]
        if missing and not exported:
            raise DeepSoundError(f"backend '{requested}' runs exported graphs: give the export directory that "
                                 "`deepsound-rt export` made (--export DIR)")
        if missing:
            raise DeepSoundError(f"backend '{requested}' runs exported graphs and the export lacks {missing}: "
                                 "export them with `deepsound-rt export`")
    return {name: requested for name in graph_names}


class GraphLoader:
    """Where an Engine's graphs run: the backend asked for, the export (if any), the device and
    dtype, the preset the export must be of, whether our kernels run in the torch modules, and how
    torch runs its graphs (``compile``, ``cuda_graphs``: see :class:`TorchBackend`).

    The export's manifest is read and checked once, on first use.
    """

    def __init__(self, backend: str = AUTO, export: str | Path | None = None, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32, preset: str = "dev", use_kernels: bool = False,
                 engine_cache_dir: str | Path | None = None, compile: str | None = None, cuda_graphs: bool = False):
        from .torch_backend import TorchBackend

        self.backend = backend
        self.export = None if export is None else Path(export)
        self.device, self.dtype, self.preset, self.use_kernels = device, dtype, preset, use_kernels
        self.engine_cache_dir = engine_cache_dir
        self.torch = TorchBackend(device, dtype, compile, cuda_graphs)

    @functools.cached_property
    def manifest(self) -> ExportManifest | None:
        from ..export.manifest import ExportManifest

        if self.export is None:
            return None
        manifest = ExportManifest.load(self.export)
        manifest.check_compatible(self.preset, manifest.duration_s, self.export)
        manifest.check_files(self.export)  # every graph, used or not (the detector too), before any work
        return manifest

    def choose(self, names: Sequence[str]) -> dict[str, str]:
        """graph -> backend for ``names``: see :func:`choose_backends`."""
        exported = self.manifest.graphs if self.manifest is not None else {}
        kernel_graphs = [name for name in names if self.use_kernels and graph_spec(name).kernels]
        return choose_backends(self.backend, available_backends(self.device), names, exported, kernel_graphs)

    def load(self, modules: Mapping[str, nn.Module], torch_fallback: bool = True) -> dict[str, Graph]:
        """Graphs for ``modules`` (graph name -> the torch module it is, or was exported from), each
        on its chosen backend. Those chosen for torch run their module, or, without
        ``torch_fallback``, are left out (the stage runs its own torch code for them) unless
        torch compiles them.

        Exported graphs must match their manifest hashes (every file of the export is checked
        when the manifest is first read) and the weights of their modules: exactly (the
        manifest's ``sha256``) where the modules hold float32 weights, as an fp32 export's do, else
        by structure and per-bucket norms (dtype casts allowed); each violation is an
        ``ExportError``. TensorRT engines are cached in ``engine_cache_dir`` (default:
        ``<export>/tensorrt``) and built at the export's precision (``deepsound-rt export
        --dtype``), whatever dtype the torch graphs run in.
        """
        from ..export.manifest import ENGINE_CACHE_DIR, ExportError, weights_fingerprint

        def on_torch(name: str) -> bool:
            return torch_fallback or self.torch.compiles(graph_spec(name))

        if not torch_fallback:  # what the export holds, and what torch compiles where torch may run
            held = self.manifest.graphs if self.manifest is not None else {}
            torch_allowed = self.backend in (AUTO, "torch")
            modules = {name: module for name, module in modules.items()
                       if name in held or (torch_allowed and on_torch(name))}
            if not modules:
                return {}
        choice = self.choose(list(modules))
        from_export = [name for name in modules if choice[name] != "torch"]
        graphs = {name: self.torch.load(graph_spec(name), module) for name, module in modules.items()
                  if choice[name] == "torch" and on_torch(name)}
        if not from_export:
            return graphs
        for name in from_export:
            recorded, exact = self.manifest.graphs[name].weights, _float32_weights(modules[name])
            found = weights_fingerprint(modules[name], exact=exact)
            if not found.same_weights(recorded) or (exact and found.sha256 != recorded.sha256):
                raise ExportError(f"export {self.export} was made from other weights than those loaded (graph {name}): "
                                  f"re-export with the same preset and weights")
        cache_dir = Path(self.engine_cache_dir) if self.engine_cache_dir is not None else self.export / ENGINE_CACHE_DIR
        loaders = _export_loaders(self.device, cache_dir, self.manifest)
        for name in from_export:
            graph = loaders[choice[name]](name, self.export, self.manifest.graphs[name])
            graph.manifest = self.manifest
            graphs[name] = graph
        return {name: graphs[name] for name in modules if name in graphs}


def _float32_weights(module: nn.Module) -> bool:
    """Whether every floating-point weight of ``module`` is float32: then its bytes are comparable
    with the exported module's."""
    tensors = [*module.parameters(), *module.buffers()]
    return all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())


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


def check_export_duration(graphs: Mapping[str, Graph], preset_name: str, duration_s: float,
                          video_s: float | None = None) -> None:
    """Refuse (``ExportError``) a run whose duration differs from the one exported graphs were
    made for; the Engine calls this once it knows the clip's real duration (and, when the clip
    ended with the video, the video's: ``video_s``)."""
    for graph in graphs.values():
        manifest: ExportManifest | None = getattr(graph, "manifest", None)
        if manifest is not None:
            manifest.check_compatible(preset_name, duration_s, video_s=video_s)
            return
