"""The generator split into graphs (modules with named tensor inputs and outputs), each with its
spec.

Each graph is what one backend call runs. The PyTorch backend calls these modules directly and
the exporter traces the very same modules, so both backends compute one definition.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from .bigvgan import BigVGAN
from .clip import ClipEncoder
from .loading import NETWORKS, GeneratorModels, load_generator_models
from .mmaudio.network import SYNC_FPS, Conditions, MMAudio
from .spec import AxisRange, ExportContext, GraphSpec, register_graph, up_to
from .synchformer import Synchformer
from .vae import VAE

PAIRED_CONDITIONS = tuple(f"paired_{name}" for name in Conditions._fields)
PROMPTS = ("waves crashing on rocks", "")


class ClipImageGraph(nn.Module):
    """CLIP's image tower over a clip's 8 fps frames."""

    def __init__(self, clip: ClipEncoder):
        super().__init__()
        self.clip = clip

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(1, T, 3, 384, 384) in [0, 1] -> (1, T, D) unit-norm image embeddings.

        ``encode_images`` with all frames in one batch, written out because its chunking (a split
        by the frame count) would fix T to the traced value in an export.
        """
        batch, length = frames.shape[:2]
        images = self.clip.normalized_images(frames)
        return self.clip.model.encode_image(images, normalize=True).reshape(batch, length, -1)


class ClipTextGraph(nn.Module):
    """CLIP's text tower, every token position (MMAudio's patched open_clip)."""

    def __init__(self, clip: ClipEncoder):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 77) token ids -> (B, 77, D) normalised last hidden states."""
        return self.clip.encode_tokens(tokens)


class SyncGraph(nn.Module):
    """Synchformer over a clip's 25 fps frames."""

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


    def __init__(self, flow: MMAudio, vae: VAE):
        super().__init__()
        self.vae = vae
        self.register_buffer("latent_mean", flow.latent_mean.detach().clone(), persistent=False)
        self.register_buffer("latent_std", flow.latent_std.detach().clone(), persistent=False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.latent_std.dtype) * self.latent_std + self.latent_mean
        return self.vae.decode(latents.transpose(1, 2))


class VocoderGraph(nn.Module):
    """BigVGAN: mel -> waveform."""

    def __init__(self, vocoder: BigVGAN):
        super().__init__()
        self.vocoder = vocoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.vocoder(mel)


# -- specs ------------------------------------------------------------------------------------


def generator_graph_modules(models: GeneratorModels) -> dict[str, nn.Module]:
    """The generator as named graphs, in pipeline order, for a backend to load or export."""
    return {
        "clip_image": ClipImageGraph(models.clip),
        "clip_text": ClipTextGraph(models.clip),
        "sync": SyncGraph(models.synchformer),
        "flow_conditions": FlowConditionsGraph(models.flow),
        "flow_velocity": FlowVelocityGraph(models.flow),
        "vae_decode": VaeDecodeGraph(models.flow, models.vae),
        "vocoder": VocoderGraph(models.vocoder),
    }


def release_unused(models: GeneratorModels, torch_graphs: Iterable[str]) -> None:
    """Free the weights of the networks that no graph in ``torch_graphs`` runs (their graphs run
    on an exported backend), so a CPU holds one copy of each network, not two."""
    needed = {network for name in torch_graphs for network in GENERATOR_SPECS[name].networks}
    for network in NETWORKS:
        if network not in needed:
            setattr(models, network, getattr(models, network).to("meta"))


def _export_modules(ctx: ExportContext) -> dict[str, nn.Module]:
    """fp32 networks on the CPU with the duration's tables, torch ops only (what an export traces)."""
    models = load_generator_models(ctx.preset, ctx.weights, torch.device("cpu"), torch.float32, ctx.weights_source)
    models.set_sequence_lengths(ctx.lengths["latent"], ctx.lengths["clip"], ctx.lengths["sync"])
    return {name: module.eval() for name, module in generator_graph_modules(models).items()}


def _build(name: str):
    def build(ctx: ExportContext) -> nn.Module:
        return ctx.shared("generator", _export_modules)[name]

    return build


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _clip_image_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    size = ctx.preset.clip.frame_size
    return {"frames": torch.rand(1, sizes["clip_frames"], 3, size, size, generator=ctx.rng())}


def _clip_text_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    tokens = ctx.module(CLIP_TEXT).clip.tokenize(list(PROMPTS))
    return {"tokens": tokens[: sizes["texts"]]}


def _sync_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    size = ctx.preset.synchformer.image_size
    return {"frames": torch.rand(1, sizes["sync_frames"], 3, size, size, generator=ctx.rng()) * 2 - 1}


def _condition_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    flow, rng = ctx.preset.flow, ctx.rng()
    return {
        "clip_f": _unit(torch.randn(1, ctx.lengths["clip"], flow.clip_dim, generator=rng)),
        "sync_f": torch.randn(1, ctx.lengths["sync"], flow.sync_dim, generator=rng),
        "text_f": _unit(torch.randn(1, flow.text_seq_len, flow.text_dim, generator=rng)),
        "negative_text_f": _unit(torch.randn(1, flow.text_seq_len, flow.text_dim, generator=rng)),
    }


