"""MMAudio's mel VAE (EDM2-style magnitude-preserving 1D conv net): latent (B, E, T) <-> mel (B, C, 2T).

Inference only needs the decoder; the encoder is kept on request because the checkpoint stores it
and its moments are part of the goldens. Every conv is a bias-free MPConv1d whose weights are
force-normalised once at load (:func:`mp_weight_normalise`), exactly as upstream does before inference.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .weights import check_state_dict, load_strict, state_shapes

# Architecture fixed inside upstream's VAE class; only the three sizes in VAEConfig vary.
CHANNEL_MULTIPLIERS = (1, 2, 4)
NUM_RES_BLOCKS = 2
DOWNSAMPLE_LEVELS = (0,)  # encoder halves time after level 0; the decoder doubles it after level 1
KERNEL_SIZE = 3
ACTIVATION_CLIP = 256.0
NORM_EPS = 1e-4
RESIDUAL_BLEND = 0.3
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class VAEConfig:
    data_dim: int
    embed_dim: int
    hidden_dim: int


VAE_CONFIGS = {
    "16k": VAEConfig(data_dim=80, embed_dim=20, hidden_dim=384),
    "44k": VAEConfig(data_dim=128, embed_dim=40, hidden_dim=512),
}


def pixel_norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x / (1e-4 + ‖x‖/sqrt(n)) over ``dim``, computed in float32 so half precision keeps the scale."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(NORM_EPS, norm, alpha=math.sqrt(1.0 / x.shape[dim]))
    return (x.float() / norm).to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU rescaled to keep unit magnitude for unit-variance input."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = RESIDUAL_BLEND) -> torch.Tensor:
    """(1-t)·a + t·b, rescaled to keep unit magnitude."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_weight_normalise(weight: torch.Tensor) -> torch.Tensor:
    """The load-time transform: w / (sqrt(fan_in)·1e-4 + ‖w_o‖) per output channel o, in float32.

    Computed in upstream's order (normalise with eps, then divide by sqrt(fan_in)) so it matches
    bit for bit; returned in the input's dtype.
    """
    w = weight.float()
    fan_in = w[0].numel()
    norm = torch.linalg.vector_norm(w, dim=tuple(range(1, w.ndim)), keepdim=True, dtype=torch.float32)
    norm = torch.add(NORM_EPS, norm, alpha=math.sqrt(1.0 / fan_in))
    w = w / norm
    w = w / math.sqrt(fan_in)
    return w.to(weight.dtype)


class MPConv1d(nn.Module):
    """Bias-free conv with 'same' padding; ``weight`` must already be normalised (see load_checkpoint)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size))  # as upstream

    def forward(self, x: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.weight if gain is None else self.weight * gain
        return F.conv1d(x, weight, padding=weight.shape[-1] // 2)


class ResnetBlock(nn.Module):
    """Pixel-norm, two mp_silu+conv layers, 1x1 shortcut (from the normalised input) when widths differ."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = MPConv1d(in_dim, out_dim, KERNEL_SIZE)
        self.conv2 = MPConv1d(out_dim, out_dim, KERNEL_SIZE)
        self.nin_shortcut = MPConv1d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(x, dim=1)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_sum(x, h)


class AttnBlock(nn.Module):
    """Single-head self-attention over time; q/k/v interleaved per channel (index c·3 + j) and each
    pixel-normalised over channels; no pre-norm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.qkv = MPConv1d(channels, channels * 3, 1)
        self.proj_out = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape
        qkv = self.qkv(x).reshape(batch, 1, channels, 3, length)
        q, k, v = (t.transpose(-1, -2) for t in pixel_norm(qkv, dim=2).unbind(3))  # (B, 1, T, C)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(batch, channels, length)
        return mp_sum(x, self.proj_out(h))


class Upsample(nn.Module):
    """Nearest x2 in time, then a conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = MPConv1d(channels, channels, KERNEL_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.repeat_interleave(x, 2, dim=-1))


