"""VideoLLaMA2's audio projector (``mm_projector_a``, type mlp2x_gelu): BEATs features -> LLM width.

A Sequential of Linear, exact GELU, Linear, so its keys are ``0.*`` and ``2.*`` (``model.mm_projector_a.``
in the full checkpoint, stripped here).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..weights import load_strict, state_shapes

BEATS_WIDTH = 768
QWEN2_7B_WIDTH = 3584


class AudioProjector(nn.Sequential):
    """(B, N, in_features) -> (B, N, out_features) through Linear -> GELU(erf) -> Linear."""

    def __init__(self, in_features: int = BEATS_WIDTH, out_features: int = QWEN2_7B_WIDTH) -> None:
        super().__init__(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))

    def load_checkpoint(self, state: Mapping[str, torch.Tensor]) -> None:
        """Strict load of the bare projector keys; names what does not match."""
        load_strict(self, state, "audio projector checkpoint")


def checkpoint_shapes(
    in_features: int = BEATS_WIDTH, out_features: int = QWEN2_7B_WIDTH
) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the bare projector (meta device)."""
    with torch.device("meta"):
        return state_shapes(AudioProjector(in_features, out_features))
