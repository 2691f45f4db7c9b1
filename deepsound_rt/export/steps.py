"""What the registry needs to export DeepSound's other networks: the separator's core and the MLLM's
vision encoder, audio encoder and LLM decoder (modules in ``deepsound_rt/models/step_graphs.py``).

Their weights: the dev preset's tiny random instances (the seed the Engine uses), full-size random
ones with ``random_weights``, or, for the separator, the official checkpoint in the weights
directory. The MLLM is exported from random weights only: its checkpoint directories are not part
of an export's weights source yet.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

import torch
from torch import nn

from ..models.bs_roformer import BSRoformer, BSRoformerConfig, load_separator_file
from ..models.loading import DEV_SEED
from ..models.mllm.audio_input import SAMPLE_RATE, audio_features
from ..models.mllm.decoding import new_cache
from ..models.mllm.videollama2 import VideoLLaMA2AV
from ..models.step_graphs import (
    MLLM_AUDIO,
    MLLM_DECODER,
    MLLM_VISION,
    SEPARATOR_CORE,
    ExportedDecoder,
    MllmAudioGraph,
    MllmDecoderGraph,
    MllmVisionGraph,
    SeparatorCoreGraph,
)
from ..stages.separate import SEPARATOR_FILE, VIPERX_BATCH_SIZE, VIPERX_CHUNK_SIZE, load_separator
from ..weights_dir import find_weight_file
from .manifest import AxisRange, ExportError

if TYPE_CHECKING:
    from ..backends.base import Graph
    from .registry import ExportContext

CPU = torch.device("cpu")
VIDEOLLAMA2 = "videollama2"
"""The whole MLLM in the family's modules: the decoder's parity runs it as the torch stage does."""
DECODER_MAX_TOKENS = 8192
"""Longest prefill and longest cache the decoder's TensorRT profile covers: a judge prompt is about
3000 tokens (1352 video + 1496 audio + text), and decoding adds up to 2048."""
DECODER_MAX_LOGITS = 256
"""Most logit rows one call returns: draft verification asks for the draft's length plus one."""
DECODER_CHECK_TOKENS = 12
DECODER_CHECK_LOGITS = 3


def _separator_network(ctx: ExportContext) -> BSRoformer:
    if ctx.preset.random_weights:
        return load_separator(None, CPU, torch.float32, tiny_seed=DEV_SEED).model
    if ctx.random_weights:
        return load_separator(None, CPU, torch.float32, random_seed=DEV_SEED).model
    if ctx.weights is None:
        raise ExportError("the separator graph needs --weights DIR holding the BS-RoFormer checkpoint")
    return load_separator_file(find_weight_file(ctx.weights, SEPARATOR_FILE))


def separator_modules(ctx: ExportContext) -> dict[str, nn.Module]:
    return {SEPARATOR_CORE: SeparatorCoreGraph(_separator_network(ctx)).eval()}


def mllm_modules(ctx: ExportContext) -> dict[str, nn.Module]:
    """The three MLLM graphs over one fp32 model, plus the model itself (:data:`VIDEOLLAMA2`)."""
    from ..models.mllm.tiny import full_size_random_mllm, tiny_mllm

    if ctx.preset.random_weights:
        model, _ = tiny_mllm(DEV_SEED)
    elif ctx.random_weights:
        model, _ = full_size_random_mllm(DEV_SEED, CPU, torch.float32)
    else:
        raise ExportError("the MLLM graphs are exported from random weights only (the dev preset, or "
                          "--random-weights): exporting a VideoLLaMA2 checkpoint is not supported yet")
    if model.config.llm.use_sliding_window:
        raise ExportError("the exported LLM decoder has no sliding-window attention, and this config uses it")
    return {VIDEOLLAMA2: model, MLLM_VISION: MllmVisionGraph(model).eval(), MLLM_AUDIO: MllmAudioGraph(model).eval(),
            MLLM_DECODER: MllmDecoderGraph(model).eval()}


def _mllm(ctx: ExportContext, typed: bool = False) -> VideoLLaMA2AV:
    return (ctx.typed_modules if typed else ctx.modules)("mllm")[VIDEOLLAMA2]


