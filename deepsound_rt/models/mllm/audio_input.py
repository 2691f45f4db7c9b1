"""VideoLLaMA2's audio preprocessing (``mm_utils.process_audio_from_video``): the video's audio as
16 kHz mono -> eight 2 s clips -> concatenated (at most 16 s) -> zero-padded to 30 s -> Kaldi fbank
(2998, 128) -> rounded to bfloat16 -> float16, the BEATs input.

The clip starts follow pytorchvideo 0.1.5's ``ConstantClipsPerVideoSampler`` as VideoLLaMA2 drives it:
spacing = (duration - 2) / 8 (divided by 8, not 7, so the last 1/8 of the audio is never covered),
in exact rational arithmetic on the float duration, truncated to whole samples. No mean/std
normalisation happens here; BEATs normalises its input itself.
"""
from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F

from ..fbank import kaldi_fbank

SAMPLE_RATE = 16_000
CLIP_SECONDS = 2
CLIPS_PER_VIDEO = 8
PADDED_SECONDS = 30
PADDED_SAMPLES = PADDED_SECONDS * SAMPLE_RATE
"""The fbank input length; also what upstream substitutes (as zeros) when it cannot decode audio."""


def clip_sample_bounds(num_samples: int) -> torch.Tensor:
    """(8, 2) int64 [start, end) sample indices of the eight clips of a ``num_samples``-long signal.

    Clip k spans [k * s, k * s + 2] seconds with s = max(duration - 2, 0) / 8, where duration is the
    float ``num_samples / 16000`` and everything after it is exact (Fraction); indices truncate toward
    zero. Ends are not clamped: audio of 2 s or less gives eight clips [0, 32000) that the slicing
    cuts at the end of the signal.
    """
    duration = num_samples / SAMPLE_RATE
    spacing = Fraction(max(duration - CLIP_SECONDS, 0)) / CLIPS_PER_VIDEO
    bounds = []
    for k in range(CLIPS_PER_VIDEO):
        start = spacing * k
        bounds.append((int(start * SAMPLE_RATE), int((start + CLIP_SECONDS) * SAMPLE_RATE)))
    return torch.tensor(bounds, dtype=torch.int64)


def sample_audio_clips(waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """16 kHz mono (T,) -> (the eight clips concatenated, at most 256000 samples; their (8, 2) bounds)."""
    if waveform.dim() != 1:
        raise ValueError(f"waveform must be mono (T,), got shape {tuple(waveform.shape)}")
    bounds = clip_sample_bounds(waveform.shape[0])
    clips = [waveform[start:end] for start, end in bounds.tolist()]
    return torch.cat(clips), bounds


def padded_clip_signal(waveform: torch.Tensor) -> torch.Tensor:
    """The 30 s (480000,) signal the fbank sees: the concatenated clips, then zeros.

    Upstream would randomly crop a signal longer than 30 s; eight 2 s clips never are.
    """
    clips, _ = sample_audio_clips(waveform)
    return F.pad(clips, (0, PADDED_SAMPLES - clips.shape[0]))


def audio_features(waveform: torch.Tensor, use_kernels: bool = False) -> torch.Tensor:
    """16 kHz mono (T,) in [-1, 1] -> BEATs input (1, 2998, 128) float16.

    The float32 fbank (our kernel with ``use_kernels``) is rounded to bfloat16 (what
    ``process_audio_from_video`` returns) and then cast to float16 (what ``mm_infer`` feeds the fp16
    model); cast the result to the model's dtype.
    """
    fbank = kaldi_fbank(padded_clip_signal(waveform.float()), use_kernels)
    return fbank.to(torch.bfloat16).to(torch.float16).unsqueeze(0)
