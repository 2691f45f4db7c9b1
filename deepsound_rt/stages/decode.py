"""Latents to waveform: VAE decoder (latents -> mel) and vocoder (mel -> waveform)."""
from __future__ import annotations

import torch

from ..backends.base import Graph


def decode_latents(graph: Graph, latents: torch.Tensor) -> torch.Tensor:
    """(1, N, C) normalised flow latents -> (1, n_mels, 2N) mel spectrogram."""
    return graph.run({"latents": latents})["mel"]


def vocode(graph: Graph, mel: torch.Tensor) -> torch.Tensor:
    """(1, n_mels, frames) mel -> (num_samples,) float32 waveform on the CPU."""
    return graph.run({"mel": mel})["waveform"].float().reshape(-1).cpu()
