"""VideoLLaMA2's STC connector, v35 flavour: per-frame RegNet stage, 2×2×2 strided 3D conv, second
RegNet stage, MLP readout.

It turns SigLIP patch tokens (B, T, h·w, C) into (B, T/2 · h/2 · w/2, hidden) LLM tokens, e.g.
16 × 27×27 → 8 × 13×13 = 1352. timm's ``RegStage`` is what upstream instantiates, so it is used
here too: its key names (``s1.b1.conv1.conv.weight`` ...) are the checkpoint's and its norm-act
LayerNorm has the eps (1e-5) that the checkpoint was trained with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from timm.layers import LayerNorm2d
from timm.models.regnet import RegStage
from torch import nn

STC_V35 = "stc_connector_v35"


@dataclass(frozen=True)
class STCConfig:
    """Widths and structure; upstream hard-codes downsample/depth/mlp_depth as constructor defaults."""

    vision_width: int
    llm_width: int
    downsample: tuple[int, int, int] = (2, 2, 2)
    depth: int = 4
    mlp_depth: int = 2

    @classmethod
    def from_dict(cls, config: Mapping) -> "STCConfig":
        """From a golden's ``constructor_config`` or a checkpoint config.json (``mm_hidden_size``,
        ``hidden_size``); only the v35 flavour (padding-free 3D conv) is supported."""
        projector_type = config.get("mm_projector_type", STC_V35)
        if projector_type != STC_V35:
            raise ValueError(f"only the {STC_V35} projector is supported, got {projector_type!r}")
        return cls(
            vision_width=int(config["mm_hidden_size"]),
            llm_width=int(config["hidden_size"]),
            downsample=tuple(int(d) for d in config.get("downsample", (2, 2, 2))),
            depth=int(config.get("depth", 4)),
            mlp_depth=int(config.get("mlp_depth", 2)),
        )


def _reg_stage(depth: int, in_channels: int, out_channels: int) -> RegStage:
    return RegStage(
        depth=depth,
        in_chs=in_channels,
        out_chs=out_channels,
        stride=1,
        dilation=1,
        act_layer=nn.SiLU,
        norm_layer=LayerNorm2d,
    )


def _mlp(depth: int, in_width: int, out_width: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_width, out_width)]
    for _ in range(1, depth):
        layers += [nn.GELU(), nn.Linear(out_width, out_width)]
    return nn.Sequential(*layers)


class STCConnectorV35(nn.Module):
    """(B, T, N, C) frame tokens with N = h·w square -> (B, T'·h'·w', hidden) LLM tokens."""

    def __init__(self, config: STCConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.llm_width
        self.s1 = _reg_stage(config.depth, config.vision_width, hidden)
        self.sampler = nn.Sequential(
            nn.Conv3d(hidden, hidden, kernel_size=config.downsample, stride=config.downsample, padding=0, bias=True),
            nn.SiLU(),
        )
        self.s2 = _reg_stage(config.depth, hidden, hidden)
        self.readout = _mlp(config.mlp_depth, hidden, hidden)

    @staticmethod
    def num_tokens(frames: int, grid: int, downsample: tuple[int, int, int] = (2, 2, 2)) -> int:
        """Tokens out for ``frames`` frames of ``grid``×``grid`` patches (unpadded strided conv)."""
        return (frames // downsample[0]) * (grid // downsample[1]) * (grid // downsample[2])

    def forward(self, frame_tokens: torch.Tensor, intermediates: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Aggregate; when ``intermediates`` is given it receives ``s1_out``, ``sampler_out`` and
        ``s2_out`` in the golden's layouts."""
        record = intermediates if intermediates is not None else {}
        batch, frames, tokens, channels = frame_tokens.shape
        grid = int(tokens**0.5)
        if grid * grid != tokens:
            raise ValueError(f"STC expects a square token grid per frame, got {tokens} tokens")
        # (B, T, h·w, C) -> (B·T, C, h, w): each frame is a 2D map, tokens row-major.
        x = frame_tokens.reshape(batch * frames, grid, grid, channels).permute(0, 3, 1, 2)
        x = self.s1(x)
        record["s1_out"] = x
        x = x.reshape(batch, frames, *x.shape[1:]).transpose(1, 2)  # (B, C, T, h, w)
        x = self.sampler(x)
        record["sampler_out"] = x
        new_frames = x.shape[2]
        x = x.transpose(1, 2).flatten(0, 1)  # (B·T', C, h', w')
        x = self.s2(x)
        record["s2_out"] = x
        # (B·T', C, h', w') -> (B, T'·h'·w', C): time-major, then row, then column.
        x = x.reshape(batch, new_frames, *x.shape[1:]).permute(0, 1, 3, 4, 2).flatten(1, 3)
        return self.readout(x)
