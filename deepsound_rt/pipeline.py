"""DeepSound-V1's steps for one clip: plan, generate, judge, remove, silence, post-process.

The plan's steps run in order with upstream's branches, each written once here: no voice-over →
the step-1 audio; ``s3`` → stop after removal; silent after removal → ``rm`` (no audio), ``rep``
(step-1 audio) or ``neg`` (regenerate with the negative prompt "human voice"). Upstream's bugs are
fixed: a step before any generation generates first, a plan without Step4 still checks silence in
``s4``, unknown steps are recorded and skipped. The Engine does each step's work; this module only
decides which step comes next, and with ``EngineConfig.overlap`` what starts ahead of its turn:

- Step 1 runs on a worker thread and its own CUDA stream while the caller runs step 0, the plan:
  every branch generates first, with the same options, so the plan's text cannot change what
  step 1 computes.
- The judge's video encoder runs right after the plan, once step 1 has decoded the clip (whose
  length fixes the frames the judge sees), and its audio encoder as soon as the step-1 audio
  exists, ahead of the judge's decoding.

Each step's record keeps its own seconds; the result's ``wall_seconds`` is the whole run's.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from .errors import DeepSoundError
from .events import ProgressSink, StepEvent
from .options import RunOptions
from .results import DeepSoundResult, GenerationResult, StepRecord
from .timing import Timings

if TYPE_CHECKING:
    from .engine import Engine
    from .stages.reason import JudgeMedia, MLLMReasoner

log = logging.getLogger(__name__)

NEGATIVE_PROMPT_FOR_FALLBACK = "human voice"  # DeepSound's "neg" post-processing
# The canonical plan's step numbers and what each one does.
STEP_ACTIONS = {1: "generate", 2: "judge", 3: "remove", 4: "silence"}


def _canonical_plan_steps() -> dict[int, str]:
    from .models.mllm.prompt import CANONICAL_PLAN_STEPS

    return dict(CANONICAL_PLAN_STEPS)


class StepRunner:
    """One clip through the DeepSound steps; iterating it yields :class:`StepEvent`s, the last one
    ``step == "done"`` with the result."""

    def __init__(self, engine: Engine, video: Path, options: RunOptions, progress: ProgressSink | None = None):
        self.engine, self.video, self.options, self.progress = engine, video, options, progress
        self.judge = engine.default_judge() if options.judge == "auto" else options.judge
        if self.judge in ("cot", "qa") and not engine.has_judge_mllm:
            raise DeepSoundError(f"judge '{self.judge}' needs the MLLM (EngineConfig.mllm); use judge='vad'")
        if not engine.config.weights_source.random:
            engine.separator_path()  # a missing separator checkpoint fails now, not after minutes of work
        self.records: list[StepRecord] = []
        self.generated: GenerationResult | None = None
        self.step1_audio: np.ndarray | None = None
        self.step3_audio: np.ndarray | None = None
        self.silent: bool | None = None  # None: not checked yet
        self.ahead: _Lookahead | None = None
        self.started = 0.0

    def __iter__(self) -> Iterator[StepEvent]:
        self.started = time.perf_counter()
        if self.engine.config.overlap:
            judge = self.engine.judge_reasoner if self.judge in ("cot", "qa") else None  # loaded here, not there
            self.ahead = _Lookahead(lambda on_decoded: self._run_generation(self.options.negative_prompt, on_decoded),
                                    judge, self.engine.device, self.engine.sample_rate)
        try:
            yield from self._steps()
        finally:
            if self.ahead is not None:
                self.ahead.close()

    def _steps(self) -> Iterator[StepEvent]:
        steps = yield from self._plan()
        if self.ahead is not None and 2 in steps:
            self.ahead.encode_judge_video(self.video)
        for number in sorted(steps):
            action = STEP_ACTIONS.get(number)
            yield StepEvent(action or f"step{number}", "started")
            started = time.perf_counter()
            if self.step1_audio is None:
                if action != "generate":
                    log.warning("plan step %d (%s) comes before any generated audio; generating first", number, action)
                yield self._generate_step(started, None if action == "generate" else
                                          "generated before the plan's first step")
                started = time.perf_counter()
            if action == "judge":
                voice_over = yield from self._judge(started)
                if not voice_over:
                    yield self._done(self.step1_audio)
                    return
            elif action == "remove":
                yield self._remove(started)
                if self.options.mode == "s3":
                    yield self._done(self.step3_audio)
                    return
            elif action == "silence":
                yield self._silence(started) if self.step3_audio is not None else \
                    self._record("silence", started, "skipped: nothing was removed")
            elif action is None:
                yield self._record(f"step{number}", started, "skipped: unknown step")

        if self.step1_audio is None:  # an empty plan: still give the user audio
            yield StepEvent("generate", "started")
            yield self._generate_step(time.perf_counter(), "the plan had no generation step")
        if self.step3_audio is None:  # nothing removed (no voice-over judged, or no removal planned)
            yield self._done(self.step1_audio)
            return
        if self.silent is None:  # upstream crashes on a plan without Step4; in s4 mode the check is implied
            yield StepEvent("silence", "started")
            yield self._silence(time.perf_counter(), implied=True)
        if not self.silent:
            yield self._done(self.step3_audio)
            return
        yield from self._postprocess()

    # -- one method per step ------------------------------------------------------------------

    def _plan(self):
        yield StepEvent("plan", "started")
        started = time.perf_counter()
        engine, details = self.engine, {}
        if engine.has_planner:
            plan = engine.plan(self.video)
            steps, how = plan.steps, ("fast path" if plan.fast_path else "generated")
            details["timings"] = engine.reasoner.last_timings
            if plan.defaulted:  # the parser has logged the unusable text
                how = "default plan (the MLLM's was unusable)"
        else:
            steps, how = _canonical_plan_steps(), "default plan (no MLLM configured)"
        yield self._record("plan", started, how, steps=dict(steps), **details)
        return steps

    def _run_generation(self, negative_prompt: str, on_decoded: Callable[[float], None] | None = None):
        """The one place the DeepSound steps generate audio."""
        return self.engine.generate(self.video, replace(self.options, negative_prompt=negative_prompt),
                                    progress=self.progress, on_decoded=on_decoded)

    def _generate(self, negative_prompt: str) -> tuple[GenerationResult, float]:
        """(generated audio, its own seconds); with ``overlap`` the first generation ran ahead."""
        ahead = self.ahead.take_generation() if self.ahead is not None else None
        if ahead is not None:
            return ahead
        started = time.perf_counter()
        return self._run_generation(negative_prompt), time.perf_counter() - started

    def _generate_step(self, started: float, decision: str | None) -> StepEvent:
        self.generated, seconds = self._generate(self.options.negative_prompt)
        self.step1_audio = self.generated.waveform
        return self._record("generate", started, decision or f"{self.generated.duration_s:.2f} s of audio",
                            self.step1_audio, seconds=seconds, timings=self.generated.timings)

    def _judge(self, started: float):
        media = self.ahead.judge_media(self.step1_audio, self.generated.sample_rate) if self.ahead else None
        ahead_seconds = 0.0
        if media is not None:  # its encoders ran ahead: their own time counts, not the wait for them
            started, ahead_seconds = time.perf_counter(), media.seconds
        voice_over, detail = self.engine.judge_voice_over(self.video, self.step1_audio, self.generated.sample_rate,
                                                          self.judge, media=media)
        decision = "voice-over" if voice_over else "no voice-over"
        yield self._record("judge", started, decision + (" (assumed: judge=always)" if detail.get("assumed") else ""),
                           seconds=time.perf_counter() - started + ahead_seconds, judge=self.judge, **detail)
        return voice_over

    def _remove(self, started: float) -> StepEvent:
        self.step3_audio, timings = self.engine.remove_voice_over(self.step1_audio, self.generated.sample_rate)
        return self._record("remove", started, "vocals removed", self.step3_audio, timings=timings)

    def _silence(self, started: float, implied: bool = False) -> StepEvent:
        decision = self.engine.check_silence(self.step3_audio)
        self.silent = decision.silent
        text = ("silent" if self.silent else "not silent") + (" (implied by s4)" if implied else "")
        return self._record("silence", started, text, silent_share=decision.silent_share)

    def _postprocess(self):
        yield StepEvent("postprocess", "started")
        started = time.perf_counter()
        how = self.options.postprocess
        if how == "rm":
            audio, decision = None, "rm: no audio"
        elif how == "rep":
            audio, decision = self.step1_audio, "rep: step-1 audio"
        else:
            audio = self._generate(NEGATIVE_PROMPT_FOR_FALLBACK)[0].waveform
            decision = f"neg: regenerated with negative prompt '{NEGATIVE_PROMPT_FOR_FALLBACK}'"
        yield self._record("postprocess", started, decision, audio)
        yield self._done(audio)

    # -- bookkeeping --------------------------------------------------------------------------

    def _record(self, step: str, started: float, decision: str, audio=None, seconds: float | None = None,
                **details) -> StepEvent:
        """Record a finished step (its ``seconds``: by default since ``started``) and announce it."""
        record = StepRecord(step, decision, time.perf_counter() - started if seconds is None else seconds, audio,
                            details)
        self.records.append(record)
        log.info("%s: %s (%.2f s)", step, decision, record.seconds)
        return StepEvent(step, "finished", record=record)

    def _done(self, audio: np.ndarray | None) -> StepEvent:
        result = DeepSoundResult(audio=audio, sample_rate=self.generated.sample_rate,
                                 duration_s=self.generated.duration_s, video=self.video, steps=self.records,
                                 wall_seconds=time.perf_counter() - self.started)
        return StepEvent("done", "finished", result=result)


class _Lookahead:
    """One run's work started ahead (the module docstring): step 1, then the judge's audio
    tokens, on a :class:`Background` worker; the judge's video tokens on the caller's thread once
    step 1 has decoded the clip. ``generate(on_decoded)`` is step 1 as the runner runs it, calling
    ``on_decoded`` with the clip's length once the video is decoded; ``judge`` is the judge's
    MLLM, or None when the judge is not one (nothing to encode ahead then)."""

    def __init__(self, generate: Callable[..., GenerationResult], judge: MLLMReasoner | None,
                 device: torch.device, sample_rate: int):
        self._generate = generate
        self._judge = judge
        self._sample_rate = sample_rate
        self._decoded: Future[float] = Future()
        self._generation: Future[tuple[GenerationResult, float]] = Future()
        self._judge_video: tuple[float, torch.Tensor, Timings, float] | None = None
        self._taken = False
        self._job = Background(self._step1, device)

    def _step1(self):
        started = time.perf_counter()
        try:
            result = self._generate(self._decoded.set_result)
        except BaseException as error:
            for future in (self._decoded, self._generation):
                if not future.done():
                    future.set_exception(error)
            raise
        self._generation.set_result((result, time.perf_counter() - started))
        if self._judge is None:
            return None
        timings, started = Timings(), time.perf_counter()
        tokens = self._judge.judge_audio_tokens(result.waveform, result.sample_rate, timings)
        return tokens, timings, time.perf_counter() - started

    def take_generation(self) -> tuple[GenerationResult, float] | None:
        """Step 1's result and its own seconds, the first time it is asked for (later generations,
        such as the ``neg`` fallback's, run afresh)."""
        if self._taken:
            return None
        self._taken = True
        return self._generation.result()

    def encode_judge_video(self, video: Path) -> None:
        """The judge's video tokens, for the frames up to the step-1 audio's length."""
        if self._judge is None:
            return
        until = round(self._decoded.result() * self._sample_rate) / self._sample_rate  # the step-1 audio's length
        timings, started = Timings(), time.perf_counter()
        tokens = self._judge.judge_video_tokens(video, until, timings)
        self._judge_video = (until, tokens, timings, time.perf_counter() - started)

    def judge_media(self, audio: np.ndarray, sample_rate: int) -> JudgeMedia | None:
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
