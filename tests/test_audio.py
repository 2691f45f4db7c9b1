"""Resampling (soxr HQ, as librosa's default that DeepSound uses) against analytic sines at the new
rate, librosa's length rule and the removal of content above the new Nyquist frequency."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepsound_rt.audio import resample

RATES = [(44100, 16000), (16000, 44100), (22050, 16000), (48000, 44100)]


def sine(freq: float, rate: int, samples: int) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(samples) / rate)


@pytest.mark.parametrize(("from_rate", "to_rate"), RATES)
@pytest.mark.parametrize(("share_of_nyquist", "bound"), [(None, 2e-6), (0.8, 1e-3)])
def test_a_band_limited_sine_is_the_sine_at_the_new_rate(from_rate, to_rate, share_of_nyquist, bound):
    """Away from the edges (where the filter sees the signal start and stop) the result is the
    analytic sine sampled at the new rate: within 2e-6 at 1234.5 Hz, within 1e-3 at 80 % of the
    lower Nyquist frequency (soxr HQ's passband ripple and transition start)."""
    freq = 1234.5 if share_of_nyquist is None else share_of_nyquist * min(from_rate, to_rate) / 2
    out = resample(torch.from_numpy(sine(freq, from_rate, from_rate).astype(np.float32)), from_rate, to_rate).numpy()
    assert out.shape == (to_rate,) and out.dtype == np.float32
    middle = slice(to_rate // 10, -to_rate // 10)
    assert np.abs(out[middle] - sine(freq, to_rate, to_rate)[middle]).max() <= bound


@pytest.mark.parametrize("samples", [1, 999, 1000, 44101])
def test_length_is_librosas_ceil_rule(samples):
    for from_rate, to_rate in RATES:
        out = resample(torch.ones(samples), from_rate, to_rate)
        assert out.shape == (math.ceil(samples * to_rate / from_rate),)


def test_content_above_the_new_nyquist_is_removed():
    rate = 44100
    out = resample(torch.from_numpy(sine(12000, rate, rate).astype(np.float32)), rate, 16000).numpy()  # > 8 kHz
    assert np.abs(out[1600:-1600]).max() < 1e-5


def test_batch_dimensions_dtype_and_identity():
    audio = torch.randn(2, 3, 1000, generator=torch.Generator().manual_seed(0))
    out = resample(audio, 16000, 44100)
    assert out.shape == (2, 3, 2757)
    torch.testing.assert_close(out[1, 2], resample(audio[1, 2], 16000, 44100), rtol=0, atol=0)  # each row alone
    assert resample(audio.double(), 16000, 44100).dtype == torch.float64
    torch.testing.assert_close(resample(audio, 16000, 16000), audio, rtol=0, atol=0)
