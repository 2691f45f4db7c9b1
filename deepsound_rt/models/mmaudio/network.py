"""The MMAudio flow network (all released variants) with state-dict keys equal to the checkpoints.

Conditions that do not change over the ODE steps (projected CLIP/sync/text features and their
pooled summaries) are computed once by :meth:`MMAudio.preprocess_conditions`; every step then only
runs :meth:`MMAudio.predict_flow`. Classifier-free guidance runs the conditional and unconditional
passes as one batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

import torch
from torch import nn

from ..weights import load_strict, state_shapes
from .layers import (
    ChannelLastConv1d,
    ConvSwiGLU,
    FinalBlock,
    JointBlock,
    ModulatedBlock,
    SwiGLU,
    TimestepEmbedder,
    rope_rotations,
)

IGNORED_CHECKPOINT_KEYS = ("t_embed.freqs", "latent_rot", "clip_rot")  # recomputed tables some files carry


@dataclass(frozen=True)
class FlowConfig:
    """Architecture of one MMAudio variant (sequence lengths are set per clip, not here)."""

    latent_dim: int
    clip_dim: int
    sync_dim: int
    text_dim: int
    hidden_dim: int
    depth: int
    fused_depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    v2: bool = False
    text_seq_len: int = 77


def _released(latent_dim: int, num_heads: int, depth: int, fused_depth: int, v2: bool = False) -> FlowConfig:
    return FlowConfig(
        latent_dim=latent_dim,
        clip_dim=1024,
        sync_dim=768,
        text_dim=1024,
        hidden_dim=64 * num_heads,
        depth=depth,
        fused_depth=fused_depth,
        num_heads=num_heads,
        v2=v2,
    )


VARIANTS: dict[str, FlowConfig] = {
    "small_16k": _released(20, 7, 12, 8),
    "small_44k": _released(40, 7, 12, 8),
    "medium_44k": _released(40, 14, 12, 8),
    "large_44k": _released(40, 14, 21, 14),
    "large_44k_v2": _released(40, 14, 21, 14, v2=True),
}


class AudioFormat(NamedTuple):
    """Sampling rate and mel hop (samples per spectrogram frame) of a variant's VAE."""

    sampling_rate: int
    spectrogram_frame_rate: int


AUDIO_16K = AudioFormat(16000, 256)
AUDIO_44K = AudioFormat(44100, 512)
VARIANT_AUDIO: dict[str, AudioFormat] = {
    "small_16k": AUDIO_16K,
    "small_44k": AUDIO_44K,
    "medium_44k": AUDIO_44K,
    "large_44k": AUDIO_44K,
    "large_44k_v2": AUDIO_44K,
}
TRAINING_DURATION_S = 8.0  # the released checkpoints' (and manifests') sequence lengths

LATENT_DOWNSAMPLE = 2  # mel frames per latent
CLIP_FPS = 8
SYNC_FPS = 25
SYNC_FRAMES_PER_SEGMENT = 16  # Synchformer video segment, taken every SYNC_SEGMENT_STEP frames
SYNC_SEGMENT_STEP = 8
SYNC_DOWNSAMPLE = 2
SYNC_FEATURES_PER_SEGMENT = SYNC_FRAMES_PER_SEGMENT // SYNC_DOWNSAMPLE  # 8, each with a learned embedding


def sequence_lengths(duration_s: float, sampling_rate: int, spectrogram_frame_rate: int) -> tuple[int, int, int]:
    """(latent, clip, sync) token counts for a clip, with upstream's SequenceConfig float arithmetic."""
    latent = int(math.ceil(duration_s * sampling_rate / spectrogram_frame_rate / LATENT_DOWNSAMPLE))
    clip = int(duration_s * CLIP_FPS)
    sync_frames = duration_s * SYNC_FPS
    sync_segments = (sync_frames - SYNC_FRAMES_PER_SEGMENT) // SYNC_SEGMENT_STEP + 1
    sync = int(sync_segments * SYNC_FRAMES_PER_SEGMENT / SYNC_DOWNSAMPLE)
    if min(latent, clip, sync) <= 0:
        raise ValueError(f"duration {duration_s} s is too short: needs at least one 16-frame sync segment")
    return latent, clip, sync


