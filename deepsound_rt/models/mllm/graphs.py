"""The MLLM's vision encoder, audio encoder and LLM decoder as graphs, with their specs.

The exporter traces these modules and ``verify`` compares them with ONNX Runtime; at runtime the
reasoning stage keeps its torch code and swaps in an exported graph where the Engine has one
(:class:`ExportedDecoder` for the LLM). The MLLM is exported from random weights only: its
checkpoint directories are not part of an export's weights source yet.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

from ...errors import WeightsError
from ...weights_dir import DEV_SEED, WeightsSource
from ..spec import AxisRange, ExportContext, GraphSpec, Outputs, register_graph
from .audio_input import SAMPLE_RATE, audio_features
from .decoding import new_cache
from .videollama2 import VideoLLaMA2AV, encode_audio_fbank, encode_video_features
from .vision import patch_features

if TYPE_CHECKING:
    from ...backends.base import Graph

MLLM_VISION = "mllm_vision"
MLLM_AUDIO = "mllm_audio"
MLLM_DECODER = "mllm_decoder"
MLLM_GRAPHS = (MLLM_VISION, MLLM_AUDIO, MLLM_DECODER)
DECODER_MAX_TOKENS = 8192
"""Longest prefill and longest cache the decoder's TensorRT profile covers: a judge prompt is about
3000 tokens (1352 video + 1496 audio + text), and decoding adds up to 2048."""
DECODER_MAX_LOGITS = 256
"""Most logit rows one call returns: draft verification asks for the draft's length plus one."""
DECODER_CHECK_TOKENS = 12
DECODER_CHECK_LOGITS = 3

CACHE_SLOTS = 1
"""Key/value positions in front of the real cache that attention always masks out: the prefill's
past is this one zero slot instead of an empty tensor, so no graph input ever has a zero-sized
axis (TensorRT optimisation profiles start at 1)."""


class MllmVisionGraph(nn.Module):
    """(16, 3, 384, 384) SigLIP pixels -> (1352, hidden) video tokens: SigLIP's second-to-last
    layer and the STC connector (:meth:`VideoLLaMA2AV.encode_video`)."""

    def __init__(self, model: VideoLLaMA2AV):
        super().__init__()
        self.vision_tower = model.vision_tower
        self.connector = model.model.mm_projector
        self.select_layer = model.config.select_layer

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = patch_features(self.vision_tower, pixels, self.select_layer)
        return encode_video_features(self.connector, features.to(self.connector.readout[0].weight.dtype))


class MllmAudioGraph(nn.Module):
    """(1, 2998, 128) raw fbank -> (1496, hidden) audio tokens: BEATs and the audio projector
    (:meth:`VideoLLaMA2AV.encode_audio`)."""

    def __init__(self, model: VideoLLaMA2AV):
        super().__init__()
        self.audio_tower = model.model.audio_tower
        self.projector = model.model.mm_projector_a

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return encode_audio_fbank(self.audio_tower, self.projector, fbank.to(self.projector[0].weight.dtype))


def cache_names(num_layers: int, prefix: str) -> tuple[str, ...]:
    """``{prefix}_key_0, {prefix}_value_0, ...``: one key and one value tensor per layer."""
    return tuple(f"{prefix}_{kind}_{layer}" for layer in range(num_layers) for kind in ("key", "value"))


