"""The separator's core as a graph (BS-RoFormer between its STFT and iSTFT), with its spec.

The STFT, iSTFT and overlap-add stay in the separation stage: TensorRT has no STFT operator.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import WeightsError
from ..weights_dir import WeightsSource, find_weight_file
from .bs_roformer import SEPARATOR_FILE, VIPERX_BATCH_SIZE, VIPERX_CHUNK_SIZE, BSRoformer, separator_network
from .spec import AxisRange, ExportContext, GraphSpec, register_graph

SEPARATOR_CORE = "separator_core"


class SeparatorCoreGraph(nn.Module):
    """BS-RoFormer between its STFT and iSTFT (:meth:`BSRoformer.separate_spectrum`):
    (chunks, channels, bins, frames, [re, im]) mix -> (chunks, stems, channels, bins, frames, [re, im])."""

    def __init__(self, separator: BSRoformer):
        super().__init__()
        self.separator = separator

    def forward(self, mix_spectrum: torch.Tensor) -> torch.Tensor:
        return self.separator.separate_spectrum(mix_spectrum)


def _build(ctx: ExportContext) -> nn.Module:
    """From the weights source: seeded random at the source's size, or the checkpoint in the weights directory."""
    path = None
    if ctx.weights_source is WeightsSource.OFFICIAL:
        if ctx.weights is None:
            raise WeightsError("the separator graph needs --weights DIR holding the BS-RoFormer checkpoint")
        path = find_weight_file(ctx.weights, SEPARATOR_FILE)
    return SeparatorCoreGraph(separator_network(ctx.weights_source, path)).eval()


def _axes(ctx: ExportContext) -> dict[str, AxisRange]:
    """Chunks up to demix's batch; frames up to one demix chunk's (what every call has), so
    TensorRT optimises for exactly that while ``verify`` may check fewer."""
    frames = VIPERX_CHUNK_SIZE // ctx.module(SEPARATOR_CORE_SPEC).separator.config.stft_hop_length + 1
    return {"chunks": AxisRange(1, VIPERX_BATCH_SIZE, VIPERX_BATCH_SIZE), "frames": AxisRange(1, frames, frames)}


def _inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """STFT-scale values (a chunk of audio in [-1, 1] gives bins of magnitude up to ~100)."""
    config = ctx.module(SEPARATOR_CORE_SPEC).separator.config
    shape = (sizes["chunks"], config.audio_channels, config.stft_n_fft // 2 + 1, sizes["frames"], 2)
    return {"mix_spectrum": 10 * torch.randn(shape, generator=ctx.rng())}


SEPARATOR_CORE_SPEC = register_graph(GraphSpec(
    SEPARATOR_CORE, "separator", ("mix_spectrum",), ("stem_spectrum",), _build, _inputs,
    dynamic_axes={"mix_spectrum": {0: "chunks", 3: "frames"}, "stem_spectrum": {0: "chunks", 4: "frames"}},
    fp32_inputs=frozenset({"mix_spectrum"}),  # the mask multiplies the spectrum in float32
    axes=_axes, check_sizes=lambda ctx: {"chunks": 2, "frames": 64}, networks=("separator",),
    # The last batch of chunks is smaller: one item at a time, one compiled graph serves every batch.
    compile=True, compile_per_item=True,
    exported_with=frozenset({WeightsSource.TINY_RANDOM.value})))
