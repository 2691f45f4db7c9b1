"""Anti-aliased SnakeBeta: 2x up-sample, SnakeBeta, low-pass and 2x down-sample (BigVGAN's AMP activation).

A periodic activation creates harmonics above the Nyquist frequency; running it at twice the rate
between two kaiser-windowed sinc filters keeps them from folding back as aliasing. The whole path is
the one function :func:`snake_beta_antialiased_reference`, the torch reference of our fused kernel
(``deepsound_rt.kernels.snake_beta_antialiased``), which an ``Activation1d`` built with
``use_kernels`` runs instead. Exported graphs take :func:`snake_beta_antialiased_polyphase`, the
same values without a transposed convolution.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels

FILTER_TAPS = 12
RESAMPLE_RATIO = 2
# Half-band filter for a 2x rate change: cutoff 0.5/ratio, transition half-width 0.6/ratio (cycles/sample).
FILTER_CUTOFF = 0.5 / RESAMPLE_RATIO
FILTER_HALF_WIDTH = 0.6 / RESAMPLE_RATIO
SNAKE_EPS = 1e-9


def kaiser_sinc_filter(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """Low-pass FIR (1, 1, taps): kaiser-windowed sinc, normalised to unit DC gain.

    The kaiser beta follows Kaiser's empirical formula for the attenuation that the transition
    width allows; even tap counts sample the sinc at half-integer offsets.
    """
    half = taps // 2
    attenuation_db = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation_db > 50.0:
        beta = 0.1102 * (attenuation_db - 8.7)
    elif attenuation_db >= 21.0:
        beta = 0.5842 * (attenuation_db - 21.0) ** 0.4 + 0.07886 * (attenuation_db - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, periodic=False, beta=beta)
    if taps % 2 == 0:
        time = torch.arange(-half, half) + 0.5
    else:
        time = torch.arange(taps) - half
    taps_values = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    taps_values /= taps_values.sum()
    return taps_values.view(1, 1, taps)


def upsample_2x(x: torch.Tensor, up_filter: torch.Tensor) -> torch.Tensor:
    """(B, C, T) -> (B, C, 2T): replicate-pad, zero-stuffing transposed conv (gain 2), crop the edges."""
    taps = up_filter.shape[-1]
    pad = taps // RESAMPLE_RATIO - 1
    crop_left = pad * RESAMPLE_RATIO + (taps - RESAMPLE_RATIO) // 2
    crop_right = pad * RESAMPLE_RATIO + (taps - RESAMPLE_RATIO + 1) // 2
    channels = x.shape[1]
    x = F.pad(x, (pad, pad), mode="replicate")
    y = RESAMPLE_RATIO * F.conv_transpose1d(
        x, up_filter.expand(channels, -1, -1), stride=RESAMPLE_RATIO, groups=channels
    )
    return y[..., crop_left : y.shape[-1] - crop_right]


def downsample_2x(x: torch.Tensor, down_filter: torch.Tensor) -> torch.Tensor:
    """(B, C, 2T) -> (B, C, T): replicate-pad (asymmetric for even taps), low-pass, keep every 2nd sample."""
    taps = down_filter.shape[-1]
    pad_left = taps // 2 - int(taps % 2 == 0)
    pad_right = taps // 2
    channels = x.shape[1]
    x = F.pad(x, (pad_left, pad_right), mode="replicate")
    return F.conv1d(x, down_filter.expand(channels, -1, -1), stride=RESAMPLE_RATIO, groups=channels)


def snake_beta(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, logscale: bool = True) -> torch.Tensor:
    """x + sin²(a·x) / (b + 1e-9) per channel, with a = e^alpha, b = e^beta when ``logscale``."""
    alpha = alpha.view(1, -1, 1)
    beta = beta.view(1, -1, 1)
    if logscale:
        alpha = torch.exp(alpha)
        beta = torch.exp(beta)
    return x + (1.0 / (beta + SNAKE_EPS)) * torch.sin(x * alpha).pow(2)


def snake_beta_antialiased_reference(
    x: torch.Tensor,
    alpha_log: torch.Tensor,
    beta_log: torch.Tensor,
    up_filter: torch.Tensor,
    down_filter: torch.Tensor,
    *,
    logscale: bool = True,
) -> torch.Tensor:
    """The anti-aliased SnakeBeta on (B, C, T), computed in float32 and returned in ``x``'s dtype.

    Half-precision inputs are upcast because sin(a·x) of large arguments and the filter sums lose
    too much in 8- or 11-bit mantissas. ``logscale=False`` takes alpha/beta as linear values.
    """
    work = x.float()
    y = upsample_2x(work, up_filter.float())
    y = snake_beta(y, alpha_log.float(), beta_log.float(), logscale)
    return downsample_2x(y, down_filter.float()).to(x.dtype)


def snake_beta_antialiased_polyphase(
    x: torch.Tensor,
    alpha_log: torch.Tensor,
    beta_log: torch.Tensor,
    up_filter: torch.Tensor,
    down_filter: torch.Tensor,
    *,
    logscale: bool = True,
) -> torch.Tensor:
    """:func:`snake_beta_antialiased_reference` for even tap counts, with the 2x up-sample as one
    grouped convolution that gives both output phases.

    The up-sample is a transposed convolution over a zero-stuffed signal: each output phase is a
    half-length filter (h[0::2] or h[1::2]) over the input, so one convolution with two outputs per
    channel computes both, with no multiplications by the stuffed zeros. SnakeBeta is pointwise,
    so it runs on the phases before they are interleaved. ONNX Runtime runs this about 1.5x faster
    than the zero-stuffing form (its grouped ConvTranspose is slow), and it exports with a few ops
    more than that form, which matters over a vocoder's 109 activations.
    """
    taps = up_filter.shape[-1]
    if taps % 2:
        raise ValueError(f"the polyphase form needs an even tap count, got {taps}")
    batch, channels, _ = x.shape
    pad = taps // 2 - 1
    # (2, 1, taps/2): h[0::2] and h[1::2], each reversed (a transposed convolution's flip)
    phase_taps = torch.tensor([list(range(taps - 2, -1, -2)), list(range(taps - 1, 0, -2))], device=x.device)
    up_weight = (RESAMPLE_RATIO * up_filter.float().reshape(-1))[phase_taps].unsqueeze(1).repeat(channels, 1, 1)
    # phases[:, 2c + r, i] is up-sampled sample 2i + r - pad of channel c (length T + pad).
    phases = F.conv1d(F.pad(x.float(), (pad, pad), mode="replicate"), up_weight, groups=channels)
    phases = snake_beta(phases.view(batch, channels, -1), alpha_log.float(), beta_log.float(), logscale)
    upsampled = phases.view(batch, channels, 2, -1).transpose(2, 3).reshape(batch, channels, -1)
    if pad:
        upsampled = upsampled[..., pad:-pad]
    return downsample_2x(upsampled, down_filter.float().reshape(1, 1, -1)).to(x.dtype)


class SnakeBeta(nn.Module):
    """Per-channel SnakeBeta parameters; ``alpha``/``beta`` are log-scale when ``alpha_logscale``."""

    def __init__(self, channels: int, alpha_logscale: bool = True) -> None:
        super().__init__()
        self.alpha_logscale = alpha_logscale
        initial = torch.zeros(channels) if alpha_logscale else torch.ones(channels)
        self.alpha = nn.Parameter(initial.clone())
        self.beta = nn.Parameter(initial.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake_beta(x, self.alpha, self.beta, self.alpha_logscale)


class _Filter(nn.Module):
    """Holds one resampling filter as buffer ``filter``, the checkpoint's key layout."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("filter", kaiser_sinc_filter(FILTER_CUTOFF, FILTER_HALF_WIDTH, FILTER_TAPS))


class _DownSample2x(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lowpass = _Filter()


class Activation1d(nn.Module):
    """Anti-aliased SnakeBeta with upstream's state-dict layout (``act``, ``upsample``, ``downsample``).

    The filters are persistent buffers because the checkpoints store them; they are deterministic.
    """

    def __init__(self, activation: SnakeBeta, use_kernels: bool = False) -> None:
        super().__init__()
        self.use_kernels = use_kernels
        self.act = activation
        self.upsample = _Filter()
        self.downsample = _DownSample2x()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Our fused kernel when built with ``use_kernels`` (C++ on CPU, CUDA on GPU), else the torch
        reference; the polyphase form when exported (ONNX Runtime and TensorRT run it as plain
        convolutions)."""
        params = (self.act.alpha, self.act.beta, self.upsample.filter, self.downsample.lowpass.filter)
        if torch.compiler.is_exporting():
            return snake_beta_antialiased_polyphase(x, *params, logscale=self.act.alpha_logscale)
        if self.use_kernels:
            return kernels.snake_beta_antialiased(x, *params, logscale=self.act.alpha_logscale)
        return snake_beta_antialiased_reference(x, *params, logscale=self.act.alpha_logscale)