def num_audio_samples(latent_seq_len: int, spectrogram_frame_rate: int) -> int:
    """Waveform samples the vocoder produces from ``latent_seq_len`` latents."""
    return latent_seq_len * spectrogram_frame_rate * LATENT_DOWNSAMPLE


def nearest_exact_source_index(in_len: int, out_len: int) -> torch.Tensor:
    """Source index per output position of ``F.interpolate(mode="nearest-exact")`` on float32 input.

    PyTorch computes scale and (dst + 0.5) * scale in float32; exact arithmetic picks other sources
    at some positions (57 and 172 for 192 -> 345), so the float32 formula is reproduced here.
    """
    scale = torch.tensor(in_len, dtype=torch.float32, device="cpu") / out_len
    centres = torch.arange(out_len, dtype=torch.float32, device="cpu") + 0.5
    return torch.floor(centres * scale).long().clamp(max=in_len - 1)


class Conditions(NamedTuple):
    """Step-independent conditioning: projected token features and pooled global summaries."""

    clip_f: torch.Tensor  # (B, clip_len, D)
    sync_f: torch.Tensor  # (B, latent_len, D), already up-sampled to the latent rate
    text_f: torch.Tensor  # (B, text_len, D)
    clip_f_c: torch.Tensor  # (B, D)
    text_f_c: torch.Tensor  # (B, D)


