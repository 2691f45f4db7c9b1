"""The CLI's rendering with rich: a live progress bar per stage while the Engine works, each
DeepSound step as it finishes, the step and per-stage timing tables, and the console verify's
reports print on. The only module that imports rich, so the SDK can be embedded without a
terminal library."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from .events import ProgressEvent, StepEvent
    from .results import BatchResult, DeepSoundResult
    from .timing import Timings


__all__ = ["ConsoleProgress", "escape", "print_batch_summary", "print_steps", "print_timings", "report_console"]


def report_console() -> Console:
    """Where verify prints: PASS/FAIL markup, no automatic highlighting, lines never cut."""
    return Console(soft_wrap=True, highlight=False)


PLAIN_PROGRESS_INTERVAL_S = 5.0
"""Where stderr is not a terminal (a log file, CI), a plain progress line at most this often."""


class ConsoleProgress:
    """A callable progress sink for :meth:`Engine.generate`: one bar per stage on a terminal;
    elsewhere plain ``progress: stage done/total`` lines, at most one every ``interval_s``, so
    that a long run still shows it is alive and a log is not flooded."""

    def __init__(self, console: Console | None = None, interval_s: float = PLAIN_PROGRESS_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self._console = console or Console(stderr=True)
        self._plain = not self._console.is_terminal
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description:<14}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(),
                                  console=self._console, transient=False)
        self._tasks: dict[str, int] = {}
        self._interval_s, self._clock = interval_s, clock
        self._started = self._last_line = clock()

    def __enter__(self) -> "ConsoleProgress":
        if not self._plain:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._plain:
            self._progress.stop()

    def step(self, event: "StepEvent") -> None:
        """Print a DeepSound step as it finishes, above the bars."""
        if event.record is not None:
            record = event.record
            self._console.print(f"[bold]{record.step}[/]: {escape(record.decision)} ({record.seconds:.2f} s)", soft_wrap=True)

    def file_done(self, outcome: "BatchResult", done: int, total: int) -> None:
        """A batch's video finished: one line above the bars, and the bar over files moved on."""
        colour = {"ok": "green", "skipped": "yellow", "failed": "red"}[outcome.status]
        detail = outcome.error if outcome.error else (str(outcome.output) if outcome.output else "")
        self._progress.console.print(f"[{done}/{total}] {escape(str(outcome.video))}: [{colour}]{outcome.status}[/]"
                                     f" ({outcome.seconds:.1f} s) {escape(detail)}")
        self.files(done, total)

    def files(self, done: int, total: int) -> None:
        """The bar over a batch's files."""
        from .events import ProgressEvent

        self(ProgressEvent("files", done, total))

    def __call__(self, event: "ProgressEvent") -> None:
        if self._plain:
            now = self._clock()
            if now - self._last_line >= self._interval_s:
                self._last_line = now
                self._console.print(f"progress: {event.stage} {event.completed}/{event.total} "
                                    f"({now - self._started:.0f} s)", markup=False, highlight=False, soft_wrap=True)
            return
        task = self._tasks.get(event.stage)
        if task is None:
            task = self._tasks[event.stage] = self._progress.add_task(event.stage, total=event.total)
        self._progress.update(task, completed=event.completed, total=event.total)


def print_timings(timings: "Timings", audio_seconds: float, where: str, console: Console | None = None,
                  title: str = "step 1 per-stage latency") -> None:
    """Per-stage latency with the backend that ran each stage."""
    console = console or Console()
    table = Table(title=f"{title} ({where})")
    table.add_column("stage")
    table.add_column("backend")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    total = timings.total
    for timing in timings.stages:
        share = timing.seconds / total if total else 0.0
        table.add_row(timing.stage, timing.backend or "-", f"{timing.seconds:.3f}", f"{share:.0%}")
    rtf = audio_seconds / total if total else float("inf")
    table.add_row("total", "", f"{total:.3f}", f"{rtf:.2f}x real time", style="bold")
    console.print(table)


def print_steps(result: "DeepSoundResult", where: str, console: Console | None = None) -> None:
    """What each DeepSound step decided and how long it took, then step 1's stage latencies."""
    console = console or Console()
    table = Table(title=f"DeepSound steps ({where})")
    table.add_column("step")
    table.add_column("decision")
    table.add_column("seconds", justify="right")
    for record in result.steps:
        table.add_row(record.step, record.decision, f"{record.seconds:.3f}")
    table.add_row("total", "", f"{sum(r.seconds for r in result.steps):.3f}", style="bold")
    table.add_row("wall time", "steps overlap with --overlap", f"{result.wall_seconds:.3f}")
    console.print(table)
    for record in result.steps:
        if "timings" in record.details:
            print_timings(record.details["timings"], result.duration_s, where, console,
                          title="step 1 per-stage latency" if record.step == "generate" else f"{record.step} latency")


def print_batch_summary(outcomes: "list[BatchResult]", console: Console | None = None) -> None:
    """Each video of a batch: its status, seconds and output (or why it failed)."""
    console = console or Console()
    table = Table(title="batch")
    table.add_column("video")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    table.add_column("output / error")
    for outcome in outcomes:
        table.add_row(escape(str(outcome.video)), outcome.status, f"{outcome.seconds:.2f}",
                      escape(outcome.error or str(outcome.output or "")))
    counts = {status: sum(o.status == status for o in outcomes) for status in ("ok", "skipped", "failed")}
    table.add_row("total", ", ".join(f"{n} {status}" for status, n in counts.items() if n),
                  f"{sum(o.seconds for o in outcomes):.2f}", "", style="bold")
    console.print(table)
