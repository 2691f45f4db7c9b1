"""BEATs, VideoLLaMA2's audio tower: a Kaldi log-mel fbank (B, frames, 128) -> audio tokens (B, N, 768).

A 16x16 patch embedding over (frames, mel bins) gives a time-major grid of (frames // 16) x 8 tokens,
so the 2998-frame fbank of 30 s gives 187 x 8 = 1496 tokens. A weight-normed grouped conv adds
positions, then a post-LayerNorm ("deep norm") transformer whose attention carries a T5-style
relative position bias, computed once and gated per layer, head and query by a small GRU-like gate.

State-dict keys are the bare BEATs keys (``model.audio_tower.`` stripped). The positional conv keeps
its checkpoint's ``weight_g``/``weight_v`` because VideoLLaMA2's weight norm is not torch's: it uses
``rsqrt(sum v^2 + 1e-6)``, recomputed at every call as upstream does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import WeightsError
from ..fbank import beats_normalize
from ..weights import load_strict, state_shapes

WEIGHT_NORM_EPS = 1e-6
ATTENTION_LOGIT_SHIFT = 32.0
"""Upstream divides q by 32, subtracts the row max of q.k, then multiplies by 32 again: softmax-neutral,
but it keeps fp16 logits in range, so it is reproduced."""
FBANK_BINS = 128

# Upstream BEATsConfig fields that only matter for training (or, ``hidden_size``, for the projector).
_TRAINING_ONLY_FIELDS = frozenset(
    {
        "hidden_size",
        "layer_wise_gradient_decay_ratio",
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "encoder_layerdrop",
        "dropout_input",
        "predictor_dropout",
    }
)


@dataclass(frozen=True)
class BEATsConfig:
    """BEATs hyper-parameters that shape the network; defaults are VideoLLaMA2's ``BEATsConfig()``
    (BEATs iter3+ AS2M fine-tuned, the checkpoint behind VideoLLaMA2.1-AV)."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    deep_norm: bool = True
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    finetuned_model: bool = True
    predictor_class: int = 527

    @property
    def head_dim(self) -> int:
        return self.encoder_embed_dim // self.encoder_attention_heads

    @property
    def deep_norm_alpha(self) -> float:
        """Residual scale of the post-LayerNorm blocks: (2 * layers) ** 0.25, or 1 without deep norm."""
        return math.pow(2 * self.encoder_layers, 0.25) if self.deep_norm else 1.0

    def num_tokens(self, frames: int) -> int:
        """Audio tokens for an fbank of ``frames`` frames (trailing frames that fill no patch drop)."""
        return (frames // self.input_patch_size) * (FBANK_BINS // self.input_patch_size)

    @classmethod
    def from_dict(cls, cfg: Mapping) -> "BEATsConfig":
        """Build from an upstream config dict (a golden's ``constructor_config`` or a checkpoint's
        ``cfg``); training-only and unknown fields are ignored, as ``BEATsConfig.update`` ignores them
        at inference. Variants this definition does not implement are rejected by name."""
        unsupported = {
            "layer_norm_first": (cfg.get("layer_norm_first", False), False),
            "activation_fn": (cfg.get("activation_fn", "gelu"), "gelu"),
        }
        for name, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(f"BEATs with {name}={value!r} is not supported (only {supported!r})")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in known and k not in _TRAINING_ONLY_FIELDS})


BEATS_TINY = BEATsConfig(
    embed_dim=16,
    encoder_layers=2,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=64,
    encoder_attention_heads=2,
    conv_pos=8,
    conv_pos_groups=2,
    predictor_class=8,
)
"""A random-weight stand-in with every structural flag of the real model, for the dev preset."""