class MMAudio(nn.Module):
    """MM-DiT flow network: joint [latent, clip, text] blocks, then latent-only fused blocks."""

    def __init__(self, cfg: FlowConfig, latent_seq_len: int, clip_seq_len: int, sync_seq_len: int):
        super().__init__()
        self.config = cfg
        dim = cfg.hidden_dim
        # v2 puts a SiLU after every input projection; v1 a SELU after the convs only. The
        # activation's position shifts the Sequential indices, so it is part of the key layout.
        conv_act: type[nn.Module] = nn.SiLU if cfg.v2 else nn.SELU

        def after_linear() -> list[nn.Module]:
            return [nn.SiLU()] if cfg.v2 else []

        self.audio_input_proj = nn.Sequential(
            ChannelLastConv1d(cfg.latent_dim, dim, kernel_size=7, padding=3),
            conv_act(),
            ConvSwiGLU(dim, dim * 4, kernel_size=7),
        )
        self.clip_input_proj = nn.Sequential(
            nn.Linear(cfg.clip_dim, dim), *after_linear(), ConvSwiGLU(dim, dim * 4, kernel_size=3)
        )
        self.sync_input_proj = nn.Sequential(
            ChannelLastConv1d(cfg.sync_dim, dim, kernel_size=7, padding=3),
            conv_act(),
            ConvSwiGLU(dim, dim * 4, kernel_size=3),
        )
        self.text_input_proj = nn.Sequential(nn.Linear(cfg.text_dim, dim), *after_linear(), SwiGLU(dim, dim * 4))

        self.clip_cond_proj = nn.Linear(dim, dim)
        self.text_cond_proj = nn.Linear(dim, dim)
        self.global_cond_mlp = SwiGLU(dim, dim * 4)
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, SYNC_FEATURES_PER_SEGMENT, cfg.sync_dim))
        self.final_layer = FinalBlock(dim, cfg.latent_dim)
        if cfg.v2:
            self.t_embed = TimestepEmbedder(dim, num_frequencies=dim, max_period=1)
        else:
            self.t_embed = TimestepEmbedder(dim, num_frequencies=256, max_period=10000)

        num_joint = cfg.depth - cfg.fused_depth
        self.joint_blocks = nn.ModuleList(
            JointBlock(dim, cfg.num_heads, cfg.mlp_ratio, pre_only=(i == num_joint - 1)) for i in range(num_joint)
        )
        self.fused_blocks = nn.ModuleList(
            ModulatedBlock(dim, cfg.num_heads, cfg.mlp_ratio, kernel_size=3) for _ in range(cfg.fused_depth)
        )

        # Stored in the checkpoint as (frozen) parameters, so they stay parameters here.
        nan = float("nan")
        self.latent_mean = nn.Parameter(torch.full((1, 1, cfg.latent_dim), nan), requires_grad=False)
        self.latent_std = nn.Parameter(torch.full((1, 1, cfg.latent_dim), nan), requires_grad=False)
        self.empty_string_feat = nn.Parameter(torch.zeros(cfg.text_seq_len, cfg.text_dim), requires_grad=False)
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, cfg.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, cfg.sync_dim))

        self.update_seq_lengths(latent_seq_len, clip_seq_len, sync_seq_len)

    # -- sequence-length dependent tables -------------------------------------------------------

    def update_seq_lengths(self, latent_seq_len: int, clip_seq_len: int, sync_seq_len: int) -> None:
        """Set the clip's token counts and rebuild the position tables that depend on them."""
        if sync_seq_len % SYNC_FEATURES_PER_SEGMENT:
            raise ValueError(f"sync_seq_len {sync_seq_len} is not a multiple of {SYNC_FEATURES_PER_SEGMENT}")
        self._latent_seq_len = latent_seq_len
        self._clip_seq_len = clip_seq_len
        self._sync_seq_len = sync_seq_len
        self._build_tables()

    def _build_tables(self) -> None:
        """Rotary tables (float32) and the sync up-sampling map, built on the CPU then moved.

        Building on the CPU keeps them identical on every device; float32 is kept even when the
        module runs in bf16/fp16 because RoPE is applied in float32.
        """
        device = self.latent_mean.device
        head_dim = self.config.hidden_dim // self.config.num_heads
        clip_scaling = self._latent_seq_len / self._clip_seq_len
        tables = {
            "latent_rot": rope_rotations(self._latent_seq_len, head_dim),
            "clip_rot": rope_rotations(self._clip_seq_len, head_dim, freq_scaling=clip_scaling),
            "sync_src_index": nearest_exact_source_index(self._sync_seq_len, self._latent_seq_len),
        }
        for name, table in tables.items():
            self.register_buffer(name, table.to(device), persistent=False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> MMAudio:
        # .to(dtype) would round the rotary tables; rebuild them instead of casting.
        super()._apply(fn, recurse)
        self._build_tables()
        return self

    @property
    def latent_seq_len(self) -> int:
        return self._latent_seq_len

    @property
    def clip_seq_len(self) -> int:
        return self._clip_seq_len

    @property
    def sync_seq_len(self) -> int:
        return self._sync_seq_len

    @property
    def dtype(self) -> torch.dtype:
        return self.latent_mean.dtype

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    # -- checkpoint -----------------------------------------------------------------------------

    def load_checkpoint(self, state: Mapping[str, torch.Tensor]) -> None:
        """Strict load of an official state dict; recomputed tables some files carry are dropped."""
        kept = {k: v for k, v in state.items() if k not in IGNORED_CHECKPOINT_KEYS}
        load_strict(self, kept, "MMAudio flow checkpoint")

    # -- latent normalisation -------------------------------------------------------------------

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.latent_mean) / self.latent_std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Flow-space latents -> VAE latents, (B, N, C)."""
        return x * self.latent_std + self.latent_mean

    # -- conditions -----------------------------------------------------------------------------

    def _check_length(self, what: str, tensor: torch.Tensor, expected: int) -> None:
        if tensor.shape[1] != expected:
            raise ValueError(f"{what} has {tensor.shape[1]} tokens, the network is set up for {expected}")

    def preprocess_conditions(self, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor) -> Conditions:
        """Project the encoder features once per clip (batches may differ: 1 broadcasts later)."""
        self._check_length("clip_f", clip_f, self._clip_seq_len)
        self._check_length("sync_f", sync_f, self._sync_seq_len)
        self._check_length("text_f", text_f, self.config.text_seq_len)
        clip_f, sync_f, text_f = (f.to(self.dtype) for f in (clip_f, sync_f, text_f))

        sync_batch = sync_f.shape[0]
        num_segments = self._sync_seq_len // SYNC_FEATURES_PER_SEGMENT
        sync_f = sync_f.reshape(sync_batch, num_segments, SYNC_FEATURES_PER_SEGMENT, -1) + self.sync_pos_emb
        sync_f = self.sync_input_proj(sync_f.flatten(1, 2))
        sync_f = sync_f.index_select(1, self.sync_src_index)  # nearest-exact up-sampling to latent rate

        clip_f = self.clip_input_proj(clip_f)
        text_f = self.text_input_proj(text_f)
        return Conditions(
            clip_f=clip_f,
            sync_f=sync_f,
            text_f=text_f,
            clip_f_c=self.clip_cond_proj(clip_f.mean(dim=1)),
            text_f_c=self.text_cond_proj(text_f.mean(dim=1)),
        )

    def get_empty_conditions(self, bs: int, negative_text_features: torch.Tensor | None = None) -> Conditions:
        """Unconditional branch: learned empty clip/sync features and the empty (or negative) text.

        Computed for batch 1 (or the negative text's batch) and expanded to ``bs``, as upstream does.
        """
        text = self.empty_string_feat.unsqueeze(0) if negative_text_features is None else negative_text_features
        clip = self.empty_clip_feat.unsqueeze(0).expand(1, self._clip_seq_len, -1)
        sync = self.empty_sync_feat.unsqueeze(0).expand(1, self._sync_seq_len, -1)
        c = self.preprocess_conditions(clip, sync, text)
        return Conditions(
            clip_f=c.clip_f.expand(bs, -1, -1),
            sync_f=c.sync_f.expand(bs, -1, -1),
            text_f=c.text_f.expand(bs, -1, -1),
            clip_f_c=c.clip_f_c.expand(bs, -1),
            text_f_c=c.text_f_c.expand(bs, -1),
        )

    # -- flow -----------------------------------------------------------------------------------

    def predict_flow(self, latent: torch.Tensor, t: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        """Velocity (B, N, latent_dim) at flow time ``t`` ((B,) or 0-dim, kept float32)."""
        self._check_length("latent", latent, self._latent_seq_len)
        batch = latent.shape[0]
        t = t.to(device=latent.device, dtype=torch.float32).reshape(-1).expand(batch)

        latent = self.audio_input_proj(latent.to(self.dtype))
        global_c = self.global_cond_mlp(conditions.clip_f_c + conditions.text_f_c)
        global_c = self.t_embed(t).unsqueeze(1) + global_c.unsqueeze(1)  # (B, 1, D)
        extended_c = global_c + conditions.sync_f  # (B, N, D): per-latent-token conditioning

        clip_f, text_f = conditions.clip_f, conditions.text_f
        for block in self.joint_blocks:
            latent, clip_f, text_f = block(latent, clip_f, text_f, global_c, extended_c, self.latent_rot, self.clip_rot)
        for block in self.fused_blocks:
            latent = block(latent, extended_c, self.latent_rot)
        # Upstream modulates the final layer with global_c rather than extended_c (its issue #55);
        # the released weights were trained that way.
        return self.final_layer(latent, global_c)

    def guided_velocity(
        self,
        t: torch.Tensor,
        latent: torch.Tensor,
        conditions: Conditions,
        empty_conditions: Conditions,
        cfg_strength: float,
    ) -> torch.Tensor:
        """Classifier-free guidance s*v_cond + (1-s)*v_uncond; plain v_cond when s < 1.

        Both branches run as one batch of 2B so the GPU sees one large call per step.
        """
        if cfg_strength < 1.0:
            return self.predict_flow(latent, t, conditions)
        paired = Conditions(*(torch.cat([c, u]) for c, u in zip(conditions, empty_conditions)))
        return self.paired_guided_velocity(t, latent, paired, cfg_strength)

    def paired_guided_velocity(self, t: torch.Tensor, latent: torch.Tensor, paired: Conditions,
                               cfg_strength: float) -> torch.Tensor:
        """:meth:`guided_velocity` with the conditions already stacked as [cond; uncond] (2B).

        A sampler stacks them once per clip instead of once per step.
        """
        batch = latent.shape[0]
        if cfg_strength < 1.0:
            return self.predict_flow(latent, t, Conditions(*(c[:batch] for c in paired)))
        t = t.to(device=latent.device, dtype=torch.float32).reshape(-1).expand(batch)
        flow = self.predict_flow(torch.cat([latent, latent]), torch.cat([t, t]), paired)
        v_cond, v_uncond = flow.split(batch)
        return cfg_strength * v_cond + (1 - cfg_strength) * v_uncond


def checkpoint_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a released variant, built on the meta device at its 8 s training lengths."""
    lengths = sequence_lengths(TRAINING_DURATION_S, *VARIANT_AUDIO[variant])
    with torch.device("meta"):
        net = MMAudio(VARIANTS[variant], *lengths)
    return state_shapes(net)
