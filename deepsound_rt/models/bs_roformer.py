"""BS-RoFormer source separator, checkpoint-compatible with viperx's ``model_bs_roformer_ep_317``.

Stereo waveform -> STFT -> per-band RMSNorm+Linear -> ``depth`` x (time transformer over frames,
frequency transformer over bands) -> final RMSNorm -> per-band MLP+GLU complex mask -> masked STFT
-> iSTFT. State-dict keys equal the upstream ones (MusicSourceSeparationTraining as vendored by
DeepSound-V1), so the official ``.ckpt`` loads strictly.

Deliberate difference: DeepSound never calls ``eval()``, so its separator runs with dropout 0.1 and
its output changes from run to run. This module has no dropout at all (upstream's eval mode): the
output is deterministic in train and eval mode alike.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..errors import WeightsError
from ..weights_dir import DEV_SEED, WeightFile, WeightsSource
from .weights import load_state_file, load_strict, state_shapes

VIPERX_FREQS_PER_BANDS: tuple[int, ...] = (
    (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
)

# Upstream constructor arguments that only matter for training (loss, dropout, checkpointing) or
# select an attention backend; they do not change inference results or checkpoint keys.
_TRAINING_ONLY_KEYS = frozenset(
    {
        "attn_dropout",
        "ff_dropout",
        "flash_attn",
        "dim_freqs_in",  # unused by upstream's constructor body
        "multi_stft_resolution_loss_weight",
        "multi_stft_resolutions_window_sizes",
        "multi_stft_hop_size",
        "multi_stft_normalized",
        "use_torch_checkpoint",
    }
)


@dataclass(frozen=True)
class BSRoformerConfig:
    """Hyper-parameters that shape the network. Defaults are upstream's constructor defaults, so a
    config dict that omits a key means what it means upstream."""

    dim: int
    depth: int
    stereo: bool = False
    num_stems: int = 1
    time_transformer_depth: int = 2
    freq_transformer_depth: int = 2
    freqs_per_bands: tuple[int, ...] = VIPERX_FREQS_PER_BANDS
    dim_head: int = 64
    heads: int = 8
    ff_mult: int = 4
    mask_estimator_depth: int = 2
    mlp_expansion_factor: int = 4
    stft_n_fft: int = 2048
    stft_hop_length: int = 512
    stft_win_length: int = 2048
    stft_normalized: bool = False

    def __post_init__(self) -> None:
        num_bins = self.stft_n_fft // 2 + 1
        if sum(self.freqs_per_bands) != num_bins or len(self.freqs_per_bands) < 2:
            raise ValueError(
                f"freqs_per_bands must split the {num_bins} STFT bins into 2 or more bands, "
                f"got {len(self.freqs_per_bands)} bands summing to {sum(self.freqs_per_bands)}"
            )

    @property
    def audio_channels(self) -> int:
        return 2 if self.stereo else 1

    @property
    def band_features(self) -> tuple[int, ...]:
        """Real features per band: re/im for every bin of every channel."""
        return tuple(2 * self.audio_channels * f for f in self.freqs_per_bands)

    @classmethod
    def from_dict(cls, d: Mapping) -> "BSRoformerConfig":
        """Build from an upstream ``config.model`` dict (yaml / golden ``constructor_config``).

        Training-only keys are ignored; features we do not implement (linear attention, skip
        connections, a custom STFT window) and unknown keys raise ValueError rather than being
        silently dropped.
        """
        own = {f.name for f in fields(cls)}
        unknown = set(d) - own - _TRAINING_ONLY_KEYS - {"linear_transformer_depth", "skip_connection", "stft_window_fn"}
        if unknown:
            raise ValueError(f"unknown BS-RoFormer config keys: {sorted(unknown)}")
        if d.get("linear_transformer_depth", 0):
            raise ValueError("linear_transformer_depth > 0 (linear attention) is not supported")
        if d.get("skip_connection", False):
            raise ValueError("skip_connection=True is not supported")
        if d.get("stft_window_fn") is not None:
            raise ValueError("only the default Hann STFT window is supported")
        values = {k: d[k] for k in own if k in d}
        if "freqs_per_bands" in values:
            values["freqs_per_bands"] = tuple(int(f) for f in values["freqs_per_bands"])
        return cls(**values)


BSROFORMER_VIPERX_317 = BSRoformerConfig(
    dim=512,
    depth=12,
    stereo=True,
    num_stems=1,
    time_transformer_depth=1,
    freq_transformer_depth=1,
    dim_head=64,
    heads=8,
    mask_estimator_depth=2,
    stft_n_fft=2048,
    stft_hop_length=441,
    stft_win_length=2048,
)

# viperx ep317 inference settings (audio.chunk_size, inference.num_overlap, inference.batch_size).
VIPERX_CHUNK_SIZE = 352800
VIPERX_NUM_OVERLAP = 2
VIPERX_BATCH_SIZE = 4
SEPARATOR_FILE = WeightFile(
    "separator", ("model_bs_roformer_ep_317_sdr_12.9755.ckpt",),
    "BS-RoFormer viperx ep317 vocal separator (DeepSound's pretrained/remove_vo/checkpoints/)",
)

# Same band split and STFT as viperx, tiny width: for the dev preset and tests.
BSROFORMER_TINY = BSRoformerConfig(
    dim=16,
    depth=1,
    stereo=True,
    num_stems=1,
    time_transformer_depth=1,
    freq_transformer_depth=1,
    dim_head=8,
    heads=2,
    stft_hop_length=441,
)


class RMSNorm(nn.Module):
    """L2-normalise, then scale by sqrt(dim)·gamma (upstream's RMSNorm, not mean-square + eps).

    Computed in float32 whatever the module dtype: a half-precision sum of squares overflows.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.normalize(x.float(), dim=-1) * self.scale * self.gamma.float()
        return normed.to(self.gamma.dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over interleaved pairs (2i, 2i+1), positions 0..n-1.

    ``freqs`` is stored because the checkpoint stores it; one instance is shared by every attention
    of one axis, so the state dict repeats it under each of them.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        exponents = torch.arange(0, dim, 2)[: dim // 2].float() / dim
        self.register_buffer("freqs", 1.0 / theta**exponents)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate (..., n, d) queries or keys; angles in float32."""
        positions = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)
        angles = (positions[:, None] * self.freqs.float()).repeat_interleave(2, dim=-1)
        pairs = x.unflatten(-1, (-1, 2))
        rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * angles.cos().to(x.dtype) + rotated_half * angles.sin().to(x.dtype)


class Attention(nn.Module):
    """Pre-norm multi-head attention with rotary q/k and a per-head sigmoid gate on the output."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary_embed: RotaryEmbedding) -> None:
        super().__init__()
        self.heads = heads
        self.rotary_embed = rotary_embed
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        # Sequential only to keep upstream's key ``to_out.0`` (index 1 was its dropout).
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        batch, length, _ = x.shape
        # Fused projection laid out as (qkv, heads, dim_head).
        q, k, v = self.to_qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(self.rotary_embed(q), self.rotary_embed(k), v)
        gates = self.to_gates(x).transpose(1, 2).unsqueeze(-1).sigmoid()
        out = (out * gates).transpose(1, 2).reshape(batch, length, -1)
        return self.to_out(out)


class FeedForward(nn.Module):
    """RMSNorm -> Linear -> exact GELU -> Linear."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        # Identity stands where upstream has dropout, so the checkpoint's indices net.1 / net.4 line up.
        self.net = nn.Sequential(
            RMSNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Identity(), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """Residual attention + feed-forward layers; no output norm (upstream builds them with
    ``norm_output=False``)."""

    def __init__(self, config: BSRoformerConfig, depth: int, rotary_embed: RotaryEmbedding) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Attention(config.dim, config.heads, config.dim_head, rotary_embed),
                    FeedForward(config.dim, config.ff_mult),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = attention(x) + x
            x = feed_forward(x) + x
        return x


class BandSplit(nn.Module):
    """Each band's features -> RMSNorm -> Linear to ``dim``; bands stacked on dim -2."""

    def __init__(self, dim: int, band_features: tuple[int, ...]) -> None:
        super().__init__()
        self.band_features = band_features
        self.to_features = nn.ModuleList(nn.Sequential(RMSNorm(n), nn.Linear(n, dim)) for n in band_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Slices, not ``split``: an exported uneven Split keeps its sizes in external data, where
        # ONNX Runtime's shape inference cannot read them.
        starts = (0, *itertools.accumulate(self.band_features))
        bands = [x[..., start:end] for start, end in zip(starts, starts[1:])]
        return torch.stack([net(band) for band, net in zip(bands, self.to_features)], dim=-2)


def _mlp(dim_in: int, dim_out: int, dim_hidden: int, depth: int) -> nn.Sequential:
    """Linear layers with Tanh between them (upstream's ``MLP``)."""
    dims = (dim_in,) + (dim_hidden,) * (depth - 1) + (dim_out,)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        if i:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    """Per band: MLP to twice the band's features, GLU; bands concatenated on the last dim."""

    def __init__(self, dim: int, band_features: tuple[int, ...], depth: int, expansion: int) -> None:
        super().__init__()
        self.to_freqs = nn.ModuleList(
            nn.Sequential(_mlp(dim, 2 * n, dim * expansion, depth), nn.GLU(dim=-1)) for n in band_features
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(band) for band, net in zip(x.unbind(dim=-2), self.to_freqs)], dim=-1)


class BSRoformer(nn.Module):
    """(B, channels, T) waveform -> separated stem(s), as upstream's ``forward`` without a target:
    (B, channels, T) for one stem, (B, stems, channels, T) for several. ``use_kernels``: the STFT
    and iSTFT run our kernels where they implement the configured transform."""

    def __init__(self, config: BSRoformerConfig, use_kernels: bool = False) -> None:
        super().__init__()
        self.config = config
        n_fft = config.stft_n_fft
        # Our kernels: a window as long as the FFT, a power-of-two size, not normalised.
        self.kernel_transform = use_kernels and config.stft_win_length == n_fft and not config.stft_normalized \
            and n_fft & (n_fft - 1) == 0
        time_rotary = RotaryEmbedding(config.dim_head)
        freq_rotary = RotaryEmbedding(config.dim_head)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Transformer(config, config.time_transformer_depth, time_rotary),
                    Transformer(config, config.freq_transformer_depth, freq_rotary),
                ]
            )
            for _ in range(config.depth)
        )
        self.final_norm = RMSNorm(config.dim)
        self.band_split = BandSplit(config.dim, config.band_features)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(config.dim, config.band_features, config.mask_estimator_depth, config.mlp_expansion_factor)
            for _ in range(config.num_stems)
        )

    def _window(self, device: torch.device) -> torch.Tensor:
        return torch.hann_window(self.config.stft_win_length, device=device)

    def stft(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, T) -> (N, bins, frames, [re, im]) float32: centred, reflect-padded, periodic Hann.

        The only place the forward STFT happens: our kernel where it applies, else torch.stft.
        """
        c = self.config
        if self.kernel_transform:
            return torch.view_as_real(kernels.stft(audio.float(), self._window(audio.device), c.stft_hop_length))
        spec = torch.stft(
            audio.float(),
            n_fft=c.stft_n_fft,
            hop_length=c.stft_hop_length,
            win_length=c.stft_win_length,
            window=self._window(audio.device),
            normalized=c.stft_normalized,
            return_complex=True,
        )
        return torch.view_as_real(spec)

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """(N, bins, frames, [re, im]) -> (N, length) float32; inverse of :meth:`stft`."""
        c = self.config
        complex_spec = torch.view_as_complex(spec.float().contiguous())
        if self.kernel_transform:
            return kernels.istft(complex_spec, self._window(spec.device), c.stft_hop_length, length)
        return torch.istft(
            complex_spec,
            n_fft=c.stft_n_fft,
            hop_length=c.stft_hop_length,
            win_length=c.stft_win_length,
            window=self._window(spec.device),
            normalized=c.stft_normalized,
            length=length,
        )

    def forward(self, mix: torch.Tensor, intermediates: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Separate ``mix`` (B, channels, T); ``intermediates`` (if given) receives ``stft_real_imag``,
        ``band_split_out``, ``final_norm_out`` and ``mask_estimator_out`` in upstream's layouts."""
        return self.separate(mix, lambda spec: self.separate_spectrum(spec, intermediates))

    def separate(self, mix: torch.Tensor, core: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """STFT, ``core`` (:meth:`separate_spectrum`, or an exported graph of it), iSTFT.

        The STFT and iSTFT stay outside ``core`` because TensorRT has no STFT operator.
        """
        c = self.config
        if mix.ndim == 2:
            mix = mix.unsqueeze(1)
        batch, channels, length = mix.shape
        if channels != c.audio_channels:
            raise ValueError(f"model expects {c.audio_channels} audio channel(s), got {channels}")
        spec = self.stft(mix.reshape(batch * channels, length))
        stems = core(spec.view(batch, channels, *spec.shape[1:]))
        audio = self.istft(stems.reshape(-1, *spec.shape[1:]), length)
        audio = audio.view(batch, c.num_stems, channels, length).to(mix.dtype)
        return audio.squeeze(1) if c.num_stems == 1 else audio

    def separate_spectrum(
        self, spec: torch.Tensor, intermediates: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(B, channels, bins, frames, [re, im]) mix STFT -> (B, stems, channels, bins, frames, [re, im])
        masked STFT of each stem: band split, transformers, mask estimators, mask applied.

        The complex product is written out in real arithmetic so that this exports (ONNX has no
        complex type); the frame count may vary (rotary positions follow it).
        """
        record = intermediates if intermediates is not None else {}
        c = self.config
        batch, channels, bins, frames = spec.shape[:4]
        param_dtype = self.final_norm.gamma.dtype
        record["stft_real_imag"] = spec
        # Feature index ((bin·channels + channel)·2 + re/im): channels interleaved within each bin.
        spec = spec.transpose(1, 2).reshape(batch, bins * channels, frames, 2)
        features = spec.permute(0, 2, 1, 3).reshape(batch, frames, bins * channels * 2)

        x = self.band_split(features.to(param_dtype))
        record["band_split_out"] = x
        num_bands, dim = x.shape[2], x.shape[3]
        for time_transformer, freq_transformer in self.layers:
            x = x.transpose(1, 2).reshape(batch * num_bands, frames, dim)
            x = time_transformer(x)
            x = x.view(batch, num_bands, frames, dim).transpose(1, 2).reshape(batch * frames, num_bands, dim)
            x = freq_transformer(x)
            x = x.view(batch, frames, num_bands, dim)
        x = self.final_norm(x)
        record["final_norm_out"] = x

        mask = torch.stack([estimator(x) for estimator in self.mask_estimators], dim=1)
        record["mask_estimator_out"] = mask.squeeze(1) if c.num_stems == 1 else mask
        # (B, stems, frames, bins·channels·2) -> (B, stems, bins·channels, frames, 2)
        mask = mask.float().unflatten(-1, (bins * channels, 2)).transpose(2, 3)
        spec_re, spec_im = spec.unsqueeze(1).unbind(-1)
        mask_re, mask_im = mask.unbind(-1)
        masked = torch.stack((spec_re * mask_re - spec_im * mask_im, spec_re * mask_im + spec_im * mask_re), dim=-1)
        return masked.view(batch, c.num_stems, bins, channels, frames, 2).transpose(2, 3)

    def load_checkpoint(self, state: Mapping[str, torch.Tensor]) -> None:
        """Strict load of an upstream state dict; WeightsError names missing/unexpected keys."""
        load_strict(self, state, "BS-RoFormer checkpoint")


def checkpoint_shapes(config: BSRoformerConfig = BSROFORMER_VIPERX_317) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the checkpoint for ``config``, built on the meta device (no allocation)."""
    with torch.device("meta"):
        model = BSRoformer(config)
    return state_shapes(model)


def load_separator_file(path: str | Path, config: BSRoformerConfig = BSROFORMER_VIPERX_317,
                        use_kernels: bool = False) -> BSRoformer:
    """Read a plain state-dict checkpoint (viperx ``.ckpt``) into an eval-mode model."""
    model = BSRoformer(config, use_kernels).eval()
    try:
        model.load_checkpoint(load_state_file(path))
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    return model


def separator_network(source: WeightsSource, path: str | Path | None, use_kernels: bool = False) -> BSRoformer:
    """The viperx separator from ``source``: its checkpoint at ``path``, or seeded random weights
    at toy width (tiny-random) or full size (full-random)."""
    if source is WeightsSource.OFFICIAL:
        if path is None:
            raise WeightsError("the separator needs the BS-RoFormer checkpoint "
                               f"({SEPARATOR_FILE.names[0]}) in the weights directory")
        return load_separator_file(path, use_kernels=use_kernels)
    config = BSROFORMER_TINY if source is WeightsSource.TINY_RANDOM else BSROFORMER_VIPERX_317
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEV_SEED)
        return BSRoformer(config, use_kernels).eval()