class Downsample(nn.Module):
    """1x1 conv, average-pool by 2, 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = MPConv1d(channels, channels, 1)
        self.conv2 = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class MidBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x))).clamp(-ACTIVATION_CLIP, ACTIVATION_CLIP)


class EncoderLevel(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, downsample: bool) -> None:
        super().__init__()
        dims = [in_dim] + [out_dim] * NUM_RES_BLOCKS
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.downsample = Downsample(out_dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x).clamp(-ACTIVATION_CLIP, ACTIVATION_CLIP)
        return x if self.downsample is None else self.downsample(x)


class DecoderLevel(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, upsample: bool) -> None:
        super().__init__()
        dims = [in_dim] + [out_dim] * (NUM_RES_BLOCKS + 1)
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.upsample = Upsample(out_dim) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x).clamp(-ACTIVATION_CLIP, ACTIVATION_CLIP)
        return x if self.upsample is None else self.upsample(x)


class Encoder(nn.Module):
    """Normalised mel (B, data_dim, 2T) -> moments (B, 2·embed_dim, T)."""

    def __init__(self, data_dim: int, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        widths = [hidden_dim * m for m in (1,) + CHANNEL_MULTIPLIERS]
        self.conv_in = MPConv1d(data_dim, hidden_dim, KERNEL_SIZE)
        self.down = nn.ModuleList(
            EncoderLevel(widths[level], widths[level + 1], level in DOWNSAMPLE_LEVELS)
            for level in range(len(CHANNEL_MULTIPLIERS))
        )
        self.mid = MidBlock(widths[-1])
        self.conv_out = MPConv1d(widths[-1], 2 * embed_dim, KERNEL_SIZE)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        x = mp_silu(self.mid(x))
        return self.conv_out(x, gain=self.learnable_gain + 1)


class Decoder(nn.Module):
    """Latent (B, embed_dim, T) -> normalised mel (B, data_dim, 2T). ``up`` is indexed by level
    (upstream's key layout) and run from the deepest level up."""

    def __init__(self, data_dim: int, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        widths = [hidden_dim * m for m in CHANNEL_MULTIPLIERS]
        self.conv_in = MPConv1d(embed_dim, widths[-1], KERNEL_SIZE)
        self.mid = MidBlock(widths[-1])
        upsample_levels = {level + 1 for level in DOWNSAMPLE_LEVELS}
        in_widths = widths[1:] + widths[-1:]  # each level reads the output of the level above it
        self.up = nn.ModuleList(
            DecoderLevel(in_widths[level], widths[level], level in upsample_levels) for level in range(len(widths))
        )
        self.conv_out = MPConv1d(widths[0], data_dim, KERNEL_SIZE)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(mp_silu(x), gain=self.learnable_gain + 1)


def gaussian_from_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split encoder moments into (mean, logvar), logvar clamped to [-30, 20] as upstream's posterior."""
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(*LOGVAR_RANGE)


class VAE(nn.Module):
    """Mel VAE with upstream's key layout: ``encoder.*``, ``decoder.*``, ``data_mean``/``data_std`` (1, C, 1)."""

    def __init__(self, data_dim: int, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.config = VAEConfig(data_dim, embed_dim, hidden_dim)
        # Dataset statistics; the checkpoint provides the values.
        self.register_buffer("data_mean", torch.zeros(1, data_dim, 1))
        self.register_buffer("data_std", torch.ones(1, data_dim, 1))
        self.encoder: Encoder | None = Encoder(data_dim, embed_dim, hidden_dim)
        self.decoder = Decoder(data_dim, embed_dim, hidden_dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, embed_dim, T) -> log-mel (B, data_dim, 2T), un-normalised with the data statistics."""
        return self.decoder(z) * self.data_std + self.data_mean

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.data_mean) / self.data_std

    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel (B, data_dim, 2T) -> posterior (mean, logvar), each (B, embed_dim, T)."""
        if self.encoder is None:
            raise RuntimeError("the VAE encoder was dropped at load; load with need_encoder=True")
        return gaussian_from_moments(self.encoder(self.normalize(mel)))

    def load_checkpoint(self, state: Mapping[str, torch.Tensor], need_encoder: bool = False) -> None:
        """Load a checkpoint as stored (encoder included, weights not yet normalised): strict key
        check, the MPConv weight normalisation, then drop the encoder unless ``need_encoder``."""
        template = _meta_vae(self.config)
        check_state_dict(state_shapes(template), state, "VAE checkpoint")
        mpconv_weights = {f"{name}.weight" for name, m in template.named_modules() if isinstance(m, MPConv1d)}
        own_keys = self.state_dict().keys()
        load_strict(
            self,
            {k: mp_weight_normalise(v) if k in mpconv_weights else v for k, v in state.items() if k in own_keys},
            "VAE checkpoint",
        )
        if not need_encoder:
            self.encoder = None


def _meta_vae(config: VAEConfig) -> VAE:
    with torch.device("meta"):
        return VAE(**asdict(config))


def checkpoint_shapes(mode: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the full checkpoint for ``"16k"``/``"44k"`` (encoder included), on meta."""
    return state_shapes(_meta_vae(VAE_CONFIGS[mode]))
