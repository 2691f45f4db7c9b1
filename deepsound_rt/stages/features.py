"""Step-1 conditioning features: CLIP image (8 fps), Synchformer (25 fps) and CLIP text."""
from __future__ import annotations

from pathlib import Path

import torch

from ..backends.base import Graph
from ..io.video import VideoClip, VideoStream
from ..timing import StageTiming, Timings

# CLIP frames per graph run. Frames are independent, so the result does not depend on it; it bounds
# activation memory, which ONNX Runtime on a CPU holds for a whole run (about 0.18 GB per 384-px
# ViT-H frame: 64 frames at once need 12 GB), and 16 frames still fill a GPU.
CLIP_FRAMES_PER_RUN = 16


def clip_image_features(graph: Graph, clip_frames_u8: torch.Tensor) -> torch.Tensor:
    """(T, 3, 384, 384) uint8 -> (1, T, D) unit-norm CLIP image embeddings."""
    return torch.cat([graph.run({"frames": chunk.unsqueeze(0).float() / 255.0})["features"]
                      for chunk in clip_frames_u8.split(CLIP_FRAMES_PER_RUN)], dim=1)


def clip_image_features_while_decoding(graph: Graph, video: Path, duration_s: float | None, timings: Timings,
                                       device: torch.device) -> tuple[VideoClip, torch.Tensor]:
    """Decode ``video`` on worker threads while CLIP encodes each run's worth of frames as soon as
    they are decoded (``EngineConfig.overlap``): (the clip, its (1, T, D) CLIP features).

    The runs are those :func:`clip_image_features` makes of the whole clip, so the features equal
    the serial order's; a run started before decoding ended that reaches past the clip's final
    length is encoded again with the frames the clip keeps. ``timings`` gets "video decode"
    (decoding's own time) and "clip" (the encoder's time, all runs).
    """
    stream = VideoStream(video, duration_s)
    encoded: list[torch.Tensor] = []
    runs = Timings()
    while (frames := stream.clip_frames(len(encoded) * CLIP_FRAMES_PER_RUN, CLIP_FRAMES_PER_RUN)) is not None:
        with runs.measure("clip", device, graph.backend):
            encoded.append(clip_image_features(graph, frames))
    clip = stream.result()
    encoded = encoded[: len(clip.clip_frames) // CLIP_FRAMES_PER_RUN]  # the runs wholly inside the clip
    rest = clip.clip_frames[len(encoded) * CLIP_FRAMES_PER_RUN :]
    if len(rest):
        with runs.measure("clip", device, graph.backend):
            encoded.append(clip_image_features(graph, rest))
    timings.stages.append(StageTiming("video decode", stream.seconds))
    timings.stages.append(StageTiming("clip", runs.total, graph.backend))
    return clip, torch.cat(encoded, dim=1)


def sync_features(graph: Graph, sync_frames_u8: torch.Tensor) -> torch.Tensor:
    """(T, 3, 224, 224) uint8 -> (1, S*8, D) Synchformer features (frames scaled to [-1, 1])."""
    frames = (sync_frames_u8.unsqueeze(0).float() / 255.0 - 0.5) / 0.5
    return graph.run({"frames": frames})["features"]


def text_features(graph: Graph, tokens: torch.Tensor) -> torch.Tensor:
    """(B, 77) token ids -> (B, 77, D) normalised last hidden states of the CLIP text tower."""
    return graph.run({"tokens": tokens})["features"]
