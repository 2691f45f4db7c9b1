"""Golden runner and manifest builder for the feature extractors (Synchformer).

CLIP has no golden: MMAudio uses the released DFN5B weights as they are, and the tests check our
wrapper against open_clip's own modules instead.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from ..models.synchformer import (
    SYNCHFORMER_FULL,
    Synchformer,
    SynchformerConfig,
    checkpoint_shapes,
    frames_to_sync_input,
)
from .golden import Golden

# golden JSON VIT keys -> SynchformerConfig fields; the rest of the geometry is fixed upstream
_VIT_FIELDS = {"EMBED_DIM": "embed_dim", "NUM_HEADS": "num_heads", "DEPTH": "depth", "MLP_RATIO": "mlp_ratio"}


def synchformer_config_from_golden(meta: dict) -> SynchformerConfig:
    """The golden's ``VIT_overrides*`` (else ``VIT_official``) applied to the official config."""
    constructor = meta.get("constructor", {})
    overrides = next((v for k, v in constructor.items() if k.startswith("VIT_overrides")), None)
    vit = overrides if overrides is not None else constructor.get("VIT_official", {})
    values = {field: vit[key] for key, field in _VIT_FIELDS.items() if key in vit}
    return replace(SYNCHFORMER_FULL, **values)


def _capture_input(module: nn.Module, sink: list[torch.Tensor]) -> torch.utils.hooks.RemovableHandle:
    def hook(_module: nn.Module, args: tuple) -> None:
        sink.append(args[0].detach().clone())

    return module.register_forward_pre_hook(hook)


def run_synchformer_golden(golden: Golden) -> dict[str, torch.Tensor]:
    """uint8 video -> sync features through ``encode_video_with_sync``, plus the block-0 input
    and the last block's patch tokens (the input of the final norm)."""
    model = Synchformer(synchformer_config_from_golden(golden.meta)).eval()
    model.load_checkpoint(golden.state)
    extractor = model.vfeat_extractor
    captured: dict[str, list[torch.Tensor]] = {"mid/block0_in": [], "mid/tokens_before_norm": []}
    handles = [
        _capture_input(extractor.blocks[0], captured["mid/block0_in"]),
        _capture_input(extractor.norm, captured["mid/tokens_before_norm"]),
    ]
    try:
        features = model.encode_video_with_sync(frames_to_sync_input(golden.inputs["video_u8"]))
    finally:
        for handle in handles:
            handle.remove()
    compared = golden.meta.get("suggested_atol") or {}
    results = {"out/sync_features": features}
    results.update({name: torch.cat(chunks) for name, chunks in captured.items() if name in compared})
    return results


RUNNERS: dict[str, Callable[[Golden], dict[str, torch.Tensor]]] = {"synchformer": run_synchformer_golden}
MANIFESTS: dict[str, Callable[[], dict[str, tuple[int, ...]]]] = {
    "synchformer_vfeat_extractor": checkpoint_shapes,
}
