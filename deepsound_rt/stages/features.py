"""Step-1 conditioning features: CLIP image (8 fps), Synchformer (25 fps) and CLIP text."""
from __future__ import annotations

import torch

from ..backends.base import Graph

# CLIP frames per graph run. Frames are independent, so the result does not depend on it; it bounds
# activation memory, which ONNX Runtime on a CPU holds for a whole run (about 0.18 GB per 384-px
# ViT-H frame: 64 frames at once need 12 GB), and 16 frames still fill a GPU.
CLIP_FRAMES_PER_RUN = 16


def clip_image_features(graph: Graph, clip_frames_u8: torch.Tensor) -> torch.Tensor:
    """(T, 3, 384, 384) uint8 -> (1, T, D) unit-norm CLIP image embeddings."""
    return torch.cat([graph.run({"frames": chunk.unsqueeze(0).float() / 255.0})["features"]
                      for chunk in clip_frames_u8.split(CLIP_FRAMES_PER_RUN)], dim=1)


def sync_features(graph: Graph, sync_frames_u8: torch.Tensor) -> torch.Tensor:
    """(T, 3, 224, 224) uint8 -> (1, S*8, D) Synchformer features (frames scaled to [-1, 1])."""
    frames = (sync_frames_u8.unsqueeze(0).float() / 255.0 - 0.5) / 0.5
    return graph.run({"frames": frames})["features"]


def text_features(graph: Graph, tokens: torch.Tensor) -> torch.Tensor:
    """(B, 77) token ids -> (B, 77, D) normalised last hidden states of the CLIP text tower."""
    return graph.run({"tokens": tokens})["features"]
