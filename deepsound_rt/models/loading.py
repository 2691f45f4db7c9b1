"""Build the generator's networks for a preset: from the official files, or seeded random ones
(the preset's own sizes: tiny for ``dev``, full size for the official presets)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from ..weights_dir import DEV_SEED, WeightsSource, check_official_checksum, find_weight_file
from .bigvgan import BigVGAN, load_vocoder_file
from .clip import ClipEncoder
from .mmaudio.network import TRAINING_DURATION_S, MMAudio, sequence_lengths
from .synchformer import Synchformer
from .vae import VAE
from .weights import load_state_file

NETWORKS = ("flow", "vae", "vocoder", "synchformer", "clip")
"""The step-1 networks, each from one weight file (the roles of ``Preset.files``)."""


@dataclass
class GeneratorModels:
    """The step-1 networks on their device, in eval mode, ready to be wrapped as graphs."""

    flow: MMAudio
    vae: VAE
    vocoder: BigVGAN
    synchformer: Synchformer
    clip: ClipEncoder

    @property
    def latent_dim(self) -> int:
        return self.flow.config.latent_dim

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.clip.tokenize(texts)

    def set_sequence_lengths(self, latent: int, clip: int, sync: int) -> None:
        """Rebuild the flow network's duration-dependent tables only when the duration changes."""
        if (latent, clip, sync) != (self.flow.latent_seq_len, self.flow.clip_seq_len, self.flow.sync_seq_len):
            self.flow.update_seq_lengths(latent, clip, sync)


def _prepared_for_inference(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval().to(device=device, dtype=dtype)


def _random_models(preset, device: torch.device, use_kernels: bool) -> GeneratorModels:
    """Seeded random networks, built directly on ``device`` (full-size random init is slow on a CPU)."""
    lengths = sequence_lengths(TRAINING_DURATION_S, preset.sampling_rate, preset.hop_length)
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), torch.device(device):
        torch.manual_seed(DEV_SEED)
        models = GeneratorModels(
            flow=MMAudio(preset.flow, *lengths),
            vae=VAE(preset.vae.data_dim, preset.vae.embed_dim, preset.vae.hidden_dim),
            vocoder=BigVGAN(preset.vocoder, use_kernels=use_kernels),
            synchformer=Synchformer(preset.synchformer),
            clip=ClipEncoder(preset.clip),
        )
    # Each network's random init stands in for a checkpoint and goes through the real loader,
    # so load-time transforms (the VAE's weight normalisation) apply as they would to a file.
    state = models.flow.state_dict()
    state["latent_mean"], state["latent_std"] = torch.zeros_like(state["latent_mean"]), torch.ones_like(state["latent_std"])
    models.flow.load_checkpoint(state)
    for network in (models.vae, models.vocoder, models.synchformer):
        network.load_checkpoint(network.state_dict())
    return models


def _official_models(preset, weights_dir: Path, verify_checksums: bool, use_kernels: bool) -> GeneratorModels:
    paths = {spec.role: find_weight_file(weights_dir, spec) for spec in preset.files}  # all present first
    if verify_checksums:
        for path in paths.values():
            check_official_checksum(path)

    def read(role: str) -> dict:
        return load_state_file(paths[role])

    lengths = sequence_lengths(TRAINING_DURATION_S, preset.sampling_rate, preset.hop_length)
    flow = MMAudio(preset.flow, *lengths)
    _load(flow.load_checkpoint, read("flow"), paths["flow"])
    vae = VAE(preset.vae.data_dim, preset.vae.embed_dim, preset.vae.hidden_dim)
    _load(vae.load_checkpoint, read("vae"), paths["vae"])
    synchformer = Synchformer(preset.synchformer)
    _load(synchformer.load_checkpoint, read("synchformer"), paths["synchformer"])
    return GeneratorModels(
        flow=flow,
        vae=vae,
        vocoder=load_vocoder_file(paths["vocoder"], preset.vocoder, use_kernels=use_kernels),
        synchformer=synchformer,
        clip=ClipEncoder.from_weights(paths["clip"], preset.clip),
    )


def _load(load_fn, state: dict, path: Path) -> None:
    try:
        load_fn(state)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None


def load_generator_models(preset, weights_dir: Path | None, device: torch.device, dtype: torch.dtype,
                          source: WeightsSource, verify_checksums: bool = True,
                          use_kernels: bool = False) -> GeneratorModels:
    """All step-1 networks of ``preset`` on ``device`` in ``dtype``, from ``source``: the official
    files in ``weights_dir``, or seeded random weights of the preset's sizes (latency does not
    depend on weight values). ``use_kernels``: the vocoder runs our fused activations."""
    if source.random:
        models = _random_models(preset, device, use_kernels)
    elif not preset.files:
        raise WeightsError(f"preset '{preset.name}' has no official weights, only random ones (weights source "
                           f"{WeightsSource.TINY_RANDOM.value})")
    elif weights_dir is None:
        raise WeightsError(f"preset '{preset.name}' needs --weights DIR with the official checkpoint files")
    else:
        models = _official_models(preset, Path(weights_dir), verify_checksums, use_kernels)
    for name in NETWORKS:
        setattr(models, name, _prepared_for_inference(getattr(models, name), device, dtype))
    return models
