"""Reading the input video into the two frame streams MMAudio conditions on.

Reproduces MMAudio's ``load_video``/``read_frames`` numerically: frames are resampled by their
presentation time (``frame.time``: seconds from 0, not from the stream's start time) onto
8 fps (CLIP) and 25 fps (Synchformer) time grids, then resized with torchvision's bicubic,
antialiased resize. Unlike upstream, each kept frame is converted once, on worker threads while
the next frames decode, and only a few full-resolution frames wait at any time. A
:class:`FrameStream` hands the grids' frames on in chunks as they fill, so a video of any length
is never held whole; :func:`load_video` collects them for a short clip.

One deliberate difference: upstream accumulates grid times in floating point (0 + 1/fps + ...),
so a 25 fps source occasionally skips a frame and repeats the next one, and an exactly 8.00 s,
25 fps video yields only 199 sync frames (7.96 s). Here grid slot k sits at exactly k/fps and
frame times are exact fractions (pts x time base), so that video gives the 8.00 s asked for.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

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


@dataclass(eq=False)
class _TimeGridSampler:
    """Resamples decoded frames onto a ``fps`` time grid the MMAudio way: each grid slot takes
    the first frame whose time is at or after it. A slower source thus has each frame repeated
    over the slots since the previous frame (shown up to one source interval early, not held
    after), and a faster one has frames skipped. Slots after the last frame, up to the end of its
    display, hold that frame (:meth:`hold`). Slots are handed on (:meth:`take`) as they fill, so
    only those not yet taken are held here."""

    fps: int
    transform: Callable[[torch.Tensor], torch.Tensor]
    pending: deque[tuple[Future, int]] = field(default_factory=deque)
    """Per filled slot not yet taken: the conversion job of its frame, and this sampler's place in its results."""
    limit: int | float = math.inf
    """Slots to fill from decoded frames (those before the requested end, or more when padded)."""
    taken: int = 0
    """Slots handed on so far."""
    source_time: Fraction | None = None
    """Time of the source frame the last slot took."""

    @property
    def filled(self) -> int:
        return self.taken + len(self.pending)

    @property
    def next_time(self) -> Fraction:
        return Fraction(self.filled, self.fps)

    def wants(self, time: Fraction) -> bool:
        return self.next_time <= time and self.filled < self.limit

    def add(self, time: Fraction, converted: Future, index: int) -> None:
        """Give the frame at ``time`` to every open slot at or before it, up to ``limit`` slots."""
        while self.wants(time):
            self.pending.append((converted, index))
        self.source_time = time

    def hold(self, converted: Future, index: int, slots: int) -> None:
        """Repeat a frame over the slots up to ``slots`` filled."""
        while self.filled < slots:
            self.pending.append((converted, index))

    def take(self, count: int) -> torch.Tensor:
        """The next ``count`` slots' frames, (count, 3, S, S) uint8; they are no longer held here."""
        frames = [self.pending.popleft() for _ in range(count)]
        self.taken += count
        return torch.stack([converted.result()[index] for converted, index in frames])


@dataclass
class FrameChunk:
    """Consecutive slots of one grid: ``frames[i]`` fills slot ``first + i`` of the ``kind`` grid
    (``clip``: 8 fps at 384 px, ``sync``: 25 fps at 224 px), uint8 as in :class:`VideoClip`."""

    kind: str
    first: int
    frames: torch.Tensor


