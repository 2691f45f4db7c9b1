"""The work behind the API: one runner thread per device, each with its own loaded Engine, running
one job at a time; a heartbeat thread that keeps this process's leases alive.

A runner writes every step and progress report to the store as it happens (the events a client
streams), checks between reports whether the job was cancelled or taken from it, and writes the
result files atomically before it marks the job done, so ``done`` always means the files exist.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from ..errors import DeepSoundError
from ..events import ProgressEvent
from ..options import RunOptions
from .metrics import Metrics
from .settings import ServeSettings, load_engine
from ..io.output import write_bytes
from .store import Job, JobStore

log = logging.getLogger(__name__)

RESULT_VIDEO, RESULT_AUDIO, RESULT_PLOT = "result.mp4", "result.wav", "plot.png"
IDLE_POLL_S = 0.5  # a runner also looks for work this often (jobs submitted to another replica)


class _Stop(Exception):
    """Why a runner leaves a job before it ends."""


class _Cancelled(_Stop):
    pass


class _LeaseLost(_Stop):
    pass


class _ShuttingDown(_Stop):
    pass


def client_message(error: Exception, job_dir: Path, filename: str) -> str:
    """An error's one line as the client should see it: our file paths replaced by their file name."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    for path in sorted(job_dir.glob("*"), key=lambda p: -len(str(p))):
        message = message.replace(str(path), filename)
    return message.replace(str(job_dir), "<job>")


class Runner(threading.Thread):
    """One device: loads its Engine, then claims and runs jobs until the service stops."""

    def __init__(self, service: "Service", device: str):
        super().__init__(name=f"deepsound-runner-{device}", daemon=True)
        self.service, self.device = service, device
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{device}:{secrets.token_hex(3)}"
        self.state = "loading"  # then "ready", or "failed: <reason>"
        self.engine = None
        self.job: Job | None = None  # the job running now

    def run(self) -> None:
        try:
            self.engine = load_engine(self.service.settings.engine, self.device)
        except Exception as error:  # noqa: BLE001 - shown by /readyz; the process stays up for it
            log.exception("runner %s: the engine did not load", self.device)
            self.state = f"failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
            return
        self.state = "ready"
        store = self.service.store
        while not self.service.stopping.is_set():
            try:
                job = store.claim(self.worker, self.service.settings.lease_seconds)
            except Exception:  # noqa: BLE001 - e.g. a database locked for too long: try again
                log.exception("runner %s: claiming a job failed", self.device)
                job = None
            if job is None:
                with self.service.work:
                    self.service.work.wait(IDLE_POLL_S)
                continue
            self.job = job
            try:
                self._run(job)
            finally:
                self.job = None

    def _check(self, job: Job) -> None:
        if self.service.stopping.is_set():
            raise _ShuttingDown()
        state = self.service.store.check(job.id, self.worker)
        if state == "cancel":
            raise _Cancelled()
        if state == "lost":
            raise _LeaseLost()

    def _run(self, job: Job) -> None:
        store, metrics = self.service.store, self.service.metrics
        job_dir = store.job_dir(job.id)
        started = time.perf_counter()

        def progress(event: ProgressEvent) -> None:
            store.add_event(job.id, self.worker, "progress",
                            {"stage": event.stage, "completed": event.completed, "total": event.total})
            self._check(job)

        status, error = "done", None
        try:
            result = None
            for event in self.engine.steps(store.input_path(job), RunOptions(**job.options), progress=progress):
                if event.record is not None:
                    record = event.record
                    store.add_step(job.id, self.worker, {"step": record.step, "decision": record.decision,
                                                          "seconds": round(record.seconds, 4)})
                    metrics.step_seconds.labels(record.step).observe(record.seconds)
                elif event.result is None:
                    store.add_event(job.id, self.worker, "step", {"step": event.step, "status": "started"})
                result = event.result or result
                self._check(job)
            self._write_results(job_dir, result, job.filename)  # then `finish` is fenced: no check needed
        except _Cancelled:
            status, error = "cancelled", "cancelled by request"
        except _ShuttingDown:
            store.requeue(job.id, self.worker, "the server stopped")
            return
        except _LeaseLost:
            log.warning("job %s: lost to another worker (lease expired); dropping this attempt", job.id)
            return
        except DeepSoundError as problem:
            status, error = "failed", client_message(problem, job_dir, job.filename)
        except Exception as problem:  # noqa: BLE001 - a bug; the job says so and the runner goes on
            log.exception("job %s failed", job.id)
            status, error = "failed", f"internal error: {client_message(problem, job_dir, job.filename)}"
        if store.finish(job.id, self.worker, status, error,
                        has_audio=None if status != "done" else result.audio is not None):
            seconds = time.perf_counter() - started
            metrics.job_seconds.labels(status).observe(seconds)
            log.info("job %s %s in %.1f s on %s%s", job.id, status, seconds, self.device, f": {error}" if error else "")

    @staticmethod
    def _write_results(job_dir: Path, result, filename: str) -> None:
        from ..plot import render_result

        result.save(job_dir / RESULT_VIDEO)
        if result.audio is not None:
            result.save(job_dir / RESULT_AUDIO)
        write_bytes(job_dir / RESULT_PLOT, render_result(result, name=filename))


class Service:
    """The store, the metrics and the runners of one server process."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.store = JobStore(settings.data_dir, exclusive=settings.exclusive)
        self.metrics = Metrics(self.store)
        self.stopping = threading.Event()
        self.work = threading.Condition()
        self.runners = [Runner(self, device) for device in settings.devices]
        self._heartbeat = threading.Thread(target=self._renew_leases, name="deepsound-heartbeat", daemon=True)

    def start(self) -> None:
        if self.settings.exclusive:
            requeued = self.store.requeue_orphans()
            if requeued:
                log.warning("re-queued %d job(s) that were running when the server stopped", requeued)
        self._heartbeat.start()
        for runner in self.runners:
            runner.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Runners put their jobs back in the queue at their next check; a runner still inside a long
        step after ``timeout_s`` has its job put back for it (its own later writes are fenced out)."""
        self.stopping.set()
        self.notify()
        deadline = time.monotonic() + timeout_s
        for runner in self.runners:
            runner.join(max(0.0, deadline - time.monotonic()))
            job = runner.job
            if runner.is_alive() and job is not None:
                self.store.requeue(job.id, runner.worker, "the server stopped")
        self.store.close()

    def notify(self) -> None:
        """Wake idle runners: a job was queued."""
        with self.work:
            self.work.notify_all()

    def runner_states(self) -> list[dict]:
        return [{"device": runner.device, "state": runner.state} for runner in self.runners]

    @property
    def ready(self) -> bool:
        return all(runner.state == "ready" for runner in self.runners)

    @property
    def can_run(self) -> bool:
        """False when every runner failed to load: nothing would ever run a job."""
        return any(not runner.state.startswith("failed") for runner in self.runners)

    def _renew_leases(self) -> None:
        interval = self.settings.lease_seconds / 3
        while not self.stopping.wait(interval):
            try:
                self.store.renew([runner.worker for runner in self.runners], self.settings.lease_seconds)
            except Exception:  # noqa: BLE001 - a locked database now and then must not end the heartbeat
                log.exception("lease renewal failed")
