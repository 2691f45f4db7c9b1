"""Latents to waveform: VAE decoder (latents -> mel) and vocoder (mel -> waveform)."""
from __future__ import annotations

import torch

from ..backends.base import Graph
from ..errors import DeepSoundError


def decode_latents(graph: Graph, latents: torch.Tensor) -> torch.Tensor:
    """(1, N, C) normalised flow latents -> (1, n_mels, 2N) mel spectrogram."""
    return graph.run({"latents": latents})["mel"]


def vocode(graph: Graph, mel: torch.Tensor) -> torch.Tensor:
    """(1, n_mels, frames) mel -> (num_samples,) float32 waveform on the CPU."""
    return graph.run({"mel": mel})["waveform"].float().reshape(-1).cpu()


def check_finite(waveform: torch.Tensor, dtype: torch.dtype) -> None:
    """Refuse audio holding NaN/Inf, with advice for the dtype the networks actually ran in
    (only fp16 overflows at the magnitudes these networks reach)."""
    if not torch.isfinite(waveform).all():
        name = str(dtype).removeprefix("torch.")
        advice = ("fp16 can overflow: try --dtype bf16 or fp32" if dtype == torch.float16 else
                  f"not an fp16 overflow: the weights or the video give non-finite values in {name}")
        raise DeepSoundError(f"the generated audio contains NaN/Inf (networks in {name}); {advice}")
