"""Memory tiers: which networks stay on the compute device, in which precision, and whether a tier
fits the device at all (checked before anything loads).

- ``max``: every network resident; the fastest.
- ``balanced``: the generator stays resident; the MLLM and the separator are on the device only
  while their step runs (pinned host copies between steps, see :mod:`deepsound_rt.residency`).
- ``low``: ``balanced``, plus int8 weights for the MLLM's language model, and CLIP and the
  Synchformer on the device only while the generator computes its features (kept as host copies
  between clips: reading them again from disk would cost seconds per clip, host memory is cheap).

A tier changes memory and time only; the int8 weights change the MLLM's logits within the bound
stated in :mod:`deepsound_rt.models.mllm.quantize`. On a CPU, host and device are one memory, so
there only the int8 weights save anything; the same holds on unified-memory boards (Jetson).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import DeepSoundError
from .options import MEMORY_TIERS
from .weights_dir import WeightsSource

GIB = 2**30

# Activation allowance of each step's largest moment, in GiB at 2 bytes per value (scaled by the
# dtype), full-size networks, 10 s clip. Estimates: the H100 measured a 23.4 GiB peak for `max` in
# bf16 (46.6 GiB in fp32) over 20.7 GiB (41.5 GiB) of weights, so the largest step needs about
# 2.7 GiB (5.1 GiB) beyond the weights; we take that step to be the separator (4 chunks of 8 s
# stereo through 512-wide band transformers) and give the MLLM (2,900 tokens) and the generator
# less. The GPU table (`deepsound-rt bench --memory ...`, per stage) replaces these guesses.
ACTIVATIONS_GIB = {"generate": 1.5, "mllm": 1.5, "remove": 2.7}
DEV_ACTIVATIONS_GIB = 0.25  # any step of the tiny dev networks


@dataclass(frozen=True)
class Tier:
    name: str
    offload_steps: bool  # MLLM and separator on the device only during their steps
    offload_encoders: bool  # CLIP and Synchformer on the device only during the features
    int8_by_default: bool  # what mllm_precision="auto" means


TIERS = {
    "max": Tier("max", offload_steps=False, offload_encoders=False, int8_by_default=False),
    "balanced": Tier("balanced", offload_steps=True, offload_encoders=False, int8_by_default=False),
    "low": Tier("low", offload_steps=True, offload_encoders=True, int8_by_default=True),
}


def resolve_tier(memory: str, mllm_precision: str) -> tuple[Tier, bool]:
    """(the tier, whether the MLLM's language model runs on int8 weights), for values EngineConfig
    has validated."""
    tier = TIERS[memory]
    return tier, mllm_precision == "int8" or (mllm_precision == "auto" and tier.int8_by_default)


@dataclass(frozen=True)
class PipelineBytes:
    """Bytes of weights per group of networks at the Engine's dtype (0: not part of this Engine)."""

    generator: int  # flow network, VAE, vocoder: resident in every tier
    encoders: int  # CLIP and the Synchformer
    mllms: tuple[int, ...]  # each MLLM checkpoint (the planner, and the judge's when it is another)
    mllms_int8: tuple[int, ...]  # the same with int8 language-model weights
    int8_transient: int  # the largest int8 weight dequantised to the dtype (a matmul's temporary)
    separator: int
    activation_scale: float  # bytes per value / 2, or 0 for the dev preset's tiny networks

    def activations(self, step: str) -> int:
        if not self.activation_scale:
            return int(DEV_ACTIVATIONS_GIB * GIB)
        return int(ACTIVATIONS_GIB[step] * GIB * self.activation_scale)


def tier_need(sizes: PipelineBytes, tier: Tier, int8: bool, host_is_device: bool) -> int:
    """Bytes of device memory the tier's largest step needs: the resident weights, the step's own
    weights when they are offloaded, and the step's activations."""
    mllms = sizes.mllms_int8 if int8 else sizes.mllms
    offloaded_steps = tier.offload_steps and not host_is_device
    offloaded_encoders = tier.offload_encoders and not host_is_device
    resident = sizes.generator
    resident += 0 if offloaded_encoders else sizes.encoders
    resident += 0 if offloaded_steps else sum(mllms) + sizes.separator
    steps = [resident + (sizes.encoders if offloaded_encoders else 0) + sizes.activations("generate")]
    if mllms:
        step_weights = max(mllms) if offloaded_steps else 0
        steps.append(resident + step_weights + sizes.activations("mllm") + (sizes.int8_transient if int8 else 0))
    if sizes.separator:
        steps.append(resident + (sizes.separator if offloaded_steps else 0) + sizes.activations("remove"))
    return max(steps)


def free_bytes(device: torch.device) -> int:
    """Free memory of the device: CUDA's own count, or the RAM Linux says is available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(sizes: PipelineBytes, memory: str, mllm_precision: str, device: torch.device) -> None:
    """Refuse, in one line, a tier whose estimated need exceeds the device's free memory, naming
    the fastest tier that would fit."""
    host_is_device = device.type != "cuda"
    needs = {name: tier_need(sizes, *resolve_tier(name, mllm_precision), host_is_device) for name in MEMORY_TIERS}
    free = free_bytes(device)
    if needs[memory] <= free:
        return
    fitting = [name for name in MEMORY_TIERS if needs[name] <= free]
    hint = (f"--memory {fitting[0]} needs about {needs[fitting[0]] / GIB:.1f} GiB" if fitting
            else f"no tier fits (low needs about {needs['low'] / GIB:.1f} GiB)")
    raise DeepSoundError(f"memory tier '{memory}' needs about {needs[memory] / GIB:.1f} GiB on {device} "
                         f"(weights plus its largest step's activations), but {free / GIB:.1f} GiB is free; {hint}")


def mllm_parts(model) -> list[nn.Module]:
    """A VideoLLaMA2AV's modules in the order a step first uses them (the order their weights are
    copied in): the vision tower, which the model keeps outside its module tree, the connectors
    and the audio tower, then the rest (the LLM)."""
    return [model.vision_tower, model.model.mm_projector, model.model.audio_tower, model.model.mm_projector_a, model]


# --- sizes, counted on the meta device (nothing allocated, nothing read but config files) -------


def module_bytes(module: nn.Module, bytes_per_value: int) -> int:
    """Floating-point parameters and buffers at ``bytes_per_value``, others at their own size."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}.values()
    return sum(t.numel() * (bytes_per_value if t.is_floating_point() else t.element_size()) for t in tensors)


