"""Golden runners and the manifest builder for the MLLM's audio path: VideoLLaMA2's clip sampling and
fbank, the BEATs encoder and the mlp2x_gelu audio projector.

Every runner builds its module from the golden's own config and inputs, so goldens of these kinds
with other sizes, durations and seeds are checked the same way.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from ..models.mllm import beats
from ..models.mllm.audio_input import audio_features, clip_sample_bounds, padded_clip_signal
from ..models.mllm.audio_projector import AudioProjector
from ..models.mllm.beats import BEATs, BEATsConfig
from .golden import Golden


def _bf16_rank(x: torch.Tensor) -> torch.Tensor:
    """Integers ordered like the bfloat16 values of ``x``, consecutive values one apart (-0 == +0)."""
    bits = x.to(torch.bfloat16).view(torch.int16).to(torch.int32)
    return torch.where(bits < 0, -(bits & 0x7FFF), bits)


@torch.inference_mode()
def run_audio_clips(golden: Golden) -> dict[str, torch.Tensor]:
    """``process_audio_from_video`` on ``in/waveform``: clip bounds (exact), the 30 s signal, the bf16 fbank.

    Our float32 fbank differs from torchaudio's by float rounding (about 1e-3 in low-energy bins), so a
    few values round to the neighbouring bfloat16; ``check/fbank_bf16_beyond_one_ulp`` counts values
    that are further off, which must be none.
    """
    waveform = golden.inputs["waveform"]
    bounds = clip_sample_bounds(waveform.shape[0])
    fbank_bf16 = audio_features(waveform).to(torch.bfloat16)
    expected = golden.outputs["fbank_bf16"]
    if fbank_bf16.shape == expected.shape:
        beyond_one_ulp = int(((_bf16_rank(fbank_bf16) - _bf16_rank(expected)).abs() > 1).sum())
    else:  # out/fbank_bf16 itself reports the shape mismatch
        beyond_one_ulp = expected.numel()
    return {
        "out/fbank_bf16": fbank_bf16,
        "mid/clip_start_samples": bounds[:, 0],
        "mid/clip_end_samples": bounds[:, 1],
        "mid/waveform_30s": padded_clip_signal(waveform),
        "check/fbank_bf16_beyond_one_ulp": torch.tensor(beyond_one_ulp),
    }


@torch.inference_mode()
def run_beats(golden: Golden) -> dict[str, torch.Tensor]:
    """``extract_features(in/fbank, all-False padding mask)`` with every intermediate the golden lists."""
    model = BEATs(BEATsConfig.from_dict(golden.meta["constructor_config"])).eval()
    model.load_checkpoint(golden.state)
    fbank = golden.inputs["fbank"]
    mids: dict[str, torch.Tensor] = {}
    features = model.extract_features(fbank, torch.zeros(fbank.shape, dtype=torch.bool), intermediates=mids)
    mids["pos_conv_effective_weight"] = model.encoder.pos_conv[0].effective_weight()
    # Upstream's layers run time-first, (N, B, D), and its bias is per (batch, head): (B*H, N, N).
    mids |= {k: v.transpose(0, 1) for k, v in mids.items() if k.startswith("layer") and k.endswith("_out")}
    if "position_bias" in mids:
        mids["position_bias"] = mids["position_bias"].flatten(0, 1)
    return {"out/features": features} | {f"mid/{k}": v for k, v in mids.items()}


@torch.inference_mode()
def run_audio_projector(golden: Golden) -> dict[str, torch.Tensor]:
    """mlp2x_gelu applied to ``in/audio_features``."""
    config = golden.meta["constructor_config"]
    projector_type = config["mm_projector_a_type"]
    if projector_type != "mlp2x_gelu":
        raise ValueError(f"only the mlp2x_gelu audio projector is supported, got {projector_type!r}")
    projector = AudioProjector(config["mm_hidden_size_a"], config["hidden_size_a"]).eval()
    projector.load_checkpoint(golden.state)
    return {"out/audio_tokens": projector(golden.inputs["audio_features"])}


RUNNERS: dict[str, Callable[[Golden], dict[str, torch.Tensor]]] = {
    "beats_audio_clips": run_audio_clips,
    "beats": run_beats,
    "audio_projector": run_audio_projector,
}

MANIFESTS: dict[str, Callable[[], dict[str, tuple[int, ...]]]] = {
    "beats": partial(beats.checkpoint_shapes, BEATsConfig()),
}
