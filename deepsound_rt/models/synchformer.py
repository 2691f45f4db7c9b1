"""Synchformer video branch: the sync-feature extractor that MMAudio conditions on.

A MotionFormer (ViT with divided space-time attention) turns each 16-frame, 224 px segment into
8 x 14 x 14 tokens; a per-time-step CLS aggregator pools every time step into one vector, giving
8 features per segment. Segments overlap by half (stride 8 frames), so a 25 fps clip yields
``8 * ((T - 16) // 8 + 1)`` features. State-dict keys are the official
``synchformer_state_dict.pth`` keys under ``vfeat_extractor.``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .weights import load_strict, state_shapes

SEGMENT_STRIDE = 8
"""Frames between the starts of consecutive segments (MMAudio's ``step_size``); even, so segments
share the tubelets (frame pairs) of the whole video."""

LAYER_NORM_EPS = 1e-6
STATE_PREFIX = "vfeat_extractor"


@dataclass(frozen=True)
class SynchformerConfig:
    """The MotionFormer ``VIT`` settings; the patch/segment geometry is fixed by the checkpoint."""

    embed_dim: int = 768
    num_heads: int = 12
    depth: int = 12
    mlp_ratio: float = 4.0
    image_size: int = 224
    patch_size: int = 16
    temporal_patch_size: int = 2
    temporal_positions: int = 8

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patches_per_frame(self) -> int:
        return self.grid_size**2

    @property
    def segment_frames(self) -> int:
        """Frames per segment: 8 temporal positions x 2 frames per temporal patch = 16."""
        return self.temporal_patch_size * self.temporal_positions

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


SYNCHFORMER_FULL = SynchformerConfig()


class DividedAttention(nn.Module):
    """Self-attention restricted to groups of patch tokens, with a shared CLS token.

    The CLS query attends to every token; each patch query attends to its group (one spatial
    position across time, or one frame across space) plus the CLS key/value.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int, across_time: bool) -> torch.Tensor:
        """``x``: (B, 1 + frames*P, D) time-major tokens; ``across_time`` picks the grouping."""
        batch, tokens, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        patches = (tokens - 1) // frames
        # (3, B, heads, tokens, head_dim): q, k, v are consecutive blocks of the qkv output
        q, k, v = self.qkv(x).view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)

        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)

        groups = patches if across_time else frames

        def grouped(t: torch.Tensor) -> torch.Tensor:
            """(B, h, 1 + F*P, d) patch part -> (B*groups, h, group_len, d)."""
            t = t[:, :, 1:].reshape(batch, heads, frames, patches, head_dim)
            t = t.permute(0, 3, 1, 2, 4) if across_time else t.permute(0, 2, 1, 3, 4)
            return t.reshape(-1, heads, t.shape[-2], head_dim)

        def grouped_with_cls(t: torch.Tensor) -> torch.Tensor:
            cls = t[:, :, :1].unsqueeze(1).expand(batch, groups, heads, 1, head_dim)
            return torch.cat((cls.reshape(-1, heads, 1, head_dim), grouped(t)), dim=2)

        patch_out = F.scaled_dot_product_attention(grouped(q), grouped_with_cls(k), grouped_with_cls(v))
        patch_out = patch_out.view(batch, groups, heads, -1, head_dim)
        # back to time-major (B, F, P, h, d)
        patch_out = patch_out.permute(0, 3, 1, 2, 4) if across_time else patch_out.permute(0, 1, 3, 2, 4)
        patch_out = patch_out.reshape(batch, tokens - 1, dim)
        out = torch.cat((cls_out.transpose(1, 2).reshape(batch, 1, dim), patch_out), dim=1)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """Time attention (``norm3``), then space attention (``norm1``), then MLP (``norm2``).

    The attribute order mirrors the checkpoint's key order.
    """

    def __init__(self, config: SynchformerConfig):
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = DividedAttention(dim, config.num_heads)
        self.timeattn = DividedAttention(dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, config.mlp_hidden)
        self.norm3 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames, across_time=True)
        x = x + self.attn(self.norm1(x), frames, across_time=False)
        return x + self.mlp(self.norm2(x))


class PackedProjectionAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter names (packed q/k/v)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(3 * dim, dim)))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``query`` (N, Lq, D) attends to ``source`` (N, L, D)."""
        dim = query.shape[-1]
        w_q, w_kv = self.in_proj_weight.split((dim, 2 * dim))
        b_q, b_kv = self.in_proj_bias.split((dim, 2 * dim))
        head_dim = dim // self.num_heads
        q = F.linear(query, w_q, b_q).unflatten(-1, (self.num_heads, head_dim)).transpose(1, 2)
        kv = F.linear(source, w_kv, b_kv).unflatten(-1, (2, self.num_heads, head_dim))
        k, v = kv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.out_proj(out)


class SpatialAggregator(nn.Module):
    """Pools each time step's 14x14 tokens into its own learned CLS token.

    Upstream runs a norm-first ``nn.TransformerEncoderLayer`` (GELU, eps 1e-6) over [CLS, tokens]
    and keeps the CLS output. Everything after attention is per token, so only the CLS query is
    computed here.
    """

    def __init__(self, config: SynchformerConfig):
        super().__init__()
        dim = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.self_attn = PackedProjectionAttention(dim, config.num_heads)
        self.linear1 = nn.Linear(dim, config.mlp_hidden)
        self.linear2 = nn.Linear(config.mlp_hidden, dim)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P, D) tokens of N frames -> (N, D)."""
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        normed = self.norm1(x)
        cls = x[:, :1] + self.self_attn(normed[:, :1], normed)
        cls = cls + self.linear2(F.gelu(self.linear1(self.norm2(cls))))
        return cls[:, 0]


class PatchEmbed2D(nn.Module):
    """Kept only because the checkpoint stores ``patch_embed.proj``; it is never run."""

    def __init__(self, config: SynchformerConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.embed_dim, config.patch_size, stride=config.patch_size)