@functools.lru_cache(maxsize=None)
def _generator_bytes(preset_name: str, value_bytes: int) -> tuple[int, int]:
    """(flow + VAE + vocoder, CLIP + Synchformer) in bytes."""
    from .config import PRESETS
    from .models.bigvgan import BigVGAN
    from .models.clip import ClipEncoder
    from .models.mmaudio.network import TRAINING_DURATION_S, MMAudio, sequence_lengths
    from .models.synchformer import Synchformer
    from .models.vae import VAE

    preset = PRESETS[preset_name]
    with torch.device("meta"):
        lengths = sequence_lengths(TRAINING_DURATION_S, preset.sampling_rate, preset.hop_length)
        vae = VAE(preset.vae.data_dim, preset.vae.embed_dim, preset.vae.hidden_dim)
        vae.encoder = None  # the loader drops it: generation only decodes
        core = [MMAudio(preset.flow, *lengths), vae, BigVGAN(preset.vocoder)]
        encoders = [ClipEncoder(preset.clip), Synchformer(preset.synchformer)]
    return sum(module_bytes(m, value_bytes) for m in core), sum(module_bytes(m, value_bytes) for m in encoders)


def _mllm_config(llm_dir: str | None, siglip_dir: str | None, tiny: bool):
    """The (VideoLLaMA2Config, SigLIP config) an MLLM would load with; the documented 7B model's
    when the directory's config cannot be read (loading it reports that, later, in full)."""
    from .models.mllm import videollama2 as vl
    from .models.mllm.tiny import TINY_VOCAB_SIZE, tiny_config_json
    from .models.mllm.vision import siglip_so400m_config, siglip_tiny_config

    if tiny:
        return vl.VideoLLaMA2Config.from_dict(tiny_config_json(TINY_VOCAB_SIZE)), siglip_tiny_config()
    config, siglip = vl.VIDEOLLAMA2_1_7B_AV, siglip_so400m_config()
    if llm_dir is not None:
        try:
            from .stages.reason import _find_siglip

            config = vl._read_config(Path(llm_dir))
            siglip = vl.siglip_config_from_dir(Path(siglip_dir) if siglip_dir else _find_siglip(Path(llm_dir)))
        except (DeepSoundError, OSError, ValueError, KeyError):
            pass
    return vl.VideoLLaMA2Config.from_dict(config), siglip