class FrameStream:
    """The frames :func:`load_video` returns, handed on in chunks while the video decodes, so that
    a video of any length is never held whole: iterate it for :class:`FrameChunk`s (each grid's
    in slot order, at most ``chunk`` slots each). Once iterated, ``duration_s``, ``fps``,
    ``width``, ``height`` and ``has_audio`` describe the video as :class:`VideoClip` does.

    ``pad(duration) -> (clip slots, sync slots)`` asks for more slots than the video fills
    (windows that end past it): the slots after the video's end hold its last frame, as the
    slots up to the end of its display do.
    """

    def __init__(self, path: str | Path, duration_s: float | None = DEFAULT_DURATION_S, chunk: int = 16,
                 pad: Callable[[Fraction], tuple[int, int]] | None = None):
        self.path = Path(path)
        if duration_s is not None and not duration_s > 0:
            raise InputError(f"{self.path}: requested duration must be positive, got {duration_s}")
        if duration_s is not None and duration_s < MIN_DURATION_S:
            raise InputError(f"{self.path}: requested duration {duration_s} s is below the minimum {MIN_DURATION_S} s")
        self.end: Fraction | float = math.inf if duration_s is None else Fraction(duration_s)
        self.chunk, self.pad = chunk, pad
        self.duration: Fraction | None = None
        self.fps: Fraction | None = None
        self.width = self.height = 0
        self.has_audio = False
        self.counts: tuple[int, int] | None = None
        """(clip, sync) slots handed on in all, padding included."""

    @property
    def duration_s(self) -> float:
        return float(self.duration)

    def __iter__(self) -> Iterator[FrameChunk]:
        samplers = {"clip": _TimeGridSampler(CLIP_FPS, clip_transform), "sync": _TimeGridSampler(SYNC_FPS, sync_transform)}
        end, path = self.end, self.path
        for sampler in samplers.values():
            sampler.limit = math.ceil(sampler.fps * end) if end < math.inf else math.inf  # slots before ``end``
        padded = self.pad is None
        last: _LastFrame | None = None
        with open_media(path) as container, _ConvertPool() as pool:
            stream = first_video_stream(container, path)
            stream.thread_type = "AUTO"
            self.fps = stream.guessed_rate or stream.average_rate
            self.has_audio = bool(container.streams.audio)
            video_end: Fraction | float = math.inf  # until the last frame is known
            for frame in _decode(container, stream, path):
                if frame.pts is None or frame.time_base is None:
                    raise InputError(f"{path}: video frames carry no timestamps; remux it into .mp4 first")
                time = frame.pts * frame.time_base  # exact, unlike the float frame.time
                if time < 0:
                    continue
                self.width, self.height = frame.width, frame.height
                if time >= end and not padded:  # the duration is ``end``: padded slots take the frames after it
                    padded = True
                    for sampler, wanted in zip(samplers.values(), self.pad(end)):
                        sampler.limit = max(sampler.limit, wanted)
                wanting = [sampler for sampler in samplers.values() if sampler.wants(time)]
                if wanting:
                    converted = pool.submit(frame, [sampler.transform for sampler in wanting])
                    for index, sampler in enumerate(wanting):
                        sampler.add(time, converted, index)
                if time >= end and all(sampler.filled >= sampler.limit for sampler in samplers.values()):
                    break  # every slot asked for is filled
                last = _LastFrame(frame, time, last.time if last is not None else None)
                # A filled slot may still lie past the end (known only at the last frame): keep one.
                for kind, sampler in samplers.items():
                    while len(sampler.pending) > self.chunk:
                        yield FrameChunk(kind, sampler.taken, sampler.take(self.chunk))
            else:
                if last is not None:
                    video_end = last.time + last.display_seconds(self.fps)
                    until = min(end, video_end)
                    _hold_last_frame(last, samplers.values(), lambda sampler: math.ceil(sampler.fps * until), pool)
                    _warn_if_truncated(path, container, stream, video_end, end)
            if not samplers["sync"].filled:
                raise InputError(f"{path}: no decodable video frames")
            self.duration = duration = min(end, video_end)
            counts = [math.floor(sampler.fps * duration) for sampler in samplers.values()]
            if counts[1] < SYNC_SEGMENT_FRAMES:
                raise InputError(f"{path}: video is only {float(duration):.2f} s long; at least {MIN_DURATION_S} s is needed")
            if self.pad is not None:
                counts = [max(count, wanted) for count, wanted in zip(counts, self.pad(duration))]
                if last is not None and video_end < math.inf:  # the video ended: padded slots hold its last frame
                    wanted = dict(zip(samplers.values(), counts))
                    _hold_last_frame(last, samplers.values(), wanted.__getitem__, pool)
            self.counts = (counts[0], counts[1])
            for (kind, sampler), count in zip(samplers.items(), counts):
                while sampler.taken < count:
                    yield FrameChunk(kind, sampler.taken, sampler.take(min(self.chunk, count - sampler.taken)))


def load_video(path: str | Path, duration_s: float | None = DEFAULT_DURATION_S) -> VideoClip:
    """Decode the first ``duration_s`` seconds (None: the whole video) into CLIP and sync frames.

    The duration shrinks to what the video holds, as in MMAudio, where a video ends when its last
    frame's display ends (its time plus its duration), whatever the frame rate: grid slots after
    the last frame hold it. Anything shorter than ``MIN_DURATION_S`` is refused, since the sync
    model cannot see a single segment. A file that decodes to less than its container claims
    (truncated) is used for what decodes, with a warning that says both lengths. Every frame is
    held at once: for long videos, iterate a :class:`FrameStream` instead.
    """
    stream = FrameStream(path, duration_s)
    chunks: dict[str, list[torch.Tensor]] = {"clip": [], "sync": []}
    for chunk in stream:
        chunks[chunk.kind].append(chunk.frames)
    return VideoClip(
        duration_s=stream.duration_s,
        fps=stream.fps,
        clip_frames=torch.cat(chunks["clip"]),
        sync_frames=torch.cat(chunks["sync"]),
        width=stream.width,
        height=stream.height,
        has_audio=stream.has_audio,
    )


def read_ahead(stream: FrameStream, depth: int = 4) -> Iterator[FrameChunk]:
    """``stream``'s chunks, decoded on a worker thread up to ``depth`` chunks ahead of the caller
    (``EngineConfig.overlap``: the encoders work on one chunk while the next decodes); its errors
    are raised here, in order."""
    handed: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def offer(item) -> bool:
        """Hand ``item`` on unless the caller stopped reading."""
        while not stop.is_set():
            try:
                handed.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        try:
            for chunk in stream:
                if not offer(chunk):
                    return
            offer(end)
        except BaseException as error:  # handed to the caller
            offer(error)

    worker = threading.Thread(target=decode, daemon=True, name="deepsound-video")
    worker.start()
    try:
        while (item := handed.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


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


def _hold_last_frame(last: _LastFrame, samplers, slots: Callable[[_TimeGridSampler], int],
                     pool: _ConvertPool) -> None:
    """Fill each sampler's slots up to ``slots(sampler)`` with the last frame (converted once more
    for the samplers whose last slot took an earlier frame)."""
    short = [sampler for sampler in samplers if sampler.filled < slots(sampler)]
    converting = [sampler for sampler in short if sampler.source_time != last.time or not sampler.pending]
    converted = pool.submit(last.frame, [sampler.transform for sampler in converting]) if converting else None
    for sampler in short:
        if sampler in converting:
            sampler.hold(converted, converting.index(sampler), slots(sampler))
        else:
            sampler.hold(*sampler.pending[-1], slots(sampler))


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
