"""Reading the input video into the two frame streams MMAudio conditions on.

Reproduces MMAudio's ``load_video``/``read_frames`` numerically: frames are resampled by their
presentation time (``frame.time``: seconds from 0, not from the stream's start time) onto
8 fps (CLIP) and 25 fps (Synchformer) time grids, then resized with torchvision's bicubic,
antialiased resize. Unlike upstream, each kept frame is converted once, on worker threads while
the next frames decode, and only a few full-resolution frames wait at any time.

One deliberate difference: upstream accumulates grid times in floating point (0 + 1/fps + ...),
so a 25 fps source occasionally skips a frame and repeats the next one, and an exactly 8.00 s,
25 fps video yields only 199 sync frames (7.96 s). Here grid slot k sits at exactly k/fps and
frame times are exact fractions (pts x time base), so that video gives the 8.00 s asked for.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from time import perf_counter

import av
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from deepsound_rt.errors import InputError

log = logging.getLogger(__name__)

CLIP_FPS = 8
SYNC_FPS = 25
CLIP_SIZE = 384
SYNC_SIZE = 224
SYNC_SEGMENT_FRAMES = 16
MIN_DURATION_S = SYNC_SEGMENT_FRAMES / SYNC_FPS
"""Synchformer needs at least one 16-frame segment at 25 fps: 0.64 s."""
DEFAULT_DURATION_S = 8.0
TRUNCATION_SLACK_S = Fraction(1, 10)
"""How much less video than its container claims a file may decode to before we warn."""


@dataclass
class VideoClip:
    """The part of the input video that audio is generated for.

    ``clip_frames`` (T, 3, 384, 384) and ``sync_frames`` (T, 3, 224, 224) are uint8, exactly what
    torchvision's resize (and centre crop) give before MMAudio scales them to float.
    """

    duration_s: float
    fps: Fraction | None
    clip_frames: torch.Tensor
    sync_frames: torch.Tensor
    width: int
    height: int
    has_audio: bool


@dataclass
class VideoProbe:
    """What the container says about a video, without decoding it."""

    duration_s: float | None
    fps: Fraction | None
    width: int
    height: int
    has_audio: bool


def clip_transform(image: torch.Tensor) -> torch.Tensor:
    """MMAudio's CLIP input geometry: squash to 384×384, bicubic (aspect ratio is not kept)."""
    return TF.resize(image, [CLIP_SIZE, CLIP_SIZE], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)


def sync_transform(image: torch.Tensor) -> torch.Tensor:
    """MMAudio's Synchformer input geometry: short side to 224, bicubic, then a 224×224 centre crop."""
    resized = TF.resize(image, [SYNC_SIZE], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(resized, [SYNC_SIZE, SYNC_SIZE])


CONVERT_WORKERS = min(4, os.cpu_count() or 1)
"""Threads that convert and resize frames while the next ones decode (PyAV's colour conversion and
torch's resize release the GIL)."""


def _convert(frame: av.VideoFrame, transforms: list[Callable[[torch.Tensor], torch.Tensor]]) -> list[torch.Tensor]:
    image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
    return [transform(image) for transform in transforms]


class _ConvertPool:
    """Converts frames on worker threads; at most two per worker wait, so that a long
    high-resolution video never queues many full-size frames."""

    def __init__(self, workers: int = CONVERT_WORKERS):
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="deepsound-frames")
        self._pending: deque[Future] = deque()
        self._limit = 2 * workers

    def submit(self, frame: av.VideoFrame, transforms: list[Callable[[torch.Tensor], torch.Tensor]]) -> Future:
        while len(self._pending) >= self._limit:
            self._pending.popleft().result()
        future = self._executor.submit(_convert, frame, transforms)
        self._pending.append(future)
        return future

    def __enter__(self) -> "_ConvertPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class _TimeGridSampler:
    """Resamples decoded frames onto a ``fps`` time grid the MMAudio way: each grid slot takes
    the first frame whose time is at or after it. A slower source thus has each frame repeated
    over the slots since the previous frame (shown up to one source interval early, not held
    after), and a faster one has frames skipped. Slots after the last frame, up to the end of its
    display, hold that frame (:meth:`hold`)."""

    fps: int
    transform: Callable[[torch.Tensor], torch.Tensor]
    frames: list[tuple[Future, int]] = field(default_factory=list)
    """Per grid slot: the conversion job of its frame, and this sampler's place in its results."""
    source_time: Fraction | None = None
    """Time of the source frame the last slot took."""

    @property
    def next_time(self) -> Fraction:
        return Fraction(len(self.frames), self.fps)

    def wants(self, time: Fraction, until: Fraction | float) -> bool:
        return self.next_time <= time and self.next_time < until

    def add(self, time: Fraction, converted: Future, index: int, until: Fraction | float) -> None:
        """Give the frame at ``time`` to every open slot at or before it, up to (not at) ``until``."""
        while self.wants(time, until):
            self.frames.append((converted, index))
        self.source_time = time

    def hold(self, converted: Future, index: int, until: Fraction | float) -> None:
        """Repeat a frame over the remaining slots before ``until``."""
        while self.next_time < until:
            self.frames.append((converted, index))

    def stacked(self, count: int) -> torch.Tensor:
        return torch.stack([converted.result()[index] for converted, index in self.frames[:count]])


