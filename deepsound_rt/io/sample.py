"""The bundled sample clip, and synthetic clips whose frames say which source frame they are.

Every synthetic frame carries its own index as a stack of black/white bands in the top of the
picture (most significant bit first), which survives lossy coding, resizing and a horizontal
centre crop, so tests can tell exactly which source frame a resampled frame came from. Below
the bands, coloured shapes move so that consecutive frames differ the way real video does.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch

SAMPLE_CLIP = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"

INDEX_BITS = 10
"""Enough for 1024 distinct frames (40 s at 25 fps)."""
_INDEX_BAND_SHARE = 0.4
"""Part of the picture height, from the top, that holds the index bands."""
_BLACK, _WHITE, _BACKGROUND = 16, 235, 60
VFR_TIMESCALE = 1000
"""Ticks per second of variable-frame-rate test clips."""


def sample_clip_path() -> Path:
    """The 8.5 s, 320×240, 25 fps H.264 sample clip (no audio) that ships inside the package.

    It is a committed file rather than generated on first use so that everyone decodes the very
    same bytes: x264 output varies between builds, and reference numbers computed on the sample
    must match everywhere. ``make_test_video`` with the arguments in ``write_sample_clip``
    re-creates it.
    """
    return SAMPLE_CLIP


def write_sample_clip(path: str | Path = SAMPLE_CLIP) -> Path:
    """(Re)generate the sample clip; kept so the committed asset can be rebuilt and reviewed."""
    return make_test_video(path, seconds=8.5, fps=25, size=(320, 240))


def make_test_video(
    path: str | Path,
    seconds: float,
    fps: int | Fraction,
    size: tuple[int, int],
    codec: str = "libx264",
    with_audio: bool = False,
    frame_times: Sequence[float] | None = None,
) -> Path:
    """Write a clip of ``round(seconds * fps)`` synthetic frames of ``size`` = (width, height).

    ``with_audio`` adds a quiet 440 Hz AAC track, so callers can check that audio in the source
    is detected or dropped. ``frame_times`` (seconds, increasing) makes a variable-frame-rate clip
    with one frame at each time instead (``fps`` then only sets the encoder's nominal rate).
    """
    path = Path(path)
    width, height = size
    frame_count = round(seconds * fps) if frame_times is None else len(frame_times)
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=Fraction(fps))
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p"
        if frame_times is not None:
            video.codec_context.time_base = Fraction(1, VFR_TIMESCALE)
        if codec in ("libx264", "h264"):
            video.options = {"crf": "20", "preset": "medium"}
        tone = _add_tone(container, frame_count / fps) if with_audio else None
        container.start_encoding()  # so that even zero frames give a valid (empty) file
        for index in range(frame_count):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(index, width, height), format="rgb24")
            frame.pts = index if frame_times is None else round(frame_times[index] * VFR_TIMESCALE)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if tone is not None:
            stream, frame = tone
            container.mux(stream.encode(frame))
            container.mux(stream.encode())
    return path


def synthetic_frame(index: int, width: int, height: int) -> np.ndarray:
    """RGB picture (height, width, 3) for frame ``index``: index bands on top, moving shapes below."""
    picture = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)
    band_bottom = _band_edges(height)
    for bit in range(INDEX_BITS):
        is_set = (index >> (INDEX_BITS - 1 - bit)) & 1
        picture[band_bottom[bit] : band_bottom[bit + 1]] = _WHITE if is_set else _BLACK
    top = band_bottom[-1]
    free_height = height - top
    square = max(free_height // 3, 2)
    square_x = (index * 4) % max(width - square, 1)
    picture[top + 2 : top + 2 + square, square_x : square_x + square] = (220, 40, 40)
    disc_y = top + free_height // 2 + int(free_height / 4 * np.sin(index / 6))
    rows, cols = np.ogrid[:height, :width]
    disc = (rows - disc_y) ** 2 + (cols - (width - index * 3) % width) ** 2 <= (square // 2) ** 2
    picture[disc] = (40, 200, 80)
    return picture


def read_frame_index(image: torch.Tensor) -> int:
    """The source frame index drawn into ``image`` (3, H, W) uint8, after any resize or
    horizontal crop; reads the middle of each band to stay clear of blurred band edges."""
    height, width = image.shape[-2:]
    gray = image.float().mean(dim=0)
    band_edges = _band_edges(height)
    index = 0
    for bit in range(INDEX_BITS):
        middle = (band_edges[bit] + band_edges[bit + 1]) // 2
        level = gray[middle, width // 4 : 3 * width // 4].mean().item()
        index = (index << 1) | int(level > (_BLACK + _WHITE) / 2)
    return index


def _band_edges(height: int) -> list[int]:
    """Row where each index band starts, plus the end of the last one."""
    return [round(height * _INDEX_BAND_SHARE * bit / INDEX_BITS) for bit in range(INDEX_BITS + 1)]


def _add_tone(
    container: av.container.OutputContainer, seconds: float
) -> tuple[av.audio.stream.AudioStream, av.AudioFrame]:
    """Add a mono AAC stream (before muxing starts, as FFmpeg requires) and the frame for it."""
    sample_rate = 16000
    audio = container.add_stream("aac", rate=sample_rate, layout="mono")
    times = np.arange(round(seconds * sample_rate)) / sample_rate
    tone = (0.1 * np.sin(2 * np.pi * 440 * times)).astype(np.float32)[None]
    frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    return audio, frame