def relative_position_buckets(num_tokens: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """(N, N) bucket of key position j relative to query position i, T5-style and bidirectional.

    Half the buckets per sign (positive offsets use the upper half); offsets below a quarter of the
    buckets are exact, larger ones log-spaced up to ``max_distance`` and capped. Computed on the CPU
    in float32 with upstream's operation order so that boundary offsets land in the same bucket.
    """
    offsets = torch.arange(-(num_tokens - 1), num_tokens)
    per_sign = num_buckets // 2
    max_exact = per_sign // 2
    distance = offsets.abs()
    log_spaced = (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (per_sign - max_exact)
    ).to(torch.long)
    far = torch.clamp(max_exact + log_spaced, max=per_sign - 1)
    bucket_by_offset = (offsets > 0).to(torch.long) * per_sign + torch.where(distance < max_exact, distance, far)
    positions = torch.arange(num_tokens)
    return bucket_by_offset[positions[None, :] - positions[:, None] + num_tokens - 1]


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d whose weight is ``g * v * rsqrt(sum v^2 + 1e-6)``, the norm taken per kernel tap
    (over output and input channels), in float32 and cast back, as VideoLLaMA2's weight-norm fix does."""

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.padding = kernel_size // 2
        # Upstream's initialisation (normal, then g = |v| per tap), so random-weight presets are sane.
        direction = torch.randn(channels, channels // groups, kernel_size) * math.sqrt(4 / (kernel_size * channels))
        self.weight_g = nn.Parameter(direction.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(direction)
        self.bias = nn.Parameter(torch.zeros(channels))

    def effective_weight(self) -> torch.Tensor:
        direction = self.weight_v.float()
        squared_norm = direction.pow(2).sum(dim=(0, 1), keepdim=True)
        direction = direction * torch.rsqrt(squared_norm + WEIGHT_NORM_EPS)
        return self.weight_g * direction.to(self.weight_v.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.effective_weight(), self.bias, padding=self.padding, groups=self.groups)


class RelativeGatedAttention(nn.Module):
    """Multi-head self-attention plus a relative position bias scaled per head and query by
    ``gate_a * (gate_b * grep_a - 1) + 2``, the gates coming from the unscaled query."""

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        dim, heads = config.encoder_embed_dim, config.encoder_attention_heads
        if dim % heads:
            raise ValueError(f"encoder_embed_dim {dim} is not divisible by {heads} heads")
        self.num_heads = heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.gru_rel_pos = config.gru_rel_pos
        # Created by layer 0 only; the encoder hands the same module to every other layer.
        self.relative_attention_bias: nn.Embedding | None = None
        self.sdpa = False  # BEATs.use_sdpa
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        if config.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, position_bias: torch.Tensor | None, key_padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x (B, N, D); position_bias (B, H, N, N) ungated or None; key_padding_mask (B, N) or None."""
        if self.sdpa:
            return self._forward_sdpa(x, position_bias, key_padding_mask)
        batch, tokens, dim = x.shape
        q = self._split_heads(self.q_proj(x) * self.scaling * (1.0 / ATTENTION_LOGIT_SHIFT))
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        logits = q @ k.transpose(-1, -2)
        logits = (logits - logits.amax(dim=-1, keepdim=True)) * ATTENTION_LOGIT_SHIFT
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        if position_bias is not None:
            logits = logits + self._gated_bias(q * ATTENTION_LOGIT_SHIFT / self.scaling, position_bias)
        attention = F.softmax(logits, dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.out_proj(out)

    def _gated_bias(self, query: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        """The position bias scaled per head and query by the gates of the unscaled ``query``."""
        if not self.gru_rel_pos:
            return position_bias
        batch, heads, tokens, _ = query.shape
        gates = torch.sigmoid(self.grep_linear(query).view(batch, heads, tokens, 2, 4).sum(-1))
        gate_a, gate_b = gates.chunk(2, dim=-1)
        return (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * position_bias

    def _forward_sdpa(
        self, x: torch.Tensor, position_bias: torch.Tensor | None, key_padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The same attention through one fused kernel: upstream's q/32 and row-max shift change
        no softmax (they only keep fp16 logits in range, which the kernel's float32 softmax does
        anyway), so this is SDPA with scale head_dim^-0.5 and the gated bias (plus -inf at padding
        keys) as an additive mask."""
        batch, tokens, dim = x.shape
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        bias = None if position_bias is None else self._gated_bias(q, position_bias).to(q.dtype)
        if key_padding_mask is not None:
            padding = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
            padding = padding.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
            bias = padding if bias is None else bias + padding
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scaling)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class EncoderLayer(nn.Module):
    """Post-LayerNorm block: x = LN(alpha * x + attn(x)); x = LN(alpha * x + fc2(gelu(fc1(x))))."""

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.alpha = config.deep_norm_alpha
        self.self_attn = RelativeGatedAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, position_bias: torch.Tensor | None, key_padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, position_bias, key_padding_mask))
        # fairseq's gelu: exact erf GELU evaluated in float32.
        hidden = F.gelu(self.fc1(x).float()).type_as(x)
        return self.final_layer_norm(x * self.alpha + self.fc2(hidden))


