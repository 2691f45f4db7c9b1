"""DeepSound's steps side by side (``EngineConfig.overlap``): work starts as soon as its inputs
exist instead of when the previous step ends, with the same results as the serial order.

- Step 1 decodes the video on worker threads while the CLIP image encoder already runs on the
  frames decoded so far (:func:`decode_while_encoding`).
- Step 1 runs on a worker thread and its own CUDA stream while the caller runs step 0, the plan:
  every branch of the steps generates first, with the same arguments, so the plan's text cannot
  change what step 1 computes (:class:`StepLookahead`).
- The judge's video encoder runs right after the plan, once step 1 has decoded the clip (whose
  length fixes the frames the judge sees), and its audio encoder as soon as the step-1 audio
  exists, ahead of the judge's decoding.

The GPU overlaps what the CPU does (decoding video, resampling audio, Python), and small kernels of
one step fill gaps left by another's.
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable

import torch

from .io.video import VideoClip, VideoStream
from .stages import features
from .timing import StageTiming, Timings

if TYPE_CHECKING:
    from .backends.base import Graph
    from .stages.reason import JudgeMedia, MLLMReasoner


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


class Background:
    """``fn()`` on a worker thread (in inference mode), on a CUDA stream of its own on a GPU,
    ordered after the caller's work so far; :meth:`result` joins it and orders the caller's stream
    after it (tensors it returns are safe to use there)."""

    def __init__(self, fn: Callable[[], Any], device: torch.device):
        self._device = device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        if self._stream is not None:
            self._stream.wait_stream(torch.cuda.current_stream(device))
        self._finished: torch.cuda.Event | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True, name="deepsound-overlap")
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        stream = contextlib.nullcontext() if self._stream is None else torch.cuda.stream(self._stream)
        try:
            with torch.inference_mode(), stream:
                self._value = fn()
                if self._stream is not None:
                    self._finished = self._stream.record_event()
        except BaseException as error:  # raised again by result()
            self._error = error

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._stream is not None:
            current = torch.cuda.current_stream(self._device)
            current.wait_event(self._finished)
            for tensor in _tensors(self._value):
                if tensor.is_cuda:
                    tensor.record_stream(current)  # its memory is not reused before the caller is done
        return self._value


def decode_while_encoding(path, duration_s: float | None, clip_graph: Graph, timings: Timings,
                          device: torch.device) -> tuple[VideoClip, torch.Tensor]:
    """Step 1's video decoding (worker threads) with the CLIP image encoder running on each run's
    worth of frames as soon as they are decoded: (the clip, its (1, T, D) CLIP features).

    The runs are those :func:`features.clip_image_features` makes of the whole clip, so the
    features equal the serial order's; a run started before decoding ended that reaches past the
    clip's final length is encoded again with the frames the clip keeps. ``timings`` gets
    "video decode" (decoding's own time) and "clip" (the encoder's time, all runs).
    """
    stream = VideoStream(path, duration_s)
    step = features.CLIP_FRAMES_PER_RUN
    encoded: list[torch.Tensor] = []
    runs = Timings()
    while (frames := stream.clip_frames(len(encoded) * step, step)) is not None:
        with runs.measure("clip", device, clip_graph.backend):
            encoded.append(features.clip_image_features(clip_graph, frames))
    clip = stream.result()
    encoded = encoded[: len(clip.clip_frames) // step]  # the runs wholly inside the clip
    rest = clip.clip_frames[len(encoded) * step :]
    if len(rest):
        with runs.measure("clip", device, clip_graph.backend):
            encoded.append(features.clip_image_features(clip_graph, rest))
    timings.stages.append(StageTiming("video decode", stream.seconds))
    timings.stages.append(StageTiming("clip", runs.total, clip_graph.backend))
    return clip, torch.cat(encoded, dim=1)


class StepLookahead:
    """One run of the steps with step 1 and the judge's encoders started ahead (module docstring).

    ``generate(on_decoded)`` is step 1 as the step runner would run it, calling ``on_decoded``
    with the clip's length once the video is decoded; ``judge`` is the judge's MLLM, or None when
    the judge is not an MLLM (nothing to encode ahead then).
    """

    def __init__(self, generate: Callable[..., Any], judge: MLLMReasoner | None, device: torch.device,
                 sample_rate: int):
        self._generate = generate
        self._judge = judge
        self._sample_rate = sample_rate
        self._decoded: Future[float] = Future()
        self._generation: Future[tuple[Any, float]] = Future()
        self._judge_video: tuple[float, torch.Tensor, Timings, float] | None = None
        self._taken = False
        self._job = Background(self._step1, device)

    def _step1(self):
        started = perf_counter()
        try:
            result = self._generate(on_decoded=self._decoded.set_result)
        except BaseException as error:
            for future in (self._decoded, self._generation):
                if not future.done():
                    future.set_exception(error)
            raise
        self._generation.set_result((result, perf_counter() - started))
        if self._judge is None:
            return None
        timings, started = Timings(), perf_counter()
        tokens = self._judge.judge_audio_tokens(result.waveform, result.sample_rate, timings)
        return tokens, timings, perf_counter() - started

    def take_generation(self) -> tuple[Any, float] | None:
        """Step 1's result and its own seconds, the first time it is asked for (later generations,
        such as the ``neg`` fallback's, run afresh)."""
        if self._taken:
            return None
        self._taken = True
        return self._generation.result()

    def encode_judge_video(self, video) -> None:
        """The judge's video tokens, for the frames up to the step-1 audio's length (here, on the
        caller's thread and stream)."""
        if self._judge is None:
            return
        num_samples = round(self._decoded.result() * self._sample_rate)  # what step 1 returns
        until = num_samples / self._sample_rate
        timings, started = Timings(), perf_counter()
        tokens = self._judge.judge_video_tokens(video, until, timings)
        self._judge_video = (until, tokens, timings, perf_counter() - started)

    def judge_media(self, audio, sample_rate: int) -> JudgeMedia | None:
        """The judge's encoded inputs for ``audio`` (the step-1 audio), or None where they were not
        made ahead for exactly these inputs (the judge then encodes them itself)."""
        from .stages.reason import JudgeMedia

        audio_part = self._job.result()
        if self._judge_video is None or audio_part is None:
            return None
        until, video_tokens, video_timings, video_seconds = self._judge_video
        if until != len(audio) / sample_rate:
            return None
        audio_tokens, audio_timings, audio_seconds = audio_part
        return JudgeMedia(video_tokens, audio_tokens, Timings(video_timings.stages + audio_timings.stages),
                          video_seconds + audio_seconds)

    def close(self) -> None:
        """Wait for the worker (the engine must be idle when the run ends, even by an error)."""
        with contextlib.suppress(BaseException):
            self._job.result()
