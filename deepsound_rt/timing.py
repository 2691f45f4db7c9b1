"""Per-stage wall-clock timing that is honest on GPUs (waits for queued kernels before reading the clock)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch


@dataclass
class StageTiming:
    stage: str
    seconds: float
    backend: str = ""


@dataclass
class Timings:
    stages: list[StageTiming] = field(default_factory=list)

    @contextmanager
    def measure(self, stage: str, device: torch.device | None = None, backend: str = "") -> Iterator[None]:
        _synchronize(device)
        start = time.perf_counter()
        yield
        _synchronize(device)
        self.stages.append(StageTiming(stage, time.perf_counter() - start, backend))

    @property
    def total(self) -> float:
        return sum(s.seconds for s in self.stages)

    def as_dict(self) -> dict[str, float]:
        """stage -> seconds (a stage measured twice is summed)."""
        out: dict[str, float] = {}
        for s in self.stages:
            out[s.stage] = out.get(s.stage, 0.0) + s.seconds
        return out


def _synchronize(device: torch.device | None) -> None:
    """Wait for the work queued on the calling thread's stream: with ``overlap`` other threads run
    other steps on their own streams, and the memory tiers copy weights on a side stream meant to
    overlap the stage; neither counts here nor should be waited for."""
    if device is not None and device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