class TransformerEncoder(nn.Module):
    """Convolutional positions, LayerNorm, then the layers (post-norm, so no norm after them)."""

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.encoder_embed_dim
        # A one-element list so the checkpoint's ``pos_conv.0.*`` keys line up; upstream's
        # Sequential also holds the parameter-free SamePad and GELU, applied in ``forward``.
        self.pos_conv = nn.ModuleList([WeightNormConv1d(dim, config.conv_pos, config.conv_pos_groups)])
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        if config.relative_position_embedding:
            shared_bias = nn.Embedding(config.num_buckets, config.encoder_attention_heads)
            for layer in self.layers:
                layer.self_attn.relative_attention_bias = shared_bias
        self.layer_norm = nn.LayerNorm(dim)

    def relative_position_bias(self, num_tokens: int) -> torch.Tensor:
        """(H, N, N) ungated bias, looked up from layer 0's embedding."""
        table = self.layers[0].self_attn.relative_attention_bias.weight
        buckets = relative_position_buckets(num_tokens, self.config.num_buckets, self.config.max_distance)
        return F.embedding(buckets.to(table.device), table).permute(2, 0, 1)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None,
        record: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        positions = self.pos_conv[0](x.transpose(1, 2))
        if self.config.conv_pos % 2 == 0:  # padding K//2 on both sides gives one step too many
            positions = positions[..., :-1]
        positions = F.gelu(positions)
        record["pos_conv_out"] = positions
        x = self.layer_norm(x + positions.transpose(1, 2))
        record["encoder_input_after_layer_norm"] = x

        position_bias = None
        if self.config.relative_position_embedding:
            batch, tokens, _ = x.shape
            position_bias = self.relative_position_bias(tokens).unsqueeze(0).expand(batch, -1, -1, -1)
            record["position_bias"] = position_bias
        for i, layer in enumerate(self.layers):
            x = layer(x, position_bias, padding_mask)
            record[f"layer{i}_out"] = x
        return x


def token_padding_mask(padding_mask: torch.Tensor, frames: int, num_tokens: int) -> torch.Tensor:
    """Upstream's reduction of a (B, frames[, 128]) padding mask to (B, N): a frame is padding when
    all its entries are; the frames are then cut to a multiple of N and split into N equal runs
    (runs of frames, not the patches' time rows), each padding when all its frames are."""
    batch = padding_mask.shape[0]
    per_frame = padding_mask.reshape(batch, frames, -1).all(-1)
    usable = frames - frames % num_tokens
    return per_frame[:, :usable].reshape(batch, num_tokens, -1).all(-1)


