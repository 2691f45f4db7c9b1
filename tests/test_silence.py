"""Step 4's silence rule against a direct, loop-by-loop restatement of librosa's definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from deepsound_rt.stages.silence import check_silence, frame_rms_db


def reference_db(audio: np.ndarray) -> list[float]:
    """librosa.feature.rms(y, frame_length=2048, hop_length=512, center=True, pad_mode='constant')
    then amplitude_to_db(ref=1, amin=1e-5, top_db=80), one frame at a time."""
    padded = [0.0] * 1024 + [float(v) for v in audio] + [0.0] * 1024
    levels = []
    start = 0
    while start + 2048 <= len(padded):
        frame = padded[start : start + 2048]
        rms = math.sqrt(sum(v * v for v in frame) / 2048)
        levels.append(20 * math.log10(max(1e-5, rms)))
        start += 512
    top = max(levels)
    return [max(level, top - 80) for level in levels]


def test_levels_match_the_reference_definition():
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(9000) * np.linspace(0, 0.5, 9000)).astype(np.float32)
    np.testing.assert_allclose(frame_rms_db(audio), reference_db(audio), atol=1e-4)


@pytest.mark.parametrize("length", [1, 511, 512, 513, 2047, 2048, 2049, 44100])
def test_frames_are_centred_every_hop_to_the_last_sample(length):
    """One frame per hop, centred: 1 + length // 512 frames, frame k centred on sample 512 k. A
    click on the last sample must show in exactly the frames whose window covers it, as in the
    loop-by-loop reference."""
    audio = np.full(length, 1e-4, dtype=np.float32)
    audio[-1] = 0.9
    levels = frame_rms_db(audio)
    assert len(levels) == 1 + length // 512
    np.testing.assert_allclose(levels, reference_db(audio), atol=1e-4)
    covering = [k for k in range(len(levels)) if abs(512 * k - (length - 1)) <= 1024]
    assert covering and levels.argmax() in covering


@pytest.mark.parametrize(
    ("loud_share", "silent"),
    [(0.0, True), (0.05, True), (0.2, False), (1.0, False)],
)
def test_silent_when_more_than_90_percent_of_frames_are_quiet(loud_share, silent):
    rate = 16000
    audio = np.full(rate * 4, 1e-4, dtype=np.float32)  # -80 dBFS hiss
    loud = int(len(audio) * loud_share)
    audio[:loud] = 0.3 * np.sin(np.arange(loud) * 2 * np.pi * 440 / rate)
    decision = check_silence(audio)
    assert decision.silent is silent


def test_thresholds_are_configurable():
    audio = np.full(16000, 0.01, dtype=np.float32)  # -40 dBFS everywhere
    assert not check_silence(audio).silent
    assert check_silence(audio, threshold_db=-30.0).silent