def _velocity_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Paired conditions as the conditions graph makes them, so magnitudes are realistic."""
    with torch.inference_mode():
        paired = ctx.module(FLOW_CONDITIONS)(*_condition_inputs(ctx, sizes).values())
    x = torch.randn(1, ctx.lengths["latent"], ctx.preset.flow.latent_dim, generator=ctx.rng())
    return {"x": x, "t": torch.tensor(0.37), "cfg_strength": torch.tensor(4.5),
            **{name: value.clone() for name, value in zip(PAIRED_CONDITIONS, paired)}}


def _vae_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    return {"latents": torch.randn(1, sizes["latent_frames"], ctx.preset.flow.latent_dim, generator=ctx.rng())}


def _vocoder_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Log-mel-like values (around -5, spread 2), not unit noise."""
    mel = torch.randn(1, ctx.preset.vocoder.num_mels, sizes["mel_frames"], generator=ctx.rng())
    return {"mel": 2 * mel - 5}


def _sync_frames(ctx: ExportContext) -> int:
    """25 fps frames the video loader hands over for the context's duration."""
    return int(SYNC_FPS * ctx.duration_s)


CLIP_IMAGE = register_graph(GraphSpec(
    "clip_image", "generator", ("frames",), ("features",), _build("clip_image"), _clip_image_inputs,
    dynamic_axes={"frames": {1: "clip_frames"}, "features": {1: "clip_frames"}},
    axes=lambda ctx: {"clip_frames": up_to(1, ctx.lengths["clip"])},
    check_sizes=lambda ctx: {"clip_frames": min(2, ctx.lengths["clip"])}, networks=("clip",)))
CLIP_TEXT = register_graph(GraphSpec(
    "clip_text", "generator", ("tokens",), ("features",), _build("clip_text"), _clip_text_inputs,
    dynamic_axes={"tokens": {0: "texts"}, "features": {0: "texts"}},
    axes=lambda ctx: {"texts": AxisRange(1, 2, 2)}, networks=("clip",)))
SYNC = register_graph(GraphSpec(
    "sync", "generator", ("frames",), ("features",), _build("sync"), _sync_inputs,
    dynamic_axes={"frames": {1: "sync_frames"}, "features": {1: "sync_tokens"}},
    axes=lambda ctx: {"sync_frames": up_to(16, _sync_frames(ctx))},
    check_sizes=lambda ctx: {"sync_frames": min(24, _sync_frames(ctx))}, networks=("synchformer",)))
FLOW_CONDITIONS = register_graph(GraphSpec(
    "flow_conditions", "generator", ("clip_f", "sync_f", "text_f", "negative_text_f"), PAIRED_CONDITIONS,
    _build("flow_conditions"), _condition_inputs, networks=("flow",)))
FLOW_VELOCITY = register_graph(GraphSpec(
    "flow_velocity", "generator", ("x", "t", "cfg_strength", *PAIRED_CONDITIONS), ("velocity",),
    _build("flow_velocity"), _velocity_inputs, fp32_inputs=frozenset({"t", "cfg_strength"}), networks=("flow",),
    cuda_graph=True, compile=True))
VAE_DECODE = register_graph(GraphSpec(
    "vae_decode", "generator", ("latents",), ("mel",), _build("vae_decode"), _vae_inputs,
    dynamic_axes={"latents": {1: "latent_frames"}, "mel": {2: "mel_frames"}},
    axes=lambda ctx: {"latent_frames": up_to(1, ctx.lengths["latent"])},
    check_sizes=lambda ctx: {"latent_frames": min(16, ctx.lengths["latent"])}, networks=("vae",),
    cuda_graph=True))
# Our kernels serve the vocoder's 109 SnakeBeta activations: on a 2-core CPU torch with the C++
# kernel runs it 1.2-1.6x faster than ONNX Runtime runs its export
# (benchmarks/results/cpu-epyc-2core/bench_backends.md), so ``auto`` keeps it on torch there.
VOCODER = register_graph(GraphSpec(
    "vocoder", "generator", ("mel",), ("waveform",), _build("vocoder"), _vocoder_inputs,
    dynamic_axes={"mel": {2: "mel_frames"}, "waveform": {2: "samples"}},
    axes=lambda ctx: {"mel_frames": up_to(2, 2 * ctx.lengths["latent"])},
    check_sizes=lambda ctx: {"mel_frames": min(32, 2 * ctx.lengths["latent"])}, networks=("vocoder",),
    kernels=True, cuda_graph=True))

GENERATOR_SPECS = {spec.name: spec for spec in (CLIP_IMAGE, CLIP_TEXT, SYNC, FLOW_CONDITIONS, FLOW_VELOCITY,
                                                VAE_DECODE, VOCODER)}
GENERATOR_GRAPHS = tuple(GENERATOR_SPECS)
"""The generator's graphs in pipeline order."""