class BEATs(nn.Module):
    """Raw Kaldi fbank (B, frames, 128) -> encoder features (B, (frames // 16) * 8, encoder_embed_dim)."""

    def __init__(self, config: BEATsConfig = BEATsConfig()) -> None:
        super().__init__()
        self.config = config
        patch = config.input_patch_size
        self.post_extract_proj = (
            nn.Linear(config.embed_dim, config.encoder_embed_dim)
            if config.embed_dim != config.encoder_embed_dim
            else None
        )
        self.patch_embedding = nn.Conv2d(1, config.embed_dim, patch, stride=patch, bias=config.conv_bias)
        self.encoder = TransformerEncoder(config)
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        # The AudioSet classifier head: in the checkpoint, unused by VideoLLaMA2 (feature_only=True).
        self.predictor = (
            nn.Linear(config.encoder_embed_dim, config.predictor_class) if config.finetuned_model else None
        )

    def extract_features(
        self,
        fbank: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        intermediates: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Encoder output for an un-normalised fbank, what VideoLLaMA2 feeds ``mm_projector_a``.

        ``padding_mask`` (B, frames) or (B, frames, 128), True at padding; VideoLLaMA2 passes all
        False, which changes nothing. ``intermediates``, if given, receives ``fbank_normalized``,
        ``patch_embedding_out``, ``patch_layer_norm_out``, ``post_extract_proj_out``,
        ``pos_conv_out``, ``encoder_input_after_layer_norm``, ``position_bias`` (B, H, N, N, ungated),
        ``layer{i}_out`` (all batch-first).
        """
        if fbank.dim() != 3 or fbank.shape[-1] != FBANK_BINS:
            raise ValueError(f"fbank must be (batch, frames, {FBANK_BINS}), got {tuple(fbank.shape)}")
        if fbank.shape[1] < self.config.input_patch_size:
            raise ValueError(f"fbank needs at least {self.config.input_patch_size} frames, got {fbank.shape[1]}")
        record = intermediates if intermediates is not None else {}
        dtype = self.patch_embedding.weight.dtype
        x = beats_normalize(fbank.to(dtype))
        record["fbank_normalized"] = x
        x = self.patch_embedding(x.unsqueeze(1))
        record["patch_embedding_out"] = x
        x = self.layer_norm(x.flatten(2).transpose(1, 2))  # token = time_row * 8 + mel_column
        record["patch_layer_norm_out"] = x
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
            record["post_extract_proj_out"] = x
        token_mask = None
        if padding_mask is not None and bool(padding_mask.any()):
            token_mask = token_padding_mask(padding_mask, fbank.shape[1], x.shape[1])
        return self.encoder(x, token_mask, record)

    forward = extract_features

    def use_sdpa(self, enabled: bool = True) -> "BEATs":
        """Attention through ``F.scaled_dot_product_attention`` (one fused kernel) instead of
        upstream's hand-written softmax; the same function up to rounding."""
        for layer in self.encoder.layers:
            layer.self_attn.sdpa = enabled
        return self

    def load_checkpoint(self, state: Mapping[str, torch.Tensor]) -> None:
        """Strict load of bare BEATs keys. The layers share one relative-bias table that the state
        dict lists under every layer; a checkpoint may store any non-empty subset of those copies
        (safetensors keeps shared tensors once), and the copies it stores must agree."""
        load_strict(self, self._with_shared_bias_copies(state), "BEATs checkpoint")

    def _with_shared_bias_copies(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.config.relative_position_embedding:
            return dict(state)
        layers = range(self.config.encoder_layers)
        names = [f"encoder.layers.{i}.self_attn.relative_attention_bias.weight" for i in layers]
        present = [name for name in names if name in state]
        if not present:
            raise WeightsError(f"BEATs checkpoint does not match the model: missing keys: {names[0]}")
        reference = state[present[0]]
        for name in present[1:]:
            if state[name].shape != reference.shape or not torch.equal(state[name], reference):
                raise WeightsError(f"BEATs checkpoint: {name} differs from {present[0]}, but the layers share it")
        return dict(state) | {name: reference for name in names}


def checkpoint_shapes(config: BEATsConfig = BEATsConfig()) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the bare BEATs checkpoint, every shared relative-bias copy included (meta)."""
    with torch.device("meta"):
        return state_shapes(BEATs(config))