def _rng() -> torch.Generator:
    """Seeded as the registry seeds its inputs (imported here: the registry imports this module)."""
    from .registry import INPUT_SEED

    return torch.Generator().manual_seed(INPUT_SEED)


# -- separator ------------------------------------------------------------------------------------


def _separator_config(ctx: ExportContext) -> BSRoformerConfig:
    return ctx.modules("separator")[SEPARATOR_CORE].separator.config


def separator_axes(ctx: ExportContext) -> dict[str, AxisRange]:
    """Chunks up to demix's batch; frames up to one demix chunk's (what every call has), so
    TensorRT optimises for exactly that while ``verify`` may check fewer."""
    frames = VIPERX_CHUNK_SIZE // _separator_config(ctx).stft_hop_length + 1
    return {"chunks": AxisRange(1, VIPERX_BATCH_SIZE, VIPERX_BATCH_SIZE), "frames": AxisRange(1, frames, frames)}


def separator_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """STFT-scale values (a chunk of audio in [-1, 1] gives bins of magnitude up to ~100)."""
    config = _separator_config(ctx)
    shape = (sizes["chunks"], config.audio_channels, config.stft_n_fft // 2 + 1, sizes["frames"], 2)
    return {"mix_spectrum": 10 * torch.randn(shape, generator=_rng())}


# -- MLLM -----------------------------------------------------------------------------------------


def vision_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """SigLIP pixel values in [-1, 1], as many frames as the model samples."""
    model = _mllm(ctx)
    size = model.vision_tower.config.image_size
    return {"pixels": torch.rand(model.config.num_frames, 3, size, size, generator=_rng()) * 2 - 1}


def audio_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """The fbank of 8 s of noise, made as the judge makes it (30 s padded: 2998 frames)."""
    noise = 0.1 * torch.randn(8 * SAMPLE_RATE, generator=_rng())
    return {"fbank": audio_features(noise).float()}


def decoder_axes(ctx: ExportContext) -> dict[str, AxisRange]:
    """Traced at small sizes other than 1 (``torch.export`` specialises sizes of 1); the cache's
    ``opt`` is a judge prompt's length."""
    return {"new_tokens": AxisRange(1, 3, DECODER_MAX_TOKENS), "logit_rows": AxisRange(1, 2, DECODER_MAX_LOGITS),
            "past_tokens": AxisRange(1, 3072, DECODER_MAX_TOKENS)}


def decoder_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    module = ctx.modules("mllm")[MLLM_DECODER]
    config, rng = _mllm(ctx).config.llm, _rng()
    new = sizes["new_tokens"]
    head_dim = config.hidden_size // config.num_attention_heads
    cache_shape = (1, config.num_key_value_heads, sizes["past_tokens"], head_dim)
    inputs = {"inputs_embeds": 0.02 * torch.randn(1, new, config.hidden_size, generator=rng),
              "logit_positions": torch.arange(new - sizes["logit_rows"], new)}
    return inputs | {name: torch.randn(cache_shape, generator=rng) for name in module.signature.inputs[2:]}


def decoder_parity(ctx: ExportContext, graph: Graph, typed: bool = False) -> tuple[Callable[[], dict], Callable[[], dict]]:
    """A prefill of a few embedded tokens (several logit rows) and one decoding step on the cache
    it returned: the torch MLLM over a transformers cache (the torch stage; ``typed``: in the
    export's dtype) against the graph driven by :class:`ExportedDecoder` (the exported stage)."""
    model = _mllm(ctx, typed)
    ids = torch.randint(model.config.llm.vocab_size, (1, DECODER_CHECK_TOKENS + 1), generator=_rng())
    with torch.inference_mode():
        prompt, step = model.embed(ids[:, :-1]), model.embed(ids[:, -1:])

    def prefill_and_step(llm, cache) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            prefill = llm.logits(prompt, cache, DECODER_CHECK_LOGITS)
            return {"prefill_logits": prefill, "step_logits": llm.logits(step, cache)}

    exported = ExportedDecoder(model, graph)
    return (lambda: prefill_and_step(model, new_cache(model)),
            lambda: prefill_and_step(exported, exported.new_cache()))