class PatchEmbed3D(nn.Module):
    """Tubelet embedding: every pair of frames, cut in 16 x 16 patches -> one token per patch."""

    def __init__(self, config: SynchformerConfig):
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(3, config.embed_dim, kernel, stride=kernel)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) frames, T a multiple of 2 -> (B, T/2, h*w, D) tubelet tokens.

        The (2, 16, 16) Conv3d with equal stride, run as a Conv2d over frames stacked in pairs
        along channels: the frames stay time-major, so the video is never transposed to NCDHW.
        """
        batch, length, channels, height, width = frames.shape
        dim, _, pair, patch_h, patch_w = self.proj.weight.shape
        weight = self.proj.weight.transpose(1, 2).reshape(dim, pair * channels, patch_h, patch_w)
        pairs = frames.reshape(batch * (length // pair), pair * channels, height, width)
        tokens = F.conv2d(pairs, weight, self.proj.bias, stride=(patch_h, patch_w))
        return tokens.flatten(2).transpose(1, 2).reshape(batch, length // pair, -1, dim)


class MotionFormer(nn.Module):
    """Per-segment feature extractor: (N, 8*h*w, D) tubelet tokens of 16-frame segments -> (N, 8, D)."""

    def __init__(self, config: SynchformerConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.patches_per_frame + 1, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, config.temporal_positions, dim))
        self.patch_embed = PatchEmbed2D(config)
        self.patch_embed_3d = PatchEmbed3D(config)
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.spatial_attn_agg = SpatialAggregator(config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        frames, patches = self.config.temporal_positions, self.config.patches_per_frame
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        # separate embeddings: spatial pos_embed[1 + p] + temporal temp_embed[f], summed first
        spatial = self.pos_embed[:, 1:].repeat(1, frames, 1)
        patch_pos = spatial + self.temp_embed.repeat_interleave(patches, dim=1)
        tokens = tokens + torch.cat((self.pos_embed[:, :1], patch_pos), dim=1)
        for block in self.blocks:
            tokens = block(tokens, frames)
        tokens = self.norm(tokens[:, 1:])
        per_frame = tokens.reshape(-1, patches, tokens.shape[-1])  # (N*8, 196, D)
        return self.spatial_attn_agg(per_frame).view(-1, frames, tokens.shape[-1])


class Synchformer(nn.Module):
    """Wraps the MotionFormer under ``vfeat_extractor`` so keys match the official file."""

    def __init__(self, config: SynchformerConfig = SYNCHFORMER_FULL):
        super().__init__()
        self.config = config
        self.vfeat_extractor = MotionFormer(config)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, 224, 224) frames in [-1, 1], T >= 16 -> (B, S*8, D) sync features.

        The video is cut in S = (T - 16) // 8 + 1 segments of 16 frames every 8 (trailing frames
        that fill no segment are dropped). Segment starts are even, so every segment's tubelets
        are tubelets of the whole video: they are embedded once and windowed, not once per
        segment (each frame lies in two segments).
        """
        config = self.config
        size = config.image_size
        if tuple(frames.shape[2:]) != (3, size, size):
            raise InputError(f"Synchformer frames must be (3, {size}, {size}), got {tuple(frames.shape[2:])}")
        segments = self.segment_count(frames.shape[1])
        used = config.segment_frames + SEGMENT_STRIDE * (segments - 1)
        tubelets = self.vfeat_extractor.patch_embed_3d(frames[:, :used])  # (B, used/2, P, D)
        windows = tubelets.unfold(1, config.temporal_positions, SEGMENT_STRIDE // config.temporal_patch_size)
        batch, _, patches, dim, positions = windows.shape  # (B, S, P, D, 8)
        tokens = windows.permute(0, 1, 4, 2, 3).reshape(batch * segments, positions * patches, dim)
        return self.vfeat_extractor(tokens).reshape(batch, segments * positions, dim)

    def segment_count(self, frames: int) -> int:
        """Segments of 16 frames every 8 in ``frames`` frames."""
        length = self.config.segment_frames
        if frames < length:
            raise InputError(f"the Synchformer needs at least {length} frames, got {frames}")
        return (frames - length) // SEGMENT_STRIDE + 1

    @torch.inference_mode()
    def encode_video_with_sync(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """(B, T, 3, 224, 224) frames in [-1, 1] -> (B, S*8, D) sync features.

        ``batch_size`` bounds how many segments run at once (all of them when ``None``); only the
        frames of the running segments are moved to the model's device and dtype.
        """
        segments = self.segment_count(x.shape[1])
        per_run = batch_size or segments
        weight = self.vfeat_extractor.cls_token
        features = []
        for first in range(0, segments, per_run):
            count = min(per_run, segments - first)
            span = x[:, first * SEGMENT_STRIDE : (first + count - 1) * SEGMENT_STRIDE + self.config.segment_frames]
            features.append(self(span.to(weight.device, weight.dtype)))
        return torch.cat(features, dim=1)

    def load_checkpoint(self, state: Mapping[str, torch.Tensor]) -> None:
        """Strict load after dropping the non-video keys the official file also holds."""
        video_state = {k: v for k, v in state.items() if k.startswith(STATE_PREFIX)}
        load_strict(self, video_state, "Synchformer checkpoint")


def frames_to_sync_input(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float32 in [-1, 1], as MMAudio's ToDtype(scale) + Normalize(0.5, 0.5)."""
    return (frames_u8.to(torch.float32) / 255 - 0.5) / 0.5


def checkpoint_shapes(config: SynchformerConfig = SYNCHFORMER_FULL) -> dict[str, tuple[int, ...]]:
    """{key: shape} the checkpoint must provide, built on the meta device (no allocation)."""
    with torch.device("meta"):
        return state_shapes(Synchformer(config))
