"""Step 4: is the audio left after voice-over removal silent? DeepSound's rule, made configurable.

RMS over frames of 2048 samples with hop 512 (centred, zero padded), in dB relative to full scale
(amplitude floor 1e-5) and floored 80 dB below the loudest frame, exactly as
``librosa.amplitude_to_db(librosa.feature.rms(y))`` computes it; silent when more than 90 % of
the frames lie below −50 dB.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_LENGTH = 2048
HOP_LENGTH = 512
AMPLITUDE_FLOOR = 1e-5
TOP_DB = 80.0


@dataclass(frozen=True)
class SilenceDecision:
    silent: bool
    silent_share: float  # share of frames below the threshold


def frame_rms_db(audio: np.ndarray, frame_length: int = FRAME_LENGTH, hop_length: int = HOP_LENGTH) -> np.ndarray:
    """Per-frame RMS level in dB (librosa's rms + amplitude_to_db with its defaults)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    padded = np.pad(audio, frame_length // 2)
    num_frames = 1 + (len(padded) - frame_length) // hop_length
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_length)[::hop_length][:num_frames]
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    level_db = 20.0 * np.log10(np.maximum(AMPLITUDE_FLOOR, rms))
    return np.maximum(level_db, level_db.max() - TOP_DB)


def check_silence(audio: np.ndarray, threshold_db: float = -50.0, max_share: float = 0.9) -> SilenceDecision:
    """Silent when more than ``max_share`` of the frames are quieter than ``threshold_db``."""
    level_db = frame_rms_db(audio)
    share = float(np.mean(level_db < threshold_db))
    return SilenceDecision(silent=share > max_share, silent_share=share)