def load_video(path: str | Path, duration_s: float | None = DEFAULT_DURATION_S) -> VideoClip:
    """Decode the first ``duration_s`` seconds (None: the whole video) into CLIP and sync frames.

    The duration shrinks to what the video holds, as in MMAudio, where a video ends when its last
    frame's display ends (its time plus its duration), whatever the frame rate: grid slots after
    the last frame hold it. Anything shorter than ``MIN_DURATION_S`` is refused, since the sync
    model cannot see a single segment. A file that decodes to less than its container claims
    (truncated) is used for what decodes, with a warning that says both lengths.
    """
    return _decode_clip(Path(path), duration_s, _TimeGridSampler(CLIP_FPS, clip_transform),
                        _TimeGridSampler(SYNC_FPS, sync_transform), lambda: None)


class VideoStream:
    """:func:`load_video` on a worker thread, handing over CLIP frames as they are decoded, so that
    a GPU can encode the first frames while the CPU decodes the rest."""

    def __init__(self, path: str | Path, duration_s: float | None = DEFAULT_DURATION_S):
        self._clip = _TimeGridSampler(CLIP_FPS, clip_transform)
        self._sync = _TimeGridSampler(SYNC_FPS, sync_transform)
        self._changed = threading.Condition()
        self._result: VideoClip | None = None
        self._error: BaseException | None = None
        self._done = False
        self.seconds = 0.0
        """How long decoding took, once it is done."""
        self._thread = threading.Thread(target=self._decode, args=(Path(path), duration_s), daemon=True,
                                        name="deepsound-video")
        self._thread.start()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _decode(self, path: Path, duration_s: float | None) -> None:
        started = perf_counter()
        try:
            self._result = _decode_clip(path, duration_s, self._clip, self._sync, self._notify)
        except BaseException as error:  # handed to the caller of result()
            self._error = error
        self.seconds = perf_counter() - started
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def clip_frames(self, start: int, count: int) -> torch.Tensor | None:
        """CLIP frames ``start`` to ``start + count - 1`` (uint8, as in :class:`VideoClip`) once they
        are decoded; None if decoding ended and the clip does not hold them all (or decoding failed:
        see :meth:`result`)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._clip.frames) >= start + count or self._done)
            beyond_clip = self._done and (self._result is None or start + count > len(self._result.clip_frames))
            if beyond_clip or len(self._clip.frames) < start + count:
                return None
            slots = self._clip.frames[start : start + count]
        try:
            return torch.stack([converted.result()[index] for converted, index in slots])
        except CancelledError:  # frames past the clip's end, dropped when decoding ended
            return None

    def result(self) -> VideoClip:
        """The whole clip, as :func:`load_video` returns it (its errors are raised here)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def _decode_clip(path: Path, duration_s: float | None, clip: _TimeGridSampler, sync: _TimeGridSampler,
                 added: Callable[[], None]) -> VideoClip:
    """The decoding loop of :func:`load_video`; ``added`` is called whenever the samplers grew."""
    if duration_s is not None and not duration_s > 0:
        raise InputError(f"{path}: requested duration must be positive, got {duration_s}")
    if duration_s is not None and duration_s < MIN_DURATION_S:
        raise InputError(f"{path}: requested duration {duration_s} s is below the minimum {MIN_DURATION_S} s")
    end: Fraction | float = math.inf if duration_s is None else Fraction(duration_s)
    samplers = (clip, sync)
    width = height = 0
    last: _LastFrame | None = None
    with open_media(path) as container, _ConvertPool() as pool:
        stream = first_video_stream(container, path)
        stream.thread_type = "AUTO"
        fps = stream.guessed_rate or stream.average_rate
        has_audio = bool(container.streams.audio)
        video_end: Fraction | float = math.inf  # until the last frame is known
        for frame in _decode(container, stream, path):
            if frame.pts is None or frame.time_base is None:
                raise InputError(f"{path}: video frames carry no timestamps; remux it into .mp4 first")
            time = frame.pts * frame.time_base  # exact, unlike the float frame.time
            if time < 0:
                continue
            width, height = frame.width, frame.height
            wanting = [sampler for sampler in samplers if sampler.wants(time, end)]
            if wanting:
                converted = pool.submit(frame, [sampler.transform for sampler in wanting])
                for index, sampler in enumerate(wanting):
                    sampler.add(time, converted, index, end)
                added()
            if time >= end:  # every slot before ``end`` is taken
                break
            last = _LastFrame(frame, time, last.time if last is not None else None)
        else:
            if last is not None:
                video_end = last.time + last.display_seconds(fps)
                _hold_last_frame(last, samplers, min(end, video_end), pool)
                added()
                _warn_if_truncated(path, container, stream, video_end, end)
        if not sync.frames:
            raise InputError(f"{path}: no decodable video frames")
        duration = min(end, video_end)
        clip_count, sync_count = math.floor(CLIP_FPS * duration), math.floor(SYNC_FPS * duration)
        if sync_count < SYNC_SEGMENT_FRAMES:
            raise InputError(f"{path}: video is only {float(duration):.2f} s long; at least {MIN_DURATION_S} s is needed")
        return VideoClip(
            duration_s=float(duration),
            fps=fps,
            clip_frames=clip.stacked(clip_count),
            sync_frames=sync.stacked(sync_count),
            width=width,
            height=height,
            has_audio=has_audio,
        )


