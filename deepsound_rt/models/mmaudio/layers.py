"""Building blocks of the MMAudio flow network, laid out so that state-dict keys match the checkpoints.

Numerics that decide whether we reproduce upstream (see the reference README, "Flow network"):
fused qkv interleaved as (heads, head_dim, 3); RMSNorm on q/k before RoPE; RoPE on interleaved
pairs in float32; SwiGLU hidden size rounded up to a multiple of 256; no biases in the MLPs.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ROPE_THETA = 10000


def swiglu_hidden_dim(expanded_dim: int, multiple_of: int = 256) -> int:
    """Hidden width of upstream's SwiGLU MLPs: two thirds of the nominal width, rounded up."""
    return multiple_of * math.ceil(int(2 * expanded_dim / 3) / multiple_of)


class ChannelLastConv1d(nn.Conv1d):
    """Conv1d over the sequence axis of a (B, N, C) tensor, so token-major code needs no transposes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x) with Linear layers (tokens without a sequence neighbourhood)."""

    def __init__(self, dim: int, expanded_dim: int):
        super().__init__()
        hidden = swiglu_hidden_dim(expanded_dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ConvSwiGLU(nn.Module):
    """SwiGLU whose three projections are "same"-padded convolutions along the sequence."""

    def __init__(self, dim: int, expanded_dim: int, kernel_size: int):
        super().__init__()
        hidden = swiglu_hidden_dim(expanded_dim)
        padding = kernel_size // 2
        self.w1 = ChannelLastConv1d(dim, hidden, kernel_size, padding=padding, bias=False)
        self.w2 = ChannelLastConv1d(hidden, dim, kernel_size, padding=padding, bias=False)
        self.w3 = ChannelLastConv1d(dim, hidden, kernel_size, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def timestep_frequencies(num_frequencies: int, max_period: float) -> torch.Tensor:
    """Sinusoid frequencies of the timestep embedding, on the CPU in float32.

    The expression order is upstream's on purpose: v2 multiplies t by up to 1e4, so any other
    rounding of these values visibly changes the float32 embedding.
    """
    exponents = torch.arange(0, num_frequencies, 2, dtype=torch.float32, device="cpu") / num_frequencies
    freqs = 1.0 / (10000**exponents)
    return (10000 / max_period) * freqs


class TimestepEmbedder(nn.Module):
    """[cos, sin] features of t in [0, 1] (always float32), then a SiLU MLP in the module's dtype."""

    def __init__(self, dim: int, num_frequencies: int, max_period: float):
        super().__init__()
        self.num_frequencies = num_frequencies
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(num_frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.register_buffer("freqs", timestep_frequencies(num_frequencies, max_period), persistent=False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> TimestepEmbedder:
        # A dtype cast would round the frequencies; rebuild them in float32 on the new device.
        super()._apply(fn, recurse)
        self.freqs = timestep_frequencies(self.num_frequencies, self.max_period).to(self.mlp[0].weight.device)
        return self

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.reshape(-1, 1).float() * self.freqs[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def rope_rotations(length: int, head_dim: int, freq_scaling: float = 1.0) -> torch.Tensor:
    """(1, length, head_dim/2, 2, 2) rotation matrices [[cos, -sin], [sin, cos]] in float32 on the CPU.

    Frequencies 10000^(-2i/head_dim) are scaled by ``freq_scaling`` (CLIP tokens use
    latent_len/clip_len so that their positions line up in time with the latents).
    """
    positions = torch.arange(length, dtype=torch.float32, device="cpu")
    freqs = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim))
    freqs *= freq_scaling
    angles = positions[:, None] * freqs[None]
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(1, length, head_dim // 2, 2, 2)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of (B, H, N, D) in float32; returns x's dtype."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    rotated = rotations[..., 0] * pairs[..., 0] + rotations[..., 1] * pairs[..., 1]
    return rotated.reshape(x.shape).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over (B, H, N, D); returns (B, N, H*D)."""
    out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
    return out.transpose(1, 2).flatten(2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class SelfAttention(nn.Module):
    """q/k/v projection with per-head RMSNorm on q and k (eps=None: the input dtype's epsilon)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.RMSNorm(self.head_dim)
        self.k_norm = nn.RMSNorm(self.head_dim)

    def qkv_heads(
        self, x: torch.Tensor, rotations: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, _ = x.shape
        # The checkpoint's qkv output is laid out (heads, head_dim, 3): q, k, v interleaved innermost.
        qkv = self.qkv(x).view(batch, length, self.num_heads, self.head_dim, 3).permute(4, 0, 2, 1, 3)
        q, k, v = qkv.unbind(0)
        q = self.q_norm(q)
        k = self.k_norm(k)
        if rotations is not None:
            q = apply_rope(q, rotations)
            k = apply_rope(k, rotations)
        return q, k, v


class ModulatedBlock(nn.Module):
    """adaLN transformer block split around attention, so joint blocks can attend across streams.

    ``pre_only`` blocks (clip/text in the last joint block) only feed attention: they have no
    output projection, FFN or second norm, and their adaLN gives just shift and scale.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, kernel_size: int, pre_only: bool = False):
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = SelfAttention(dim, num_heads)
        if pre_only:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
            return
        if kernel_size == 1:
            self.linear1 = nn.Linear(dim, dim)
            self.ffn = SwiGLU(dim, int(dim * mlp_ratio))
        else:
            self.linear1 = ChannelLastConv1d(dim, dim, kernel_size, padding=kernel_size // 2)
            self.ffn = ConvSwiGLU(dim, int(dim * mlp_ratio), kernel_size)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def pre_attention(
        self, x: torch.Tensor, c: torch.Tensor, rotations: torch.Tensor | None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
        """(q, k, v) of the modulated input and the modulation kept for :meth:`post_attention`."""
        modulation = self.adaLN_modulation(c).chunk(2 if self.pre_only else 6, dim=-1)
        shift_msa, scale_msa = modulation[:2]
        qkv = self.attn.qkv_heads(modulate(self.norm1(x), shift_msa, scale_msa), rotations)
        return qkv, modulation[2:]

    def post_attention(self, x: torch.Tensor, attn_out: torch.Tensor, modulation: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.pre_only:
            return x
        gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        x = x + self.linear1(attn_out) * gate_msa
        return x + self.ffn(modulate(self.norm2(x), shift_mlp, scale_mlp)) * gate_mlp

    def forward(self, x: torch.Tensor, c: torch.Tensor, rotations: torch.Tensor | None) -> torch.Tensor:
        qkv, modulation = self.pre_attention(x, c, rotations)
        return self.post_attention(x, attention(*qkv), modulation)


class JointBlock(nn.Module):
    """One attention over [latent, clip, text]; latents are modulated per token, clip/text globally."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, pre_only: bool):
        super().__init__()
        self.pre_only = pre_only
        self.latent_block = ModulatedBlock(dim, num_heads, mlp_ratio, kernel_size=3)
        self.clip_block = ModulatedBlock(dim, num_heads, mlp_ratio, kernel_size=3, pre_only=pre_only)
        self.text_block = ModulatedBlock(dim, num_heads, mlp_ratio, kernel_size=1, pre_only=pre_only)

    def forward(
        self,
        latent: torch.Tensor,
        clip_f: torch.Tensor,
        text_f: torch.Tensor,
        global_c: torch.Tensor,
        extended_c: torch.Tensor,
        latent_rot: torch.Tensor,
        clip_rot: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent_qkv, latent_mod = self.latent_block.pre_attention(latent, extended_c, latent_rot)
        clip_qkv, clip_mod = self.clip_block.pre_attention(clip_f, global_c, clip_rot)
        text_qkv, text_mod = self.text_block.pre_attention(text_f, global_c, None)
        joint = [torch.cat(parts, dim=2) for parts in zip(latent_qkv, clip_qkv, text_qkv)]
        latent_out, clip_out, text_out = attention(*joint).split(
            [latent.shape[1], clip_f.shape[1], text_f.shape[1]], dim=1
        )
        latent = self.latent_block.post_attention(latent, latent_out, latent_mod)
        if not self.pre_only:
            clip_f = self.clip_block.post_attention(clip_f, clip_out, clip_mod)
            text_f = self.text_block.post_attention(text_f, text_out, text_mod)
        return latent, clip_f, text_f


class FinalBlock(nn.Module):
    """adaLN (shift, scale) + kernel-7 conv to the latent channels."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.conv = ChannelLastConv1d(dim, out_dim, kernel_size=7, padding=3)

    def forward(self, latent: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.conv(modulate(self.norm(latent), shift, scale))
