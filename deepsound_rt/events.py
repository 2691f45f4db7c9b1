"""What the Engine reports while it works, as plain data: a stage's progress (:class:`ProgressEvent`,
to a progress sink) and the DeepSound steps starting and finishing (:class:`StepEvent`, yielded by
``Engine.steps``). Rendering them is the caller's business (the CLI's is ``deepsound_rt.console``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

if TYPE_CHECKING:
    from .results import DeepSoundResult, StepRecord


@dataclass(frozen=True)
class ProgressEvent:
    """``completed`` of ``total`` units of work done in ``stage``."""

    stage: str
    completed: int
    total: int


ProgressSink = Callable[[ProgressEvent], None]


@dataclass
class StepEvent:
    """A step starting, a step finished (``record``), or the end (``step == "done"``, ``result``)."""

    step: str
    status: Literal["started", "finished"]
    record: StepRecord | None = None
    result: DeepSoundResult | None = None
