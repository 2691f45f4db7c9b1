"""Exported graphs for the separator and MLLM stages: what an export holds of a stage's graphs, on
the backend the Engine was asked for, checked against the stage's torch weights."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from . import available_backends, choose_backends, load_backend_graphs
from .base import Graph


def load_step_graphs(backend: str, export_dir: str | Path | None, modules: Mapping[str, nn.Module],
                     device: torch.device, dtype: torch.dtype, preset_name: str) -> dict[str, Graph]:
    """The graphs among ``modules`` (graph name -> the torch module it was exported from) that the
    export holds, loaded on ``backend`` (``auto``: per graph the best installed one).

    Empty for ``torch`` or without an export: the stage then runs its torch modules, as it does for
    any graph the export lacks (exports of full-size presets hold these graphs only when asked).
    An export made from other weights than ``modules`` is refused (``ExportError``).
    """
    from ..export.manifest import ExportError, ExportManifest, weights_fingerprint

    if export_dir is None or backend == "torch":
        return {}
    manifest = ExportManifest.load(export_dir)
    exported = [name for name in modules if name in manifest.graphs]
    if not exported:
        return {}
    choice = choose_backends(backend, available_backends(device), exported, manifest.graphs)
    for name in exported:
        if not weights_fingerprint(modules[name], exact=False).same_weights(manifest.graphs[name].weights):
            raise ExportError(f"export {export_dir} was made from other weights than those loaded (graph {name}): "
                              "re-export with the same preset and weights")
    return load_backend_graphs(choice, export_dir, None, device, dtype, preset_name, manifest.duration_s,
                               graph_names=exported)
