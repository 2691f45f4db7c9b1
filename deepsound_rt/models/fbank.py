"""BEATs' audio front end: the Kaldi log-mel filterbank as ``torchaudio.compliance.kaldi.fbank``
computes it with the options VideoLLaMA2 passes, and BEATs' input normalisation.

Written against torchaudio's pure-python implementation so the SDK needs no torchaudio; every step
runs in float32 in the same order. This is the torch reference of our fused fbank kernel, which
:func:`kaldi_fbank` runs with ``use_kernels``; the filterbank and window are separate functions so
that the kernel takes them as inputs and stays exact.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .. import kernels

SAMPLE_RATE = 16_000
NUM_MEL_BINS = 128
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms at 16 kHz
PADDED_FRAME_LENGTH = 512  # next power of two, the FFT size
PREEMPHASIS = 0.97
POVEY_POWER = 0.85
LOW_FREQ_HZ = 20.0
# ffmpeg's s16 samples are decoded to k/32768; Kaldi works on the integer scale.
WAVEFORM_SCALE = 2.0**15
# Kaldi floors the mel energies at the machine epsilon of the compute dtype before the log.
LOG_FLOOR = torch.finfo(torch.float32).eps
# BEATs.preprocess: (fbank - mean) / (2 * std) with the AudioSet statistics.
BEATS_FBANK_MEAN = 15.41663
BEATS_FBANK_STD = 6.55582


def povey_window(frame_length: int = FRAME_LENGTH) -> torch.Tensor:
    """Kaldi's default window: a symmetric Hann window raised to the power 0.85 (float32)."""
    return torch.hann_window(frame_length, periodic=False, dtype=torch.float32).pow(POVEY_POWER)


def _kaldi_mel(hz: torch.Tensor | float):
    if isinstance(hz, torch.Tensor):
        return 1127.0 * (1.0 + hz / 700.0).log()
    return 1127.0 * math.log(1.0 + hz / 700.0)


def kaldi_mel_banks(
    num_bins: int = NUM_MEL_BINS,
    padded_frame_length: int = PADDED_FRAME_LENGTH,
    sample_rate: float = SAMPLE_RATE,
    low_freq: float = LOW_FREQ_HZ,
    high_freq: float = 0.0,
) -> torch.Tensor:
    """(num_bins, padded_frame_length // 2) triangular filters on Kaldi's mel scale 1127·ln(1 + f/700).

    Edges are equally spaced in mel between ``low_freq`` and ``high_freq`` (<= 0 counts back from
    Nyquist); the Nyquist bin is not covered (the caller pads a zero column). Float32, with the
    scalar edges in double as Kaldi's Python port computes them.
    """
    num_fft_bins = padded_frame_length // 2
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    fft_bin_width = sample_rate / padded_frame_length
    mel_low = _kaldi_mel(low_freq)
    mel_delta = (_kaldi_mel(high_freq) - mel_low) / (num_bins + 1)
    bin_index = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + bin_index * mel_delta
    center = mel_low + (bin_index + 1.0) * mel_delta
    right = mel_low + (bin_index + 2.0) * mel_delta
    mel = _kaldi_mel(fft_bin_width * torch.arange(num_fft_bins)).unsqueeze(0)
    up_slope = (mel - left) / (center - left)
    down_slope = (right - mel) / (right - center)
    return torch.clamp(torch.minimum(up_slope, down_slope), min=0.0)


@functools.lru_cache(maxsize=4)
def _constants(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mel banks, their spans, Povey window) on ``device``, built once."""
    banks = kaldi_mel_banks().contiguous()
    return banks.to(device), kernels.filter_spans(banks).to(device), povey_window().contiguous().to(device)


def kaldi_fbank(waveform: torch.Tensor, use_kernels: bool = False) -> torch.Tensor:
    """Log-mel filterbank of a 16 kHz waveform in [-1, 1]: (L,) -> (frames, 128), (B, L) -> (B, frames, 128).

    frames = 1 + (L - 400) // 160 (only whole frames, Kaldi's snip_edges). Steps per frame: scale by
    2^15, remove the mean, pre-emphasis 0.97 (first sample against itself), Povey window, zero-pad to
    512, power spectrum, mel filterbank, log of max(energy, float32 eps). ``use_kernels``: our fused
    kernel computes the same.
    """
    if waveform.dim() not in (1, 2):
        raise ValueError(f"waveform must be (L,) or (B, L), got shape {tuple(waveform.shape)}")
    if waveform.shape[-1] < FRAME_LENGTH:
        raise ValueError(f"waveform needs at least {FRAME_LENGTH} samples, got {waveform.shape[-1]}")
    mel_banks, spans, window = _constants(str(waveform.device))
    if use_kernels:
        return kernels.kaldi_fbank(waveform, mel_banks, spans, window, frame_shift=FRAME_SHIFT,
                                   padded_frame_length=PADDED_FRAME_LENGTH, preemphasis=PREEMPHASIS,
                                   waveform_scale=WAVEFORM_SCALE, log_floor=LOG_FLOOR)
    scaled = waveform.float() * WAVEFORM_SCALE
    frames = scaled.unfold(-1, FRAME_LENGTH, FRAME_SHIFT)  # (..., frames, 400)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - PREEMPHASIS * previous) * window
    frames = F.pad(frames, (0, PADDED_FRAME_LENGTH - FRAME_LENGTH))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    banks = F.pad(mel_banks, (0, power.shape[-1] - mel_banks.shape[-1]))
    energies = torch.matmul(power, banks.T)
    return torch.clamp(energies, min=LOG_FLOOR).log()


def beats_normalize(fbank: torch.Tensor) -> torch.Tensor:
    """BEATs' input normalisation of a Kaldi fbank: (x - 15.41663) / (2 · 6.55582)."""
    return (fbank - BEATS_FBANK_MEAN) / (2 * BEATS_FBANK_STD)
