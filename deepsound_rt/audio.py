"""Sample-rate conversion for the steps that need another rate than the generator's (16 kHz for
the speech detector, 44.1 kHz for the separator): soxr's "HQ" filter, which is what DeepSound's
``librosa.resample`` calls by default (``res_type="soxr_hq"``), with librosa's length rule."""
from __future__ import annotations

import math

import numpy as np
import soxr
import torch


def resample(audio: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """(..., T) float audio -> (..., ceil(T·new/orig)) at ``new_rate``, as
    ``librosa.resample(audio, orig_sr=orig_rate, target_sr=new_rate)`` computes it: soxr HQ on
    each signal, then zero-padded or trimmed to librosa's length. Same dtype and device."""
    if orig_rate == new_rate:
        return audio.clone()
    leading, num_samples = audio.shape[:-1], audio.shape[-1]
    target_length = math.ceil(num_samples * new_rate / orig_rate)
    rows = audio.detach().reshape(-1, num_samples).to("cpu", torch.float32).numpy()
    out = np.zeros((rows.shape[0], target_length), dtype=np.float32)
    if rows.size:
        # soxr takes (frames, channels) and filters every channel alike
        converted = soxr.resample(np.ascontiguousarray(rows.T), orig_rate, new_rate, quality="HQ")
        kept = min(target_length, converted.shape[0])
        out[:, :kept] = converted[:kept].T
    return torch.from_numpy(out).reshape(*leading, target_length).to(audio.device, audio.dtype)
