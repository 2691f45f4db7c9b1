"""FP8 matmuls for the flow network (``EngineConfig.fp8``): the linear layers and sequence
convolutions of its per-step blocks run as float8 (e4m3) matrix products on Hopper.

Scaling: every row is scaled on its own so that its largest magnitude maps to 448, e4m3's
largest finite value: the weights per output channel (once, at conversion), the activations per
token (at every call). ``torch._scaled_mm`` multiplies the 8-bit operands with float32
accumulation and applies both scales to its output. A convolution over the sequence (kernel k)
is the same product over the k neighbouring tokens side by side (im2col), so one scale covers
each token's window.

Error: e4m3 keeps 3 fraction bits, so rounding changes a value by at most 2^-4 of itself (half a
step of 2^-3, relative to the bottom of its binade; values below 2^-6 of the row maximum lose
more, as subnormals). With both operands rounded, one product of independent rows is off by
about 4 % (relative RMS; at most 2^-4 in the tests). Errors of the FP8 layers in a row add up: the
dev network's conditional velocity moves by ~9 %, classifier-free guidance at 4.5 magnifies the
guided velocity's error up to 5.7x, and the dev step-1 audio moves by 1.5-3 %. That is an
approximation of the model, not of bf16: ``deepsound-rt bench`` reports the full-size audio's
distance from the bf16 baseline; use FP8 where the audio is judged by ear, never for goldens.

Off sm90+ GPUs there is no row-wise FP8 kernel: the same rounding and scaling run in float32 (exactly the
products the kernel computes, up to summation order), which is what the CPU tests check.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.mmaudio.layers import ChannelLastConv1d

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
AMAX_FLOOR = 1e-12
"""An all-zero row gets this maximum instead of 0, so that its scale is not 0 (0/0 = NaN)."""
KERNEL_MULTIPLE = 16
"""``_scaled_mm`` wants both matrix dimensions it contracts and writes as multiples of 16."""


def has_fp8_kernel(device: torch.device) -> bool:
    """An NVIDIA GPU of compute capability 9.0 or newer (Hopper, Blackwell): where ``_scaled_mm``
    has its row-wise scaled kernel."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, k) -> (e4m3 values, (rows, 1) float32 scales) with x ≈ values * scale."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=AMAX_FLOOR)
    scale = amax / E4M3_MAX
    values = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return values, scale


def fp8_matmul(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
               kernel: bool) -> torch.Tensor:
    """(rows, k) activations times the (n, k) e4m3 weight with (1, n) scales, in x's dtype."""
    values, scale = quantize_rows(x)
    if kernel:
        out = torch._scaled_mm(values, weight.t(), scale_a=scale, scale_b=weight_scale, out_dtype=x.dtype)
    else:
        out = (values.float() * scale) @ (weight.float() * weight_scale.t()).t()
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.to(x.dtype)


class Fp8Linear(nn.Module):
    """An ``nn.Linear`` with its weight rounded to e4m3 per output channel; see the module docstring."""

    def __init__(self, linear: nn.Linear, kernel: bool):
        super().__init__()
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out): _scaled_mm's layout
        self.bias = linear.bias
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        return fp8_matmul(rows, self.weight, self.weight_scale, self.bias, self.kernel).view(*x.shape[:-1], -1)


class Fp8SequenceConv(nn.Module):
    """A :class:`ChannelLastConv1d` (stride 1, "same" padding) as one e4m3 product over each
    token's window of ``kernel_size`` neighbours."""

    def __init__(self, conv: ChannelLastConv1d, kernel: bool):
        super().__init__()
        out_channels, in_channels, self.kernel_size = conv.weight.shape
        self.padding = conv.padding[0]
        # (out, in, k) flattened as (out, in * k): the order of an unfolded (in, k) window.
        weight, scale = quantize_rows(conv.weight.detach().reshape(out_channels, in_channels * self.kernel_size))
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())
        self.bias = conv.bias
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, out)."""
        batch, length, _ = x.shape
        windows = F.pad(x, (0, 0, self.padding, self.padding)).unfold(1, self.kernel_size, 1)  # (B, N, C, k)
        rows = windows.reshape(batch * length, -1)
        return fp8_matmul(rows, self.weight, self.weight_scale, self.bias, self.kernel).view(batch, length, -1)


def _convertible(module: nn.Module) -> bool:
    if isinstance(module, ChannelLastConv1d):
        out_channels, in_channels, kernel_size = module.weight.shape
        same = module.stride == (1,) and module.dilation == (1,) and module.groups == 1 \
            and 2 * module.padding[0] == kernel_size - 1
        return same and out_channels % KERNEL_MULTIPLE == 0 and (in_channels * kernel_size) % KERNEL_MULTIPLE == 0
    if isinstance(module, nn.Linear):
        return module.out_features % KERNEL_MULTIPLE == 0 and module.in_features % KERNEL_MULTIPLE == 0
    return False


def convert_to_fp8(root: nn.Module, kernel: bool) -> int:
    """Replace, in place, every linear layer and sequence convolution under ``root`` whose sizes
    the kernel takes; returns how many were replaced."""
    replaced = 0
    for name, child in list(root.named_children()):
        if _convertible(child):
            fp8 = Fp8SequenceConv(child, kernel) if isinstance(child, ChannelLastConv1d) else Fp8Linear(child, kernel)
            setattr(root, name, fp8)
            replaced += 1
        else:
            replaced += convert_to_fp8(child, kernel)
    return replaced


def convert_flow_to_fp8(flow: nn.Module, device: torch.device) -> int:
    """The flow network's per-step work in FP8: its joint and fused blocks and the latent input
    projection's SwiGLU (the condition projections run once per clip and stay as they are)."""
    kernel = has_fp8_kernel(device)
    parts = [*flow.joint_blocks, *flow.fused_blocks, flow.audio_input_proj]
    return sum(convert_to_fp8(part, kernel) for part in parts)
