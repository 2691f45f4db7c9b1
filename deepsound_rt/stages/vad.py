"""Step 2, fast path: is there voice-over in the generated audio? silero-vad, no LLM.

The silero-vad package ships its real ONNX model; we run it through ONNX Runtime window by window
(512 samples at 16 kHz, 64 samples of context, recurrent state carried over) and segment the
speech probabilities with silero's own rules (threshold 0.5, exit threshold 0.35, speech ≥ 250 ms,
gaps ≥ 100 ms, 30 ms padding). The clip counts as voice-over when the detected speech covers at
least ``min_speech_share`` of it. The default, 10 %, is 0.8 s of an 8 s clip: a spoken phrase
trips it, while one stray window cannot (segments shorter than 250 ms are dropped anyway).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import resample
from ..models.detector import silero_data_dir

VAD_RATE = 16000
WINDOW = 512
CONTEXT = 64
DEFAULT_MIN_SPEECH_SHARE = 0.10


SHIPPED_ONNX = "silero_vad.onnx"


def _speech_segments(probs: list[float], num_samples: int) -> list[dict]:
    threads = torch.get_num_threads()
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    torch.set_num_threads(threads)  # importing silero_vad pins torch to one thread process-wide
    return get_speech_timestamps_from_probs(probs, sampling_rate=VAD_RATE, audio_length_samples=num_samples)


@dataclass(frozen=True)
class VadDecision:
    voice_over: bool
    speech_share: float
    segments: list[tuple[float, float]]  # speech (start, end) in seconds


class SpeechDetector:
    """silero-vad on ONNX Runtime; one session, reused for every clip."""

    def __init__(self, model_path: Path | None = None, min_speech_share: float = DEFAULT_MIN_SPEECH_SHARE):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # a tiny recurrent model: threads cost more than they give
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(model_path or silero_data_dir() / SHIPPED_ONNX), options,
                                                    providers=["CPUExecutionProvider"])
        self.min_speech_share = min_speech_share

    def speech_probabilities(self, audio_16k: np.ndarray) -> list[float]:
        """One speech probability per 512-sample window (the last one zero-padded)."""
        audio = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
        padded = np.pad(audio, (CONTEXT, -len(audio) % WINDOW))
        state = np.zeros((2, 1, 128), dtype=np.float32)
        rate = np.array(VAD_RATE, dtype=np.int64)
        probs = []
        for start in range(0, len(padded) - CONTEXT, WINDOW):
            chunk = padded[None, start : start + CONTEXT + WINDOW]
            prob, state = self.session.run(None, {"input": chunk, "state": state, "sr": rate})
            probs.append(float(prob[0, 0]))
        return probs

    def detect(self, audio: np.ndarray, sample_rate: int) -> VadDecision:
        audio_16k = resample(torch.as_tensor(np.asarray(audio, dtype=np.float32)), sample_rate, VAD_RATE)
        audio_16k = audio_16k.reshape(-1).numpy()
        if len(audio_16k) == 0:
            return VadDecision(False, 0.0, [])
        segments = _speech_segments(self.speech_probabilities(audio_16k), len(audio_16k))
        speech_samples = sum(s["end"] - s["start"] for s in segments)
        share = speech_samples / len(audio_16k)
        return VadDecision(
            voice_over=share >= self.min_speech_share,
            speech_share=share,
            segments=[(s["start"] / VAD_RATE, s["end"] / VAD_RATE) for s in segments],
        )
