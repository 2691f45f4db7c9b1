"""Presets (the five official MMAudio variants and the tiny random ``dev``), their weight files, the
default duration, and the device and dtype rules."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .errors import DeepSoundError
from .models.bigvgan import BIGVGAN_16K, BIGVGAN_V2_44K, BigVGANConfig
from .models.clip import CLIP_DFN5B_H14_384, CLIP_TINY, ClipConfig
from .models.mmaudio.network import AUDIO_16K, AUDIO_44K, TRAINING_DURATION_S, VARIANTS, FlowConfig
from .models.synchformer import SYNCHFORMER_FULL, SynchformerConfig
from .models.vae import VAE_CONFIGS, VAEConfig
from .weights_dir import WeightFile

DEFAULT_DURATION_S = TRAINING_DURATION_S
DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Preset:
    """Every network of the generator with its architecture and the files its weights come from."""

    name: str
    flow: FlowConfig
    vae: VAEConfig
    vocoder: BigVGANConfig
    synchformer: SynchformerConfig
    clip: ClipConfig
    sampling_rate: int
    hop_length: int  # waveform samples per mel frame
    files: tuple[WeightFile, ...] = ()  # none: random weights only (dev)

    @property
    def mode(self) -> str:
        return "16k" if self.sampling_rate == AUDIO_16K.sampling_rate else "44k"


def _files(variant: str, mode: str) -> tuple[WeightFile, ...]:
    vocoder = (
        WeightFile("vocoder", ("best_netG.pt",), "MMAudio's 16 kHz BigVGAN (ext_weights/best_netG.pt)")
        if mode == "16k"
        else WeightFile("vocoder", ("bigvgan_generator.pt",),
                        "BigVGAN v2 44.1 kHz generator from nvidia/bigvgan_v2_44khz_128band_512x")
    )
    vae_file = "v1-16.pth" if mode == "16k" else "v1-44.pth"
    return (
        WeightFile("flow", (f"mmaudio_{variant}.pth",), f"MMAudio {variant} flow network (weights/)"),
        WeightFile("vae", (vae_file,), f"MMAudio {mode} VAE (ext_weights/{vae_file})"),
        vocoder,
        WeightFile("synchformer", ("synchformer_state_dict.pth",),
                   "Synchformer video encoder (ext_weights/synchformer_state_dict.pth)"),
        WeightFile("clip", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
                   "CLIP ViT-H-14-384 from apple/DFN5B-CLIP-ViT-H-14-384"),
    )


def _official(variant: str) -> Preset:
    mode = "16k" if variant.endswith("_16k") else "44k"
    audio = AUDIO_16K if mode == "16k" else AUDIO_44K
    return Preset(
        name=variant,
        flow=VARIANTS[variant],
        vae=VAE_CONFIGS[mode],
        vocoder=BIGVGAN_16K if mode == "16k" else BIGVGAN_V2_44K,
        synchformer=SYNCHFORMER_FULL,
        clip=CLIP_DFN5B_H14_384,
        sampling_rate=audio.sampling_rate,
        hop_length=audio.spectrogram_frame_rate,
        files=_files(variant, mode),
    )


def _dev() -> Preset:
    """large_44k_v2's structure at toy widths: same classes, same data flow, seconds on a CPU."""
    synchformer = SynchformerConfig(embed_dim=32, num_heads=2, depth=1)
    return Preset(
        name="dev",
        flow=replace(VARIANTS["large_44k_v2"], clip_dim=CLIP_TINY.embed_dim, sync_dim=synchformer.embed_dim,
                     text_dim=CLIP_TINY.text_width, hidden_dim=64, depth=2, fused_depth=1, num_heads=2),
        vae=replace(VAE_CONFIGS["44k"], hidden_dim=16),
        vocoder=replace(BIGVGAN_V2_44K, upsample_initial_channel=64),
        synchformer=synchformer,
        clip=CLIP_TINY,
        sampling_rate=AUDIO_44K.sampling_rate,
        hop_length=AUDIO_44K.spectrogram_frame_rate,
    )


PRESETS: dict[str, Preset] = {name: _official(name) for name in VARIANTS} | {"dev": _dev()}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeepSoundError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeepSoundError(f"device '{name}' requested but CUDA is not available here")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` = bf16 on CUDA (upstream's default), fp32 on CPU (bf16 is slower there)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPE_NAMES:
        raise DeepSoundError(f"unknown dtype '{name}' (use auto, {', '.join(DTYPE_NAMES)})")
    return DTYPE_NAMES[name]
