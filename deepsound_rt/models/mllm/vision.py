"""VideoLLaMA2's video input: 16 frames sampled from the whole video, SigLIP preprocessing, and the
SigLIP so400m/14@384 tower's second-to-last hidden layer (all 27×27 = 729 patch tokens a frame).

Frame sampling restates ``mm_utils.process_video`` (decord, ``frame_sample(mode="uniform")``):
the video's frames are indexed 0..n-1 in presentation order, and frame k of 16 is the middle of the
k-th of 16 equal segments of [0, n-1], rounded with numpy's half-to-even ``round`` after +1e-6.
We decode with PyAV and take n as the number of video packets (what decord's frame index counts);
should the decoder yield fewer frames than packets, missing indices repeat the last decoded frame.

Preprocessing restates the (PIL) ``SiglipImageProcessor`` that VideoLLaMA2 uses with no padding to
square: PIL bicubic resize to 384×384, ×1/255 (in float64, stored float32), then (x - 0.5) / 0.5.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from transformers import SiglipVisionConfig, SiglipVisionModel

from ...errors import InputError
from ...io.video import ffmpeg_reason, first_video_stream, open_media

NUM_FRAMES = 16
IMAGE_SIZE = 384
SELECT_LAYER = -2
"""``mm_vision_select_layer``: hidden_states[-2], the output of the last-but-one encoder layer."""
ATTENTION = "sdpa"
"""SigLIP's attention through ``F.scaled_dot_product_attention`` (fused kernels), whatever the
installed transformers picks by default (older versions build the "eager" softmax)."""
CHECKPOINT_PREFIX = "vision_model."
"""SigLIP checkpoints (full SiglipModel or SiglipVisionModel) name the tower's keys this way."""
_RESCALE = 1 / 255
_MEAN = 0.5
_STD = 0.5


def siglip_so400m_config() -> SiglipVisionConfig:
    """google/siglip-so400m-patch14-384's vision config (27×27 patches of width 1152)."""
    return SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        num_channels=3,
        image_size=IMAGE_SIZE,
        patch_size=14,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
        attn_implementation=ATTENTION,
    )


def siglip_tiny_config() -> SiglipVisionConfig:
    """Same 384 px input and 14 px patches (so the 16×27×27 -> 1352-token geometry is real), tiny widths."""
    return SiglipVisionConfig(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_channels=3,
        image_size=IMAGE_SIZE,
        patch_size=14,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        attn_implementation=ATTENTION,
    )


def patch_features(tower: SiglipVisionModel, pixel_values: torch.Tensor, select_layer: int = SELECT_LAYER) -> torch.Tensor:
    """(N, 3, H, W) -> (N, patches, width): ``hidden_states[select_layer]`` of the tower.

    Only the layers that feed the selected hidden state run; the last layer, the post-LayerNorm and
    the pooling head (all in the checkpoint) are skipped, since VideoLLaMA2 never uses them.
    """
    layers = tower.encoder.layers
    num_run = len(layers) + 1 + select_layer if select_layer < 0 else select_layer
    hidden = tower.embeddings(pixel_values.to(tower.embeddings.patch_embedding.weight.dtype))
    for layer in layers[:num_run]:
        hidden = layer(hidden, None)
    return hidden


def uniform_frame_indices(num_video_frames: int, num_frames: int = NUM_FRAMES) -> list[int]:
    """``frame_sample(n, mode="uniform")``: middles of ``num_frames`` equal segments of [0, n-1]."""
    segment = float(num_video_frames - 1) / num_frames
    middles = [(segment * i + segment * (i + 1)) / 2 for i in range(num_frames)]
    return np.round(np.array(middles) + 1e-6).astype(int).tolist()


def _within(time: Fraction, until_s: float | None) -> bool:
    return time >= 0 and (until_s is None or time <= until_s)


def read_sampled_frames(path: str | Path, num_frames: int = NUM_FRAMES, until_s: float | None = None) -> np.ndarray:
    """(num_frames, H, W, 3) uint8 RGB frames sampled uniformly over the video.

    ``until_s`` restricts the video to frames shown at or before that time, as the step-1 video
    (MMAudio's re-encode of the first ``duration`` seconds) that DeepSound's step 2 reads holds.
    """
    path = Path(path)
    with open_media(path) as container:
        stream = first_video_stream(container, path)
        count = sum(
            1
            for packet in container.demux(stream)
            if packet.pts is not None and packet.size and _within(packet.pts * packet.time_base, until_s)
        )
    if count == 0:
        raise InputError(f"{path}: no video frames" + (f" in the first {until_s} s" if until_s else ""))
    wanted = uniform_frame_indices(count, num_frames)
    picked: dict[int, np.ndarray] = {}
    with open_media(path) as container:
        stream = first_video_stream(container, path)
        stream.thread_type = "AUTO"
        index = -1
        try:
            for frame in container.decode(stream):
                if frame.pts is None or not _within(frame.pts * frame.time_base, until_s):
                    continue
                index += 1
                if index in wanted:
                    picked[index] = frame.to_ndarray(format="rgb24")
                if index >= wanted[-1]:
                    break
        except av.FFmpegError as error:
            raise InputError(f"{path}: video is corrupt ({ffmpeg_reason(error)})") from error
    if not picked:
        raise InputError(f"{path}: no decodable video frames")
    last = picked[max(picked)]  # the decoder ran out before a wanted index: hold the last frame
    return np.stack([picked.get(i, last) for i in wanted])


def preprocess_frames(frames: np.ndarray, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float32 SigLIP pixel values in [-1, 1]."""
    resized = np.stack(
        [np.asarray(Image.fromarray(frame).resize((image_size, image_size), Image.Resampling.BICUBIC)) for frame in frames]
    )
    scaled = (torch.from_numpy(resized).double() * _RESCALE).float()
    return ((scaled - _MEAN) / _STD).permute(0, 3, 1, 2).contiguous()


def video_pixels(path: str | Path, num_frames: int = NUM_FRAMES, until_s: float | None = None) -> torch.Tensor:
    """The (T, 3, 384, 384) tensor ``process_video`` gives for a video file."""
    return preprocess_frames(read_sampled_frames(path, num_frames, until_s))


def checkpoint_shapes(config: SiglipVisionConfig | None = None) -> dict[str, tuple[int, ...]]:
    """{checkpoint key: shape} of the SigLIP vision tower (meta device)."""
    with torch.device("meta"):
        tower = SiglipVisionModel(config or siglip_so400m_config())
    return {CHECKPOINT_PREFIX + k: tuple(v.shape) for k, v in tower.state_dict().items()}