class MllmDecoderGraph(nn.Module):
    """One Qwen2 pass over new input embeddings on top of explicit per-layer key/value tensors.

    Inputs: ``inputs_embeds`` (1, n, hidden), ``logit_positions`` (m,) int64 (rows of the n new
    positions whose logits are wanted: the last one for a decoding step, the draft's for draft
    verification) and ``past_{key,value}_{layer}`` (1, kv_heads, slots + past, head_dim). Outputs:
    ``logits`` (m, vocab) and ``present_*`` = past and new keys/values concatenated.

    Written with the checkpoint's own modules but without transformers' cache and mask machinery,
    so the graph is straight-line: positions and the causal mask come from tensor shapes, and
    the leading :data:`CACHE_SLOTS` are masked out. Full attention only (VideoLLaMA2.1's Qwen2
    has no sliding window; the exporter refuses a config that has one).
    """

    def __init__(self, model: VideoLLaMA2AV):
        super().__init__()
        language_model = model.model
        self.layers = language_model.layers
        self.norm = language_model.norm
        self.rotary_emb = language_model.rotary_emb
        self.lm_head = model.lm_head

    def forward(self, inputs_embeds: torch.Tensor, logit_positions: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        new, stored = inputs_embeds.shape[1], past[0].shape[2]
        device = inputs_embeds.device
        positions = torch.arange(new, device=device) + (stored - CACHE_SLOTS)
        cos, sin = self.rotary_emb(inputs_embeds, positions.unsqueeze(0))
        keys = torch.arange(stored + new, device=device)
        visible = (keys[None, :] <= positions[:, None] + CACHE_SLOTS) & (keys[None, :] >= CACHE_SLOTS)
        hidden, present = inputs_embeds, []
        for layer, past_key, past_value in zip(self.layers, past[0::2], past[1::2]):
            attention = layer.self_attn
            head_shape = (1, new, -1, attention.head_dim)
            normed = layer.input_layernorm(hidden)
            query = attention.q_proj(normed).view(head_shape).transpose(1, 2)
            key = attention.k_proj(normed).view(head_shape).transpose(1, 2)
            value = attention.v_proj(normed).view(head_shape).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            key, value = torch.cat([past_key, key], dim=2), torch.cat([past_value, value], dim=2)
            present += [key, value]
            groups = attention.num_key_value_groups
            out = F.scaled_dot_product_attention(query, repeat_kv(key, groups), repeat_kv(value, groups),
                                                 attn_mask=visible, scale=attention.scaling)
            hidden = hidden + attention.o_proj(out.transpose(1, 2).reshape(1, new, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        logits = self.lm_head(self.norm(hidden)[0].index_select(0, logit_positions))
        return (logits.float(), *present)


class DecoderCache:
    """The exported decoder's key/value tensors, with the ``crop``/``get_seq_length`` of a
    transformers cache that greedy decoding uses."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = tensors

    def get_seq_length(self) -> int:
        return self.tensors[0].shape[2] - CACHE_SLOTS

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` positions (negative: drop that many), as DynamicCache does."""
        keep = max_length if max_length >= 0 else self.get_seq_length() + max_length
        self.tensors = [t[:, :, : CACHE_SLOTS + keep] for t in self.tensors]


class ExportedDecoder:
    """The LLM interface greedy decoding needs (``embed``, ``new_cache``, ``logits``) with the
    decoder running as a backend graph; token embedding stays a torch table lookup."""

    def __init__(self, model: VideoLLaMA2AV, graph: Graph):
        config = model.config.llm
        self.model = model
        self.graph = graph
        self.past_names = cache_names(config.num_hidden_layers, "past")
        self.present_names = cache_names(config.num_hidden_layers, "present")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.slot_shape = (1, config.num_key_value_heads, CACHE_SLOTS, head_dim)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(ids)

    def new_cache(self) -> DecoderCache:
        return DecoderCache([torch.zeros(self.slot_shape, device=self.model.device) for _ in self.past_names])

    def logits(self, inputs_embeds: torch.Tensor, cache: DecoderCache, num_logits: int = 1) -> torch.Tensor:
        """float32 (num_logits, vocab) logits of the last positions; ``cache`` is extended."""
        new = inputs_embeds.shape[1]
        positions = torch.arange(new - num_logits, new)
        outputs = self.graph.run({"inputs_embeds": inputs_embeds, "logit_positions": positions,
                                  **dict(zip(self.past_names, cache.tensors))})
        cache.tensors = [outputs[name] for name in self.present_names]
        return outputs["logits"].float()


# -- specs ------------------------------------------------------------------------------------

VIDEOLLAMA2 = "videollama2"


def _model(ctx: ExportContext, typed: bool = False) -> VideoLLaMA2AV:
    """One fp32 model for the three graphs (and the decoder's parity, which runs it as the torch
    stage does); ``typed``: its copy in the export's dtype."""
    return (ctx.typed if typed else ctx.shared)(VIDEOLLAMA2, _build_model)


def _build_model(ctx: ExportContext) -> VideoLLaMA2AV:
    from .tiny import full_size_random_mllm, tiny_mllm

    if ctx.weights_source is WeightsSource.TINY_RANDOM:
        model, _ = tiny_mllm(DEV_SEED)
    elif ctx.weights_source is WeightsSource.FULL_RANDOM:
        model, _ = full_size_random_mllm(DEV_SEED, torch.device("cpu"), torch.float32)
    else:
        raise WeightsError("the MLLM graphs are exported from random weights only (the dev preset, or "
                           "--random-weights): exporting a VideoLLaMA2 checkpoint is not supported yet")
    if model.config.llm.use_sliding_window:
        raise WeightsError("the exported LLM decoder has no sliding-window attention, and this config uses it")
    return model


def _vision_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """SigLIP pixel values in [-1, 1], as many frames as the model samples."""
    model = _model(ctx)
    size = model.vision_tower.config.image_size
    return {"pixels": torch.rand(model.config.num_frames, 3, size, size, generator=ctx.rng()) * 2 - 1}


def _audio_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """The fbank of 8 s of noise, made as the judge makes it (30 s padded: 2998 frames)."""
    noise = 0.1 * torch.randn(8 * SAMPLE_RATE, generator=ctx.rng())
    return {"fbank": audio_features(noise).float()}


def _decoder_io(module: MllmDecoderGraph) -> dict:
    """Names of a decoder of ``module``'s depth: one key and one value cache per layer."""
    past, present = cache_names(len(module.layers), "past"), cache_names(len(module.layers), "present")
    return {"inputs": ("inputs_embeds", "logit_positions", *past), "outputs": ("logits", *present),
            "dynamic_axes": {"inputs_embeds": {1: "new_tokens"}, "logit_positions": {0: "logit_rows"},
                             "logits": {0: "logit_rows"}, **{name: {2: "past_tokens"} for name in past},
                             **{name: {2: "cache_tokens"} for name in present}}}


def _decoder_axes(ctx: ExportContext) -> dict[str, AxisRange]:
    """Traced at small sizes other than 1 (``torch.export`` specialises sizes of 1); the cache's
    ``opt`` is a judge prompt's length."""
    return {"new_tokens": AxisRange(1, 3, DECODER_MAX_TOKENS), "logit_rows": AxisRange(1, 2, DECODER_MAX_LOGITS),
            "past_tokens": AxisRange(1, 3072, DECODER_MAX_TOKENS)}


def _decoder_inputs(ctx: ExportContext, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    config, rng = _model(ctx).config.llm, ctx.rng()
    new = sizes["new_tokens"]
    head_dim = config.hidden_size // config.num_attention_heads
    cache_shape = (1, config.num_key_value_heads, sizes["past_tokens"], head_dim)
    inputs = {"inputs_embeds": 0.02 * torch.randn(1, new, config.hidden_size, generator=rng),
              "logit_positions": torch.arange(new - sizes["logit_rows"], new)}
    past = cache_names(config.num_hidden_layers, "past")
    return inputs | {name: torch.randn(cache_shape, generator=rng) for name in past}


def _decoder_parity(ctx: ExportContext, graph: Graph, typed: bool = False) -> tuple[Outputs, Outputs]:
    """A prefill of a few embedded tokens (several logit rows) and one decoding step on the cache
    it returned: the torch MLLM over a transformers cache (the torch stage; ``typed``: in the
    export's dtype) against the graph driven by :class:`ExportedDecoder` (the exported stage)."""
    model = _model(ctx, typed)
    ids = torch.randint(model.config.llm.vocab_size, (1, DECODER_CHECK_TOKENS + 1), generator=ctx.rng())
    with torch.inference_mode():
        prompt, step = model.embed(ids[:, :-1]), model.embed(ids[:, -1:])

    def prefill_and_step(llm, cache) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            prefill = llm.logits(prompt, cache, DECODER_CHECK_LOGITS)
            return {"prefill_logits": prefill, "step_logits": llm.logits(step, cache)}

    exported = ExportedDecoder(model, graph)
    return (lambda: prefill_and_step(model, new_cache(model)),
            lambda: prefill_and_step(exported, exported.new_cache()))


TINY_ONLY = frozenset({WeightsSource.TINY_RANDOM.value})
MLLM_VISION_SPEC = register_graph(GraphSpec(
    MLLM_VISION, "mllm", ("pixels",), ("video_tokens",), lambda ctx: MllmVisionGraph(_model(ctx)).eval(),
    _vision_inputs, networks=("mllm",), exported_with=TINY_ONLY))
MLLM_AUDIO_SPEC = register_graph(GraphSpec(
    MLLM_AUDIO, "mllm", ("fbank",), ("audio_tokens",), lambda ctx: MllmAudioGraph(_model(ctx)).eval(),
    _audio_inputs, networks=("mllm",), exported_with=TINY_ONLY))
MLLM_DECODER_SPEC = register_graph(GraphSpec(
    MLLM_DECODER, "mllm", ("inputs_embeds", "logit_positions"), ("logits",),
    lambda ctx: MllmDecoderGraph(_model(ctx)).eval(), _decoder_inputs, axes=_decoder_axes, parity=_decoder_parity,
    io=_decoder_io, networks=("mllm",), exported_with=TINY_ONLY))
