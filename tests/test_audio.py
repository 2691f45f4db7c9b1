"""Resampling keeps band-limited content: checked against analytic sines, not recorded output."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deepsound_rt.audio import resample


@pytest.mark.parametrize(("from_rate", "to_rate"), [(44100, 16000), (16000, 44100), (22050, 16000), (48000, 44100)])
def test_sine_survives_resampling(from_rate, to_rate):
    seconds, freq = 1.0, 1234.5
    t_in = np.arange(int(seconds * from_rate)) / from_rate
    out = resample(torch.from_numpy(np.sin(2 * np.pi * freq * t_in).astype(np.float32)), from_rate, to_rate).numpy()
    assert out.shape == (int(np.ceil(len(t_in) * to_rate / from_rate)),) and out.dtype == np.float32
    t_out = np.arange(len(out)) / to_rate
    middle = slice(len(out) // 10, -len(out) // 10)  # away from the zero-padded edges
    np.testing.assert_allclose(out[middle], np.sin(2 * np.pi * freq * t_out)[middle], atol=2e-3)


def test_content_above_the_new_nyquist_is_removed():
    rate = 44100
    t = np.arange(rate) / rate
    out = resample(torch.from_numpy(np.sin(2 * np.pi * 12000 * t).astype(np.float32)), rate, 16000).numpy()  # > 8 kHz
    assert np.abs(out[1600:-1600]).max() < 0.01


def test_batch_dimensions_and_identity():
    audio = torch.randn(2, 3, 1000, generator=torch.Generator().manual_seed(0))
    assert resample(audio, 16000, 44100).shape == (2, 3, 2757)
    torch.testing.assert_close(resample(audio, 16000, 16000), audio, rtol=0, atol=0)
