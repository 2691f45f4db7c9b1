"""DeepSound-V1's steps for one clip: plan, generate, judge, remove, silence, post-process.

The plan's steps run in order with upstream's branches, each written once here: no voice-over →
the step-1 audio; ``s3`` → stop after removal; silent after removal → ``rm`` (no audio), ``rep``
(step-1 audio) or ``neg`` (regenerate with the negative prompt "human voice"). Upstream's bugs are
fixed: a step before any generation generates first, a plan without Step4 still checks silence in
``s4``, unknown steps are recorded and skipped. The Engine does each step's work; this module only
decides which step comes next.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .errors import DeepSoundError
from .events import ProgressSink, StepEvent
from .options import RunOptions
from .results import DeepSoundResult, GenerationResult, StepRecord

if TYPE_CHECKING:
    from .engine import Engine

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

    def __iter__(self) -> Iterator[StepEvent]:
        steps = yield from self._plan()
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
            plan = engine.reasoner.plan(self.video)
            steps, how = plan.steps, ("fast path" if plan.fast_path else "generated")
            details["timings"] = engine.reasoner.last_timings
            if plan.defaulted:  # the parser has logged the unusable text
                how = "default plan (the MLLM's was unusable)"
        else:
            steps, how = _canonical_plan_steps(), "default plan (no MLLM configured)"
        yield self._record("plan", started, how, steps=dict(steps), **details)
        return steps

    def _generate(self, negative_prompt: str) -> GenerationResult:
        """The one place the DeepSound steps generate audio."""
        return self.engine.generate(self.video, replace(self.options, negative_prompt=negative_prompt),
                                    progress=self.progress)

    def _generate_step(self, started: float, decision: str | None) -> StepEvent:
        self.generated = self._generate(self.options.negative_prompt)
        self.step1_audio = self.generated.waveform
        windows = self.generated.windows
        made = f"{self.generated.duration_s:.2f} s of audio" + (
            f" in {len(windows.windows)} windows" if windows is not None and len(windows.windows) > 1 else "")
        return self._record("generate", started, decision or made, self.step1_audio, timings=self.generated.timings,
                            windows=windows)

    def _judge(self, started: float):
        voice_over, detail = self.engine.judge_voice_over(self.video, self.step1_audio, self.generated.sample_rate,
                                                          self.judge)
        decision = "voice-over" if voice_over else "no voice-over"
        yield self._record("judge", started, decision + (" (assumed: judge=always)" if detail.get("assumed") else ""),
                           judge=self.judge, **detail)
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
            audio = self._generate(NEGATIVE_PROMPT_FOR_FALLBACK).waveform
            decision = f"neg: regenerated with negative prompt '{NEGATIVE_PROMPT_FOR_FALLBACK}'"
        yield self._record("postprocess", started, decision, audio)
        yield self._done(audio)

    # -- bookkeeping --------------------------------------------------------------------------

    def _record(self, step: str, started: float, decision: str, audio=None, **details) -> StepEvent:
        """Record a finished step and announce it."""
        record = StepRecord(step, decision, time.perf_counter() - started, audio, details)
        self.records.append(record)
        log.info("%s: %s (%.2f s)", step, decision, record.seconds)
        return StepEvent(step, "finished", record=record)

    def _done(self, audio: np.ndarray | None) -> StepEvent:
        result = DeepSoundResult(audio=audio, sample_rate=self.generated.sample_rate,
                                 duration_s=self.generated.duration_s, video=self.video, steps=self.records)
        return StepEvent("done", "finished", result=result)
