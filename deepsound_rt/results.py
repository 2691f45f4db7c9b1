"""What the Engine returns: step 1's audio (:class:`GenerationResult`) and the DeepSound steps'
audio with a record per step (:class:`DeepSoundResult`); both write themselves into the video."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io.output import write_output
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

    def save(self, path: str | Path) -> Path:
        """``.mp4``/``.mov``/``.mkv`` (video copied, audio as AAC; no audio track when it was
        removed) or ``.wav`` (refused when there is no audio)."""
        return write_output(Path(path), self.audio, self.sample_rate, source_video=self.video,
                            duration_s=self.duration_s)
