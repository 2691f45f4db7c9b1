"""The fast voice-over judge: real speech is voice-over; tones and noise are not."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from deepsound_rt.stages.vad import SpeechDetector

SPEECH = Path(__file__).parent / "data" / "speech_espeak.flac"  # espeak-ng, 22.05 kHz, 6 s


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector()


def test_speech_is_voice_over(detector):
    speech, rate = soundfile.read(SPEECH, dtype="float32")
    decision = detector.detect(speech, rate)
    assert decision.voice_over and decision.speech_share > 0.5
    assert decision.segments and decision.segments[0][0] < 1.0


def test_speech_under_generated_audio_at_44k_is_voice_over(detector):
    """Speech mixed into an ambience bed and resampled to the generator's 44.1 kHz."""
    from deepsound_rt.audio import resample

    speech, rate = soundfile.read(SPEECH, dtype="float32")
    speech = resample(torch.from_numpy(speech), rate, 44100).numpy()
    bed = 0.02 * np.random.default_rng(0).standard_normal(len(speech)).astype(np.float32)
    assert detector.detect(speech + bed, 44100).voice_over


@pytest.mark.parametrize("kind", ["sine", "noise", "silence"])
def test_tone_noise_and_silence_are_not_voice_over(detector, kind):
    rate = 44100
    t = np.arange(8 * rate) / rate
    audio = {
        "sine": 0.5 * np.sin(2 * np.pi * 440 * t),
        "noise": 0.3 * np.random.default_rng(1).standard_normal(len(t)),
        "silence": np.zeros(len(t)),
    }[kind].astype(np.float32)
    decision = detector.detect(audio, rate)
    assert not decision.voice_over and decision.speech_share < 0.1


def test_share_threshold_is_configurable():
    speech, rate = soundfile.read(SPEECH, dtype="float32")
    quiet = np.zeros(len(speech) * 20, dtype=np.float32)  # the speech is under 5 % of this clip
    quiet[: len(speech)] = speech
    assert not SpeechDetector(min_speech_share=0.1).detect(quiet, rate).voice_over
    assert SpeechDetector(min_speech_share=0.01).detect(quiet, rate).voice_over
