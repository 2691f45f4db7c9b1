"""Typed exports (``deepsound-rt export --dtype bf16|fp16``): graphs whose weights and activations
are in that type, for TensorRT 11, which takes its precision from the network's types alone.

A typed graph is traced from the torch modules cast as the Engine casts them (``module.to(dtype)``),
so its fp32 islands are exactly the torch bf16 path's: the models keep their rotary tables, timestep
frequencies and the VAE's and separator's norms in float32 whatever their dtype, and the export
reproduces the casts around them. Inputs a graph's signature keeps in float32 (``t``,
``cfg_strength``) stay float32; integer inputs keep their type.

Everything here works on modules and inputs only, so that any registry can use it: cast a family's
modules with :func:`typed_modules`, a graph's inputs with :func:`typed_inputs`, and check the
graph with :func:`typed_tolerance`.
"""
from __future__ import annotations

import copy
from typing import Collection, Mapping

import torch
from torch import nn

EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TYPED_NAMES = frozenset({"bfloat16", "float16"})  # the manifest's element type names of typed tensors
TYPED_PARITY_FACTOR = 2.0
"""A typed graph passes when its error against the fp32 torch module is at most this many times the
torch module's own error in that dtype (plus the fp32 tolerance): it may round elsewhere than torch
does, but must not be less accurate than the torch path it reproduces. On every dev graph the ratio
is 0.76-1.35 in bf16 and fp16 (export/README.md)."""


def typed_modules(modules: Mapping[str, nn.Module], dtype: str) -> dict[str, nn.Module]:
    """Copies of one family's modules in ``dtype``, copied together so that submodules the graphs
    share (one CLIP for the image and text graphs) stay shared; the originals are untouched."""
    copies = copy.deepcopy(dict(modules))
    for module in copies.values():
        module.to(EXPORT_DTYPES[dtype])
    return copies


def typed_inputs(inputs: Mapping[str, torch.Tensor], dtype: str, fp32_inputs: Collection[str]) -> dict[str, torch.Tensor]:
    """``inputs`` as the torch backend feeds a module of ``dtype``: floating inputs in ``dtype``,
    except ``fp32_inputs``; integer inputs as they are."""
    target = EXPORT_DTYPES[dtype]
    return {name: value.to(target) if value.is_floating_point() and name not in fp32_inputs else value
            for name, value in inputs.items()}


def typed_tolerance(torch_error: float, fp32_tolerance: float) -> float:
    """How far a typed graph may be from the fp32 torch result (see :data:`TYPED_PARITY_FACTOR`)."""
    return TYPED_PARITY_FACTOR * torch_error + fp32_tolerance