@functools.lru_cache(maxsize=None)
def _mllm_bytes(llm_dir: str | None, siglip_dir: str | None, tiny: bool, value_bytes: int) -> tuple[int, int, int]:
    """(full precision, int8 language model, largest int8 weight dequantised) in bytes."""
    from transformers import SiglipVisionModel

    from .models.mllm.quantize import llm_linears
    from .models.mllm.videollama2 import VideoLLaMA2AV

    config, siglip = _mllm_config(llm_dir, siglip_dir, tiny)
    with torch.device("meta"):
        model = VideoLLaMA2AV(config, SiglipVisionModel(siglip))
    full = module_bytes(model, value_bytes) + module_bytes(model.vision_tower, value_bytes)
    weights = [linear.weight for _, linear in llm_linears(model)]
    # int8 values, plus a float32 step and an int8 zero point per output channel.
    saved = sum(w.numel() * (value_bytes - 1) - w.shape[0] * 5 for w in weights)
    return full, full - saved, max(w.numel() for w in weights) * value_bytes


def pipeline_bytes(engine) -> PipelineBytes:
    """What the Engine's tiers would hold: its preset's generator, the MLLM(s) it is configured
    with and the separator when one is available. ``engine`` needs only its config, preset, dtype
    and the ``has_planner``/``separator_path`` answers, which read no weights."""
    config, preset = engine.config, engine.preset
    value_bytes = torch.empty(0, dtype=engine.dtype).element_size()
    tiny = config.weights_source is WeightsSource.TINY_RANDOM  # the MLLM and separator at toy widths
    core, encoders = _generator_bytes(preset.name, value_bytes)
    if config.weights_source.random:
        dirs = [None]
    else:
        dirs = [config.mllm] if config.mllm is not None else []
        if config.judge_mllm not in (None, config.mllm):
            dirs.append(config.judge_mllm)
    sizes = [_mllm_bytes(str(d) if d else None, str(config.siglip) if config.siglip else None, tiny, value_bytes)
             for d in dirs]
    separator = 0
    try:
        if not config.weights_source.random:
            engine.separator_path()
        separator = _separator_bytes(tiny, value_bytes)
    except DeepSoundError:
        pass  # no separator checkpoint: step 3 cannot run, and fails with its own message if asked
    return PipelineBytes(core, encoders, tuple(s[0] for s in sizes),
                         tuple(s[1] for s in sizes), max((s[2] for s in sizes), default=0), separator,
                         0.0 if not preset.files else value_bytes / 2)


@functools.lru_cache(maxsize=None)
def _separator_bytes(tiny: bool, value_bytes: int) -> int:
    from .models.bs_roformer import BSROFORMER_TINY, BSROFORMER_VIPERX_317, BSRoformer

    with torch.device("meta"):
        return module_bytes(BSRoformer(BSROFORMER_TINY if tiny else BSROFORMER_VIPERX_317), value_bytes)
