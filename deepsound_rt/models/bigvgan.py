"""BigVGAN vocoders: MMAudio's 16 kHz v1 model and NVIDIA's 44.1 kHz v2 model in one definition.

Both are conv_pre -> [transposed conv, mean of AMP blocks] per stage -> anti-aliased SnakeBeta ->
conv_post, and differ only in the config (see :data:`BIGVGAN_16K`, :data:`BIGVGAN_V2_44K`). Run-time
modules hold plain folded ``.weight`` tensors; checkpoints store weight-norm pairs that
:func:`fold_weight_norm` folds at load.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import WeightsError
from .alias_free import Activation1d, SnakeBeta
from .weights import load_state_file, load_strict, pick_sub_state

# Checkpoint spellings of one weight-normed tensor: (magnitude suffix, direction suffix).
_WEIGHT_NORM_NAMINGS = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


@dataclass(frozen=True)
class BigVGANConfig:
    """The generator hyper-parameters that shape the network (training-only fields are dropped)."""

    num_mels: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True
    snake_logscale: bool = True

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame."""
        return prod(self.upsample_rates)

    @classmethod
    def from_dict(cls, h: Mapping) -> "BigVGANConfig":
        """Build from an upstream hyper-parameter dict (yml / config.json).

        Missing ``use_tanh_at_final``/``use_bias_at_final`` default to True, as upstream reads them
        (the v1 yml has neither and always ends with tanh and a biased conv_post).
        """
        if str(h.get("resblock", "1")) != "1":
            raise ValueError(f"only AMPBlock1 (resblock '1') is supported, got {h['resblock']!r}")
        if h.get("activation", "snakebeta") != "snakebeta":
            raise ValueError(f"only the snakebeta activation is supported, got {h['activation']!r}")
        return cls(
            num_mels=int(h["num_mels"]),
            upsample_rates=tuple(int(u) for u in h["upsample_rates"]),
            upsample_kernel_sizes=tuple(int(k) for k in h["upsample_kernel_sizes"]),
            upsample_initial_channel=int(h["upsample_initial_channel"]),
            resblock_kernel_sizes=tuple(int(k) for k in h["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in h["resblock_dilation_sizes"]),
            use_tanh_at_final=bool(h.get("use_tanh_at_final", True)),
            use_bias_at_final=bool(h.get("use_bias_at_final", True)),
            snake_logscale=bool(h.get("snake_logscale", True)),
        )


_RESBLOCK_KERNELS = (3, 7, 11)
_RESBLOCK_DILATIONS = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

BIGVGAN_16K = BigVGANConfig(
    num_mels=80,
    upsample_rates=(4, 4, 2, 2, 2, 2),
    upsample_kernel_sizes=(8, 8, 4, 4, 4, 4),
    upsample_initial_channel=1536,
    resblock_kernel_sizes=_RESBLOCK_KERNELS,
    resblock_dilation_sizes=_RESBLOCK_DILATIONS,
    use_tanh_at_final=True,
    use_bias_at_final=True,
)
"""MMAudio's ``bigvgan_vocoder.yml`` (ext_weights/best_netG.pt): 80 log10-mel bins, 256x."""

BIGVGAN_V2_44K = BigVGANConfig(
    num_mels=128,
    upsample_rates=(8, 4, 2, 2, 2, 2),
    upsample_kernel_sizes=(16, 8, 4, 4, 4, 4),
    upsample_initial_channel=1536,
    resblock_kernel_sizes=_RESBLOCK_KERNELS,
    resblock_dilation_sizes=_RESBLOCK_DILATIONS,
    use_tanh_at_final=False,
    use_bias_at_final=False,
)
"""nvidia/bigvgan_v2_44khz_128band_512x: 128 natural-log mel bins, 512x, clamp instead of tanh."""


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class AMPBlock(nn.Module):
    """Residual stack: for each dilation, x += conv2(act(conv1_dilated(act(x)))), each act its own."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], snake_logscale: bool,
                 use_kernels: bool) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size, 1)) for _ in dilations
        )
        # Interleaved as in the checkpoint: activations[2i] precedes convs1[i], [2i+1] precedes convs2[i].
        self.activations = nn.ModuleList(
            Activation1d(SnakeBeta(channels, alpha_logscale=snake_logscale), use_kernels)
            for _ in range(2 * len(dilations))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            residual = conv2(self.activations[2 * i + 1](conv1(self.activations[2 * i](x))))
            x = residual + x
        return x


class BigVGAN(nn.Module):
    """Mel (B, num_mels, T) -> waveform (B, 1, hop_length·T) in [-1, 1]. ``use_kernels``: the
    anti-aliased activations run our fused kernel (as upstream's ``use_cuda_kernel``)."""

    def __init__(self, config: BigVGANConfig, use_kernels: bool = False) -> None:
        super().__init__()
        self.config = config
        channels = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, channels, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes):
            upsample = nn.ConvTranspose1d(channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2)
            self.ups.append(nn.ModuleList([upsample]))
            channels //= 2
            for kernel_size, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(AMPBlock(channels, kernel_size, dilations, config.snake_logscale, use_kernels))
        self.activation_post = Activation1d(SnakeBeta(channels, alpha_logscale=config.snake_logscale), use_kernels)
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3, bias=config.use_bias_at_final)

    def forward(self, mel: torch.Tensor, intermediates: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Vocode; when ``intermediates`` is given it is filled with ``conv_pre_out``, ``ups{i}_out``,
        ``stage{i}_out`` and ``conv_post_out`` (before tanh/clamp) for locating mismatches."""
        record = intermediates if intermediates is not None else {}
        x = self.conv_pre(mel)
        record["conv_pre_out"] = x
        blocks_per_stage = len(self.config.resblock_kernel_sizes)
        for i, (upsample,) in enumerate(self.ups):
            x = upsample(x)
            record[f"ups{i}_out"] = x
            blocks = self.resblocks[i * blocks_per_stage : (i + 1) * blocks_per_stage]
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total + block(x)
            x = total / blocks_per_stage
            record[f"stage{i}_out"] = x
        x = self.conv_post(self.activation_post(x))
        record["conv_post_out"] = x
        return torch.tanh(x) if self.config.use_tanh_at_final else x.clamp(-1.0, 1.0)

    def load_checkpoint(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a generator dict in any of the three key namings (weight_g/weight_v,
        parametrizations.weight.original0/1, folded .weight); strict, names what does not match."""
        load_strict(self, fold_weight_norm(state), "BigVGAN generator checkpoint")


def fold_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every weight-norm pair by ``<name>.weight = g · v / ‖v‖`` (norm over all dims but 0,
    in float32; for ConvTranspose1d dim 0 is the input channels). Unpaired halves stay as they are,
    so a strict key check reports them."""
    folded: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for key in state:
        for magnitude_suffix, direction_suffix in _WEIGHT_NORM_NAMINGS:
            if not key.endswith("." + magnitude_suffix):
                continue
            base = key[: -len(magnitude_suffix)]
            direction_key = base + direction_suffix
            if direction_key not in state:
                continue
            magnitude = state[key].float()
            direction = state[direction_key].float()
            # The op torch's weight-norm parametrisation runs, so folding matches upstream bit for bit.
            folded[base + "weight"] = torch._weight_norm(direction, magnitude, 0)
            consumed.update((key, direction_key))
    for key, value in state.items():
        if key not in consumed:
            folded[key] = value
    return folded


def checkpoint_shapes(config: BigVGANConfig) -> dict[str, tuple[int, ...]]:
    """{key: shape} as a checkpoint with weight_g/weight_v pairs stores it (built on meta)."""
    with torch.device("meta"):
        model = BigVGAN(config)
    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in model.state_dict().items():
        if key.endswith(".weight"):
            base = key[: -len("weight")]
            shapes[base + "weight_g"] = (value.shape[0],) + (1,) * (value.ndim - 1)
            shapes[base + "weight_v"] = tuple(value.shape)
        else:
            shapes[key] = tuple(value.shape)
    return shapes


def load_vocoder_file(path: str | Path, config: BigVGANConfig, use_kernels: bool = False) -> BigVGAN:
    """Read a ``{"generator": state_dict}`` checkpoint (both official files) into an eval-mode model."""
    state = load_state_file(path)
    model = BigVGAN(config, use_kernels).eval()
    try:
        model.load_checkpoint(pick_sub_state(state, "generator", path))
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    return model
