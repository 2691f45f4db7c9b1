"""MMAudio's mel front end: waveform -> log-mel spectrogram, the representation its VAE encodes.

The Slaney mel filterbank is computed here (matching ``librosa.filters.mel`` defaults) so the SDK
needs no librosa. The STFT magnitude step is the single function :func:`linear_magnitude`, and the
whole converter is the torch reference of our fused mel kernel, which a converter built with
``use_kernels`` runs instead. The generation pipeline does not compute mels from audio; the
converter serves verification and benchmarks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels

MAGNITUDE_EPS = 1e-9
LOG_FLOOR = 1e-5

# Slaney's auditory-toolbox mel scale: linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_START_MEL = _SLANEY_LOG_START_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


@dataclass(frozen=True)
class MelConfig:
    sampling_rate: int
    n_fft: int
    num_mels: int
    hop_size: int
    win_size: int
    fmin: float
    fmax: float
    log: Literal["log10", "ln"]


MEL_16K = MelConfig(16_000, 1024, 80, 256, 1024, 0.0, 8_000.0, "log10")
MEL_44K = MelConfig(44_100, 2048, 128, 512, 2048, 0.0, 22_050.0, "ln")


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_HZ_PER_MEL
    above_start = np.maximum(hz, _SLANEY_LOG_START_HZ) / _SLANEY_LOG_START_HZ
    logarithmic = _SLANEY_LOG_START_MEL + np.log(above_start) / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_LOG_START_HZ, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = _SLANEY_HZ_PER_MEL * mel
    above_start = np.maximum(mel, _SLANEY_LOG_START_MEL) - _SLANEY_LOG_START_MEL
    logarithmic = _SLANEY_LOG_START_HZ * np.exp(_SLANEY_LOG_STEP * above_start)
    return np.where(mel >= _SLANEY_LOG_START_MEL, logarithmic, linear)


def slaney_mel_filterbank(
    sampling_rate: float, n_fft: int, num_mels: int, fmin: float, fmax: float
) -> torch.Tensor:
    """(num_mels, n_fft//2 + 1) triangular filters, equal-spaced on the Slaney mel scale, each scaled
    to unit area (Slaney norm). Float32, rounded in the same two steps as librosa's float32 output."""
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sampling_rate)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), num_mels + 2))
    widths = np.diff(edges_hz)
    distance = edges_hz[:, None] - fft_hz[None, :]
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return torch.from_numpy((triangles * area_norm[:, None]).astype(np.float32))


def linear_magnitude(waveform: torch.Tensor, window: torch.Tensor, n_fft: int, hop_size: int) -> torch.Tensor:
    """Waveform (B, L) -> STFT magnitude (B, n_fft//2+1, frames): clamp to [-1, 1], reflect-pad
    (n_fft - hop)//2 per side, STFT without centring, sqrt(re² + im² + 1e-9)."""
    pad = (n_fft - hop_size) // 2
    padded = F.pad(waveform.clamp(-1.0, 1.0).unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        padded,
        n_fft,
        hop_length=hop_size,
        win_length=window.shape[-1],
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + MAGNITUDE_EPS)


class MelConverter(nn.Module):
    """Waveform (B, L) in [-1, 1] -> log-mel (B, num_mels, frames). Buffers are derived, not loaded."""

    def __init__(
        self,
        sampling_rate: int,
        n_fft: int,
        num_mels: int,
        hop_size: int,
        win_size: int,
        fmin: float,
        fmax: float,
        log: Literal["log10", "ln"] = "log10",
        use_kernels: bool = False,
    ) -> None:
        super().__init__()
        if log not in ("log10", "ln"):
            raise ValueError(f"log must be 'log10' or 'ln', got {log!r}")
        self.n_fft = n_fft
        self.hop_size = hop_size
        self.log = log
        self.use_kernels = use_kernels
        basis = slaney_mel_filterbank(sampling_rate, n_fft, num_mels, fmin, fmax)
        self.register_buffer("mel_basis", basis, persistent=False)
        self.register_buffer("mel_spans", kernels.filter_spans(basis), persistent=False)
        self.register_buffer("hann_window", torch.hann_window(win_size), persistent=False)

    @classmethod
    def from_config(cls, config: MelConfig, use_kernels: bool = False) -> "MelConverter":
        return cls(
            config.sampling_rate, config.n_fft, config.num_mels, config.hop_size, config.win_size,
            config.fmin, config.fmax, config.log, use_kernels,
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        waveform = waveform.to(self.mel_basis.device)
        if self.use_kernels:
            return kernels.mel_spectrogram(waveform, self.mel_basis, self.mel_spans, self.hann_window, self.n_fft,
                                           self.hop_size, self.log)
        magnitude = linear_magnitude(waveform, self.hann_window, self.n_fft, self.hop_size)
        mel = torch.matmul(self.mel_basis, magnitude).clamp(min=LOG_FLOOR)
        return torch.log10(mel) if self.log == "log10" else torch.log(mel)
