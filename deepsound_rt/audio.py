"""Sample-rate conversion for the steps that need another rate than the generator's
(16 kHz for the speech detector and the MLLM, 44.1 kHz for the separator)."""
from __future__ import annotations

from functools import lru_cache
from math import ceil, gcd

import torch
import torch.nn.functional as F


@lru_cache(maxsize=8)
def _sinc_resample_kernel(
    orig: int, new: int, zero_crossings: int, rolloff: float, beta: float
) -> tuple[torch.Tensor, int]:
    """Polyphase Kaiser-windowed sinc filters for rates reduced to coprime ``orig`` -> ``new``.

    Row j holds the taps producing output phase j (position j·orig/new between input samples) from
    inputs at offsets -half_width .. half_width+orig-1. Cutoff = rolloff · the lower Nyquist rate.
    """
    cutoff = rolloff * min(orig, new) / orig  # as a fraction of the input's Nyquist frequency
    half_width = ceil(zero_crossings / cutoff)
    offsets = torch.arange(-half_width, half_width + orig, dtype=torch.float64)
    phases = torch.arange(new, dtype=torch.float64)[:, None] * orig / new
    distance = (phases - offsets) * cutoff  # in zero crossings of the sinc
    kaiser = torch.special.i0(beta * (1 - (distance / zero_crossings).clamp(-1, 1) ** 2).sqrt())
    kaiser = kaiser / torch.special.i0(torch.tensor(beta, dtype=torch.float64))
    taps = cutoff * torch.sinc(distance) * kaiser * (distance.abs() <= zero_crossings)
    return taps.float(), half_width


def resample(
    audio: torch.Tensor,
    orig_rate: int,
    new_rate: int,
    zero_crossings: int = 64,
    rolloff: float = 0.9475937167399596,
    beta: float = 14.769656459379492,
) -> torch.Tensor:
    """Band-limited resampling of (..., T) float audio to ``ceil(T·new/orig)`` samples (librosa's length).

    Kaiser-windowed sinc interpolation, applied as a polyphase strided convolution; the defaults are
    a "kaiser_best"-class filter (64 zero crossings, beta 14.77). DeepSound itself resamples with
    librosa's soxr_hq, so the result differs from its very slightly, mostly near the band edge.
    """
    factor = gcd(orig_rate, new_rate)
    orig, new = orig_rate // factor, new_rate // factor
    if orig == new:
        return audio.clone()
    taps, half_width = _sinc_resample_kernel(orig, new, zero_crossings, rolloff, beta)
    leading, num_samples = audio.shape[:-1], audio.shape[-1]
    target_length = ceil(num_samples * new / orig)
    frames = ceil(num_samples / orig)
    x = audio.reshape(-1, 1, num_samples).float()
    x = F.pad(x, (half_width, half_width + frames * orig - num_samples))
    y = F.conv1d(x, taps.to(x.device)[:, None, :], stride=orig)  # (N, new phases, frames)
    y = y.transpose(1, 2).reshape(*leading, frames * new)
    return y[..., :target_length].to(audio.dtype)
