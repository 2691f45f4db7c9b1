"""The generator split into graphs: modules with named tensor inputs and outputs.

Each graph is what one backend call runs. The PyTorch backend calls these modules directly and
the exporter traces the very same modules, so both backends compute one definition.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from .bigvgan import BigVGAN
from .clip import ClipEncoder
from .mmaudio.network import Conditions, MMAudio
from .synchformer import Synchformer
from .vae import VAE

PAIRED_CONDITIONS = tuple(f"paired_{name}" for name in Conditions._fields)
GENERATOR_GRAPHS = ("clip_image", "clip_text", "sync", "flow_conditions", "flow_velocity", "vae_decode", "vocoder")
"""The names ``GeneratorModels.graph_modules`` gives the graphs below, in pipeline order."""
KERNEL_GRAPHS = ("vocoder",)
"""Graphs whose torch form runs our fused kernels (the vocoder's 109 SnakeBeta activations): on a
2-core CPU torch with the C++ kernel runs the vocoder 1.2-1.6x faster than ONNX Runtime runs its
export (``benchmarks/results/cpu-epyc-2core/bench_backends.md``), so ``auto`` keeps it on torch."""


@dataclass(frozen=True)
class GraphSignature:
    """Input and output names in call order, the axes whose size varies between calls, and the
    inputs that stay float32 whatever the compute dtype (time, guidance strength)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    fp32_inputs: frozenset[str] = frozenset()


class ClipImageGraph(nn.Module):
    signature = GraphSignature(("frames",), ("features",), {"frames": {1: "clip_frames"}, "features": {1: "clip_frames"}})

    def __init__(self, clip: ClipEncoder):
        super().__init__()
        self.clip = clip

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(1, T, 3, 384, 384) in [0, 1] -> (1, T, D) unit-norm image embeddings.

        ``encode_images`` with all frames in one batch, written out because its chunking (a split
        by the frame count) would fix T to the traced value in an export.
        """
        clip = self.clip
        batch, length = frames.shape[:2]
        size = clip.config.frame_size
        if tuple(frames.shape[2:]) != (3, size, size):
            raise InputError(f"CLIP frames must be (3, {size}, {size}), got {tuple(frames.shape[2:])}")
        images = frames.to(clip.dtype).flatten(0, 1)
        images = (images - clip.mean.to(clip.dtype)) / clip.std.to(clip.dtype)
        return clip.model.encode_image(images, normalize=True).reshape(batch, length, -1)


class ClipTextGraph(nn.Module):
    signature = GraphSignature(("tokens",), ("features",), {"tokens": {0: "texts"}, "features": {0: "texts"}})

    def __init__(self, clip: ClipEncoder):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 77) token ids -> (B, 77, D) normalised last hidden states."""
        return self.clip.encode_tokens(tokens)


class SyncGraph(nn.Module):
    signature = GraphSignature(("frames",), ("features",), {"frames": {1: "sync_frames"}, "features": {1: "sync_tokens"}})

    def __init__(self, synchformer: Synchformer):
        super().__init__()
        self.synchformer = synchformer

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(1, T, 3, 224, 224) in [-1, 1] -> (1, S*8, D) sync features.

        ``encode_video_with_sync`` with every segment in one run, written out because its
        chunking (a loop over a count that varies with T) exports as sequence ops TensorRT lacks.
        """
        return self.synchformer(frames)


class FlowConditionsGraph(nn.Module):
    """Run once per clip: conditional and unconditional conditions stacked as a batch of two."""

    signature = GraphSignature(("clip_f", "sync_f", "text_f", "negative_text_f"), PAIRED_CONDITIONS, {})

    def __init__(self, flow: MMAudio):
        super().__init__()
        self.flow = flow

    def forward(self, clip_f, sync_f, text_f, negative_text_f) -> tuple[torch.Tensor, ...]:
        cond = self.flow.preprocess_conditions(clip_f, sync_f, text_f)
        uncond = self.flow.get_empty_conditions(clip_f.shape[0], negative_text_features=negative_text_f)
        return tuple(torch.cat([c, u]) for c, u in zip(cond, uncond))


class FlowVelocityGraph(nn.Module):
    """Run per Euler step: the guided velocity s·v_cond + (1 − s)·v_uncond from one batch-of-two
    pass. Upstream skips guidance for s < 1; callers get that by passing s = 1."""

    signature = GraphSignature(("x", "t", "cfg_strength", *PAIRED_CONDITIONS), ("velocity",), {},
                               fp32_inputs=frozenset({"t", "cfg_strength"}))

    def __init__(self, flow: MMAudio):
        super().__init__()
        self.flow = flow

    def forward(self, x, t, cfg_strength, *paired: torch.Tensor) -> torch.Tensor:
        flow = self.flow
        batch = x.shape[0]
        times = t.to(torch.float32).reshape(-1).expand(batch)
        velocity = flow.predict_flow(torch.cat([x, x]), torch.cat([times, times]), Conditions(*paired))
        v_cond, v_uncond = velocity.split(batch)
        strength = cfg_strength.to(v_cond.dtype)
        return strength * v_cond + (1 - strength) * v_uncond


class VaeDecodeGraph(nn.Module):
    """Normalised flow latents (1, N, C) -> mel (1, n_mels, 2N): the flow's un-normalisation
    (its latent statistics travel with this graph) and the VAE decoder."""

    signature = GraphSignature(("latents",), ("mel",), {"latents": {1: "latent_frames"}, "mel": {2: "mel_frames"}})

    def __init__(self, flow: MMAudio, vae: VAE):
        super().__init__()
        self.vae = vae
        self.register_buffer("latent_mean", flow.latent_mean.detach().clone(), persistent=False)
        self.register_buffer("latent_std", flow.latent_std.detach().clone(), persistent=False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.latent_std.dtype) * self.latent_std + self.latent_mean
        return self.vae.decode(latents.transpose(1, 2))


class VocoderGraph(nn.Module):
    signature = GraphSignature(("mel",), ("waveform",), {"mel": {2: "mel_frames"}, "waveform": {2: "samples"}})

    def __init__(self, vocoder: BigVGAN):
        super().__init__()
        self.vocoder = vocoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.vocoder(mel)