@dataclass
class _LastFrame:
    """The latest decoded frame, kept so that the slots after it can hold it."""

    frame: av.VideoFrame
    time: Fraction
    previous_time: Fraction | None

    def display_seconds(self, fps: Fraction | None) -> Fraction:
        """How long the frame is shown: its own duration, else the gap before it, else 1/fps."""
        if self.frame.duration:
            return self.frame.duration * self.frame.time_base
        if self.previous_time is not None and self.time > self.previous_time:
            return self.time - self.previous_time
        return 1 / Fraction(fps or SYNC_FPS)


def _hold_last_frame(last: _LastFrame, samplers: tuple[_TimeGridSampler, ...], until: Fraction | float,
                     pool: _ConvertPool) -> None:
    """Fill every sampler's slots up to ``until`` with the last frame (converted once more for
    the samplers whose last slot took an earlier frame)."""
    short = [sampler for sampler in samplers if sampler.next_time < until]
    converting = [sampler for sampler in short if sampler.source_time != last.time]
    converted = pool.submit(last.frame, [sampler.transform for sampler in converting]) if converting else None
    for sampler in short:
        if sampler in converting:
            sampler.hold(converted, converting.index(sampler), until)
        else:
            sampler.hold(*sampler.frames[-1], until)


def _warn_if_truncated(path: Path, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                       decoded_end: Fraction, wanted_end: Fraction | float) -> None:
    """A container that claims more video than decodes (a cut-off download, say) is worth a word."""
    claimed = _claimed_seconds(container, stream)
    if claimed is not None and claimed > decoded_end + TRUNCATION_SLACK_S and wanted_end > decoded_end:
        log.warning("%s: the container says %.2f s but only %.2f s of video decode (truncated?); "
                    "audio is made for the %.2f s that decode", path, float(claimed), float(decoded_end),
                    float(decoded_end))


def _claimed_seconds(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Fraction | None:
    if stream.duration is not None and stream.time_base is not None:
        return stream.duration * stream.time_base
    if container.duration is not None:
        return Fraction(container.duration, av.time_base)
    return None


def probe_video(path: str | Path) -> VideoProbe:
    """Duration, frame rate and size from the container headers, for quick checks and messages."""
    path = Path(path)
    with open_media(path) as container:
        stream = first_video_stream(container, path)
        if stream.duration is not None:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration_s = container.duration / av.time_base
        else:
            duration_s = None
        return VideoProbe(
            duration_s=duration_s,
            fps=stream.guessed_rate or stream.average_rate,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            has_audio=bool(container.streams.audio),
        )


@contextmanager
def open_media(path: Path) -> Iterator[av.container.InputContainer]:
    """Open a media file, turning every way it can be unusable into a one-line InputError."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a video file")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise InputError(f"{path}: not a readable video file ({ffmpeg_reason(error)})") from error
    except OSError as error:
        raise InputError(f"{path}: cannot open ({error.strerror or error})") from error
    with container:
        yield container


def first_video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise InputError(f"{path}: has no video stream")
    return container.streams.video[0]


def _decode(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> Iterator[av.VideoFrame]:
    """Decoded frames; a file that breaks mid-way is an input problem, not a crash."""
    try:
        yield from container.decode(stream)
    except av.FFmpegError as error:
        raise InputError(f"{path}: video is corrupt ({ffmpeg_reason(error)})") from error


def ffmpeg_reason(error: av.FFmpegError) -> str:
    """FFmpeg's description without the file name it appends, which our message already has."""
    return error.strerror or type(error).__name__
