"""Step-1 conditioning features: CLIP image (8 fps), Synchformer (25 fps) and CLIP text, for a clip
at once or for a whole video as its frames decode."""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..backends.base import Graph
from ..io.video import FrameChunk
from ..models.mmaudio.network import SYNC_FEATURES_PER_SEGMENT, SYNC_FRAMES_PER_SEGMENT, SYNC_SEGMENT_STEP

# CLIP frames per graph run. Frames are independent, so the result does not depend on it; it bounds
# activation memory, which ONNX Runtime on a CPU holds for a whole run (about 0.18 GB per 384-px
# ViT-H frame: 64 frames at once need 12 GB), and 16 frames still fill a GPU.
CLIP_FRAMES_PER_RUN = 16
SYNC_SEGMENTS_PER_RUN = 24
"""Synchformer segments per graph run while a video streams: one 8 s window's, so a clip no longer
than a window runs in one call, exactly as it always did, and memory stays that of one window."""


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


@dataclass
class StreamEncoder:
    """Encodes a :class:`~deepsound_rt.io.video.FrameStream` as its chunks arrive, each frame once:
    CLIP chunk by chunk, the Synchformer ``SYNC_SEGMENTS_PER_RUN`` segments at a time from segment
    0, keeping only the 25 fps frames that later segments still need. ``measure(stage, graph)``
    times each graph run (a context manager)."""

    clip_graph: Graph
    sync_graph: Graph
    measure: Callable[[str, Graph], AbstractContextManager]
    clip: list[torch.Tensor] = field(default_factory=list)
    sync: list[torch.Tensor] = field(default_factory=list)
    frames: list[torch.Tensor] = field(default_factory=list)
    """25 fps frames from ``SYNC_SEGMENT_STEP * next_segment`` on."""
    next_segment: int = 0

    def add(self, chunk: FrameChunk) -> None:
        if chunk.kind == "clip":
            with self.measure("clip", self.clip_graph):
                self.clip.append(clip_image_features(self.clip_graph, chunk.frames))
            return
        self.frames.append(chunk.frames)
        run_frames = SYNC_FRAMES_PER_SEGMENT + SYNC_SEGMENT_STEP * (SYNC_SEGMENTS_PER_RUN - 1)
        while sum(len(frames) for frames in self.frames) >= run_frames:
            self._run(run_frames)

    def _run(self, count: int) -> None:
        """Encode the segments in the first ``count`` buffered frames; keep the frames after them."""
        frames = torch.cat(self.frames)
        with self.measure("synchformer", self.sync_graph):
            features = sync_features(self.sync_graph, frames[:count])
        self.sync.append(features)
        segments = features.shape[1] // SYNC_FEATURES_PER_SEGMENT
        self.next_segment += segments
        self.frames = [frames[SYNC_SEGMENT_STEP * segments :]]

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, slots, D) CLIP and (1, segments * 8, D) sync features of every frame added."""
        left = sum(len(frames) for frames in self.frames)
        if left >= SYNC_FRAMES_PER_SEGMENT:
            self._run(left)
        return torch.cat(self.clip, dim=1), torch.cat(self.sync, dim=1)
