"""What the Engine returns: step 1's audio (:class:`GenerationResult`) and the DeepSound steps'
audio with a record per step (:class:`DeepSoundResult`); both write themselves into the video."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io.output import write_output
from .stages.windows import WindowPlan
from .timing import Timings


@dataclass
class GenerationResult:
    """Generated mono audio plus what produced it; ``save`` writes it next to (or into) the video."""

    waveform: np.ndarray
    sample_rate: int
    duration_s: float
    video: Path
    timings: Timings
    preset: str
    seed: int
    device: str
    dtype: str
    windows: WindowPlan | None = None
    """Where each window of the audio lies and how they were joined."""

    def save(self, path: str | Path) -> Path:
        """Write ``.mp4``/``.mov``/``.mkv`` (video stream copied, audio as AAC) or ``.wav``."""
        return write_output(Path(path), self.waveform, self.sample_rate, source_video=self.video,
                            duration_s=self.duration_s)


@dataclass
class StepRecord:
    """One finished step: what it decided, the audio it produced (if any) and how long it took."""

    step: str  # plan, generate, judge, remove, silence, postprocess
    decision: str
    seconds: float
    audio: np.ndarray | None = None
    details: dict = field(default_factory=dict)


@dataclass
class DeepSoundResult:
    """The final audio (None when post-processing ``rm`` removed it), every step's record (each
    with its own time) and the wall time of the whole run (less than their sum with ``overlap``)."""

    audio: np.ndarray | None
    sample_rate: int
    duration_s: float
    video: Path
    steps: list[StepRecord]
    wall_seconds: float = 0.0

    def step(self, name: str) -> StepRecord | None:
        """The last record of step ``name``."""
        return next((r for r in reversed(self.steps) if r.step == name), None)

    @property
    def windows(self) -> WindowPlan | None:
        """The step-1 audio's windows (see :attr:`GenerationResult.windows`)."""
        generate = self.step("generate")
        return None if generate is None else generate.details.get("windows")

    def save(self, path: str | Path) -> Path:
        """``.mp4``/``.mov``/``.mkv`` (video copied, audio as AAC; no audio track when it was
        removed) or ``.wav`` (refused when there is no audio)."""
        return write_output(Path(path), self.audio, self.sample_rate, source_video=self.video,
                            duration_s=self.duration_s)


@dataclass
class BatchResult:
    """One video of :meth:`Engine.run_many`: ``ok`` (its result, written to ``output`` when an
    output folder was given), ``skipped`` (``output`` already there: outputs appear only complete)
    or ``failed`` (``error``, one line)."""

    video: Path
    status: str
    seconds: float = 0.0
    output: Path | None = None
    result: GenerationResult | DeepSoundResult | None = None
    error: str | None = None
    source: str = ""

    def log_entry(self) -> dict:
        """What the batch log keeps of it: input, output, status, steps, decisions, seconds, error."""
        steps = getattr(self.result, "steps", None)
        if steps is None and isinstance(self.result, GenerationResult):
            steps = [StepRecord("generate", f"{self.result.duration_s:.2f} s of audio", self.result.timings.total)]
        return {"input": str(self.video), "output": None if self.output is None else str(self.output),
                "status": self.status, "steps": [record.step for record in steps or ()],
                "decisions": {record.step: record.decision for record in steps or ()},
                "seconds": round(self.seconds, 3), "error": self.error}
