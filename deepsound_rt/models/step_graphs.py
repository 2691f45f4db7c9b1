"""DeepSound's other networks as graphs: the vocal separator's core and the MLLM's two encoders and
its LLM decoder, with named inputs and outputs like the generator's graphs (``models/graphs.py``).

The exporter traces these modules and ``verify`` compares them with ONNX Runtime; at runtime the
stages keep their torch code and swap in an exported graph where the Engine has one
(:class:`ExportedDecoder` for the LLM, ``Separator.use_graphs`` for the separator).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

from .bs_roformer import BSRoformer
from .graphs import GraphSignature
from .mllm.videollama2 import VideoLLaMA2AV, encode_audio_fbank, encode_video_features
from .mllm.vision import patch_features

if TYPE_CHECKING:
    from ..backends.base import Graph

SEPARATOR_CORE = "separator_core"
MLLM_VISION = "mllm_vision"
MLLM_AUDIO = "mllm_audio"
MLLM_DECODER = "mllm_decoder"
SEPARATOR_GRAPHS = (SEPARATOR_CORE,)
MLLM_GRAPHS = (MLLM_VISION, MLLM_AUDIO, MLLM_DECODER)

CACHE_SLOTS = 1
"""Key/value positions in front of the real cache that attention always masks out: the prefill's
past is this one zero slot instead of an empty tensor, so no graph input ever has a zero-sized
axis (TensorRT optimisation profiles start at 1)."""


class SeparatorCoreGraph(nn.Module):
    """BS-RoFormer between its STFT and iSTFT (:meth:`BSRoformer.separate_spectrum`):
    (chunks, channels, bins, frames, [re, im]) mix -> (chunks, stems, channels, bins, frames, [re, im])."""

    signature = GraphSignature(
        ("mix_spectrum",), ("stem_spectrum",),
        {"mix_spectrum": {0: "chunks", 3: "frames"}, "stem_spectrum": {0: "chunks", 4: "frames"}},
        fp32_inputs=frozenset({"mix_spectrum"}))  # the mask multiplies the spectrum in float32

    def __init__(self, separator: BSRoformer):
        super().__init__()
        self.separator = separator

    def forward(self, mix_spectrum: torch.Tensor) -> torch.Tensor:
        return self.separator.separate_spectrum(mix_spectrum)


class MllmVisionGraph(nn.Module):
    """(16, 3, 384, 384) SigLIP pixels -> (1352, hidden) video tokens: SigLIP's second-to-last
    layer and the STC connector (:meth:`VideoLLaMA2AV.encode_video`)."""

    signature = GraphSignature(("pixels",), ("video_tokens",), {})

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

    signature = GraphSignature(("fbank",), ("audio_tokens",), {})

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
        config = model.config.llm
        language_model = model.model
        self.layers = language_model.layers
        self.norm = language_model.norm
        self.rotary_emb = language_model.rotary_emb
        self.lm_head = model.lm_head
        past = cache_names(config.num_hidden_layers, "past")
        present = cache_names(config.num_hidden_layers, "present")
        self.signature = GraphSignature(
            ("inputs_embeds", "logit_positions", *past), ("logits", *present),
            {"inputs_embeds": {1: "new_tokens"}, "logit_positions": {0: "logit_rows"}, "logits": {0: "logit_rows"},
             **{name: {2: "past_tokens"} for name in past}, **{name: {2: "cache_tokens"} for name in present}})

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
