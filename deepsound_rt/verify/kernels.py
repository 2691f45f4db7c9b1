"""Golden runners for our kernels, one run per compute path: ``torch`` (the models' torch
references), ``cpp`` and ``cuda`` (:mod:`deepsound_rt.kernels` on CPU or CUDA tensors).

``RUNNERS_BY_PATH[kind](golden, path)`` computes a golden's tensors on ``path`` from the golden's
own config, state and inputs, and returns them on the CPU for comparison.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import kernels
from ..models import fbank
from ..models.alias_free import snake_beta_antialiased_reference
from ..models.mel import MelConverter, linear_magnitude
from .decoders import mel_config_from_golden
from .golden import Golden

PathRunner = Callable[[Golden, str], dict[str, torch.Tensor]]


def _device(path: str) -> str:
    return "cuda" if path == "cuda" else "cpu"


def run_snakebeta(golden: Golden, path: str) -> dict[str, torch.Tensor]:
    """BigVGAN's Activation1d(SnakeBeta(alpha_logscale=True)) on ``in/x`` with the stored parameters."""
    device = _device(path)
    state = {k: v.to(device) for k, v in golden.state.items()}
    run = snake_beta_antialiased_reference if path == "torch" else kernels.snake_beta_antialiased
    y = run(golden.inputs["x"].to(device), state["act.alpha"], state["act.beta"], state["upsample.filter"],
            state["downsample.lowpass.filter"])
    return {"out/y": y.cpu()}


def run_mel(golden: Golden, path: str) -> dict[str, torch.Tensor]:
    """MMAudio's log-mel of ``in/waveform`` and, when the golden has a tolerance for it, the STFT magnitude."""
    converter = MelConverter.from_config(mel_config_from_golden(golden), use_kernels=path != "torch")
    converter = converter.to(_device(path))
    waveform = golden.inputs["waveform"].to(_device(path))
    mel = converter(waveform)
    if path == "torch":
        magnitude = linear_magnitude(waveform, converter.hann_window, converter.n_fft, converter.hop_size)
    else:
        _, magnitude = kernels.mel_spectrogram(waveform, converter.mel_basis, converter.mel_spans,
                                               converter.hann_window, converter.n_fft, converter.hop_size,
                                               converter.log, return_magnitude=True)
    computed = {"out/mel": mel.cpu()}
    if "mid/linear_mag" in (golden.meta.get("suggested_atol") or {}):
        computed["mid/linear_mag"] = magnitude.cpu()
    return computed


# The golden's derived Kaldi settings that our fixed BEATs front end must share.
_FBANK_SETTINGS = {
    "window_size": fbank.FRAME_LENGTH,
    "window_shift": fbank.FRAME_SHIFT,
    "padded_window_size": fbank.PADDED_FRAME_LENGTH,
}


def _bf16_steps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bfloat16 steps separate a and b once rounded to bfloat16 (0: equal; -0 == +0)."""

    def rank(x: torch.Tensor) -> torch.Tensor:
        bits = x.to(torch.bfloat16).view(torch.int16).to(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)

    return (rank(a) - rank(b)).abs()


def run_beats_fbank(golden: Golden, path: str) -> dict[str, torch.Tensor]:
    """BEATs' Kaldi fbank of ``in/waveform``, its bf16 rounding and its BEATs normalisation.

    A float32 fbank within the tolerance can still round to the neighbouring bfloat16;
    ``check/fbank_bf16_beyond_one_ulp`` counts bf16 values further off than that (must be none).
    """
    derived = golden.meta.get("fbank_facts", {}).get("derived", {})
    different = {k: (derived[k], ours) for k, ours in _FBANK_SETTINGS.items() if k in derived and derived[k] != ours}
    if different:
        raise ValueError(f"golden uses other Kaldi settings than BEATs' (golden, ours): {different}")
    features = fbank.kaldi_fbank(golden.inputs["waveform"].to(_device(path)), use_kernels=path != "torch").cpu()
    computed = {
        "out/fbank": features,
        "out/fbank_bf16": features.to(torch.bfloat16),
        "out/fbank_normalized": fbank.beats_normalize(features),
    }
    expected_bf16 = golden.outputs.get("fbank_bf16")
    if expected_bf16 is not None and expected_bf16.shape == features.shape:
        beyond = int((_bf16_steps_apart(features, expected_bf16) > 1).sum())
        computed["check/fbank_bf16_beyond_one_ulp"] = torch.tensor(beyond)
    return computed


RUNNERS_BY_PATH: dict[str, PathRunner] = {
    "antialiased_snakebeta": run_snakebeta,
    "mel_converter_16k": run_mel,
    "mel_converter_44k": run_mel,
    "beats_fbank": run_beats_fbank,
}
