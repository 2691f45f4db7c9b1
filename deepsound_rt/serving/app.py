"""The HTTP API and the page: ``create_app(settings)`` gives a FastAPI app that uvicorn serves on one
box and Ray Serve runs as each replica's ingress.

The app owns a :class:`~deepsound_rt.serving.runner.Service` (store, runners, heartbeat); its
lifespan starts it and stops it, re-queueing whatever was running.
"""
from __future__ import annotations

import base64
import contextlib
import hmac
import math
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import FastAPI, Form, Header, HTTPException, Path as PathParam, Response, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers

from ..errors import DeepSoundError, InputError
from ..io.video import MIN_DURATION_S, probe_video
from .runner import RESULT_AUDIO, RESULT_PLOT, RESULT_VIDEO, Service, client_message
from ..options import JUDGES, MODES, POSTPROCESSES, RunOptions, default_of
from .settings import MIB, ServeSettings, run_options
from .store import JOB_ID, TERMINAL, Job, QueueFull, new_job_id

JobId = Annotated[str, PathParam(pattern=JOB_ID.pattern, description="a job id, as POST /v1/jobs returned it")]
# Suffixes kept on stored uploads (FFmpeg guesses some containers by name); anything else: ".video".
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".ogv", ".flv"}
FORM_SLACK_BYTES = MIB  # multipart boundaries and the option fields, beyond the video itself
EVENT_POLL_S = 0.1
KEEPALIVE_S = 15.0
PAGE_FILES = {"page.js": "text/javascript", "page.css": "text/css"}


class JobForm(BaseModel):
    """``POST /v1/jobs``: the video and the run options (those of ``deepsound-rt run``)."""

    model_config = ConfigDict(extra="forbid")  # an unknown option is a 422, not silently ignored

    video: UploadFile
    mode: Literal[MODES] = default_of(RunOptions, "mode")
    postprocess: Literal[POSTPROCESSES] = default_of(RunOptions, "postprocess")
    judge: Literal[JUDGES] = default_of(RunOptions, "judge")
    prompt: str = Field(default_of(RunOptions, "prompt"), max_length=1000)
    negative_prompt: str = Field(default_of(RunOptions, "negative_prompt"), max_length=1000)
    duration: float | None = Field(default_of(RunOptions, "duration"), ge=MIN_DURATION_S,
                                   description="seconds of audio (default: the whole clip)")
    seed: int = Field(default_of(RunOptions, "seed"), description="noise seed, in [0, 2**63)")


def create_app(settings: ServeSettings) -> FastAPI:
    service = Service(settings)  # opens the store now: a data directory in use fails here, in one line

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.stop)

    app = FastAPI(title="deepsound-rt", version="1", lifespan=lifespan,
                  description="Video in, the same video with generated audio out, step by step (DeepSound-V1).")
    app.state.service = service  # for Ray Serve's autoscaling hook
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + FORM_SLACK_BYTES)
    app.add_middleware(TokenGuard, token=settings.token)  # outermost: no body is read before the token
    page = {name: (resources.files(__package__) / "page" / name).read_bytes() for name in ["index.html", *PAGE_FILES]}

    def existing(job_id: str) -> Job:
        job = service.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict:
        """The process is up (no token needed)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"])
    def readyz() -> JSONResponse:
        """200 once every device's models are loaded, else 503 with each runner's state."""
        return JSONResponse({"ready": service.ready, "runners": service.runner_states()},
                            status_code=200 if service.ready else 503)

    @app.get("/metrics", tags=["service"])
    def metrics() -> Response:
        """Prometheus text format: jobs by status, queue depth, step and job latency, memory."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/jobs", status_code=202, tags=["jobs"],
              responses={413: {"description": "upload or clip too large"}, 415: {"description": "not a video"},
                         422: {"description": "unknown or invalid option"}, 429: {"description": "queue full"}})
    def submit(form: Annotated[JobForm, Form()]) -> JSONResponse:
        """Queue a video; the answer's ``id`` names the job in every other call."""
        if not service.can_run:
            states = "; ".join(runner["state"] for runner in service.runner_states())
            raise HTTPException(503, f"no device can run jobs: {states}")
        if service.store.counts().get("queued", 0) >= settings.queue_size:
            raise _queue_full(service)  # before the upload is copied; checked again when queued
        filename = _display_name(form.video.filename)
        if form.video.size is not None and form.video.size > settings.max_upload_bytes:
            service.metrics.rejected.labels("too_large").inc()
            raise HTTPException(413, f"{filename}: upload larger than this server's limit of "
                                     f"{settings.max_upload_bytes / MIB:g} MiB")
        try:
            options = run_options(form.model_dump(exclude={"video"}))
        except DeepSoundError as error:
            raise HTTPException(422, str(error)) from None
        job_id = new_job_id()
        job_dir = service.store.job_dir(job_id)
        suffix = Path(filename).suffix.lower()
        input_name = "input" + (suffix if suffix in VIDEO_SUFFIXES else ".video")
        job_dir.mkdir()
        try:
            _save_upload(form.video, job_dir / input_name)
            _check_clip(service, job_dir, input_name, filename)
            service.store.insert(job_id, filename, input_name, options, settings.queue_size)
        except QueueFull:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise _queue_full(service) from None
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        service.notify()
        return JSONResponse({"id": job_id, "status": "queued"}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job_id}"})

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def status(job_id: JobId) -> dict:
        """Status, the steps finished so far (step, decision, seconds) and, on failure, the error."""
        return _describe(service, existing(job_id))

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"], response_class=Response,
             responses={200: {"content": {"text/event-stream": {}}}})
    def events(job_id: JobId,
               last_event_id: Annotated[str | None, Header()] = None) -> EventSourceResponse:
        """Server-Sent Events, from the job's first (or after ``Last-Event-ID``): ``status``, ``step``
        (started / finished with its decision) and ``progress`` (stage, completed, total). The
        stream ends after the final status."""
        existing(job_id)
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        return EventSourceResponse(_event_stream(service, job_id, after))

    @app.get("/v1/jobs/{job_id}/result", tags=["jobs"],
             responses={200: {"content": {"video/mp4": {}, "audio/wav": {}}}})
    def result(job_id: JobId, format: Literal["mp4", "wav"] = "mp4") -> FileResponse:
        """The video with its new audio (mp4), or the audio alone (``?format=wav``)."""
        job = _finished(existing(job_id))
        if format == "wav" and not job.has_audio:
            raise HTTPException(409, "this job's result has no audio (post-processing removed it)")
        name, media = (RESULT_AUDIO, "audio/wav") if format == "wav" else (RESULT_VIDEO, "video/mp4")
        download = f"{Path(job.filename).stem or 'result'}.deepsound.{format}"
        return FileResponse(service.store.job_dir(job.id) / name, media_type=media, filename=download,
                            content_disposition_type="inline")

    @app.get("/v1/jobs/{job_id}/plot.png", tags=["jobs"], responses={200: {"content": {"image/png": {}}}})
    def plot(job_id: JobId) -> FileResponse:
        """Video frames over the waveform and mel spectrogram of the result, each step's decision marked."""
        job = _finished(existing(job_id))
        return FileResponse(service.store.job_dir(job.id) / RESULT_PLOT, media_type="image/png")

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], status_code=204,
                responses={200: {"description": "queued job cancelled"},
                           202: {"description": "running job: cancel requested"}})
    def delete(job_id: JobId) -> Response:
        """Cancel a queued (200) or running (202) job; remove a finished job and its files (204)."""
        job = existing(job_id)
        if job.status in TERMINAL:
            service.store.delete(job_id)
            return Response(status_code=204)
        after = service.store.cancel(job_id)
        return JSONResponse({"id": job_id, "status": after, "cancel_requested": after == "running"},
                            status_code=202 if after == "running" else 200)

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page["index.html"])

    @app.get("/page/{name}", include_in_schema=False)
    def page_file(name: str) -> Response:
        if name not in PAGE_FILES:
            raise HTTPException(404, "no such file")
        return Response(page[name], media_type=PAGE_FILES[name])

    return app


# -- helpers -----------------------------------------------------------------------------------


def _display_name(filename: str | None) -> str:
    """The client's file name as we show it back (messages, download names): last path part,
    printable, no quotes, short."""
    name = os.path.basename((filename or "").replace("\\", "/"))
    name = "".join(ch for ch in name if ch.isprintable() and ch != '"')[:100]
    return name or "upload"


def _save_upload(upload: UploadFile, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.tmp")
    upload.file.seek(0)
    with open(temporary, "wb") as file:
        shutil.copyfileobj(upload.file, file, 1024 * 1024)
    os.replace(temporary, target)


def _check_clip(service: Service, job_dir: Path, input_name: str, filename: str) -> None:
    """415 for what is not a video (the CLI's message), 413 for a clip over the duration limit."""
    settings = service.settings
    try:
        probe = probe_video(job_dir / input_name)
    except InputError as error:
        service.metrics.rejected.labels("not_video").inc()
        raise HTTPException(415, client_message(error, job_dir, filename)) from None
    if probe.duration_s is None:
        service.metrics.rejected.labels("not_video").inc()
        raise HTTPException(415, f"{filename}: the container does not say how long the video is")
    if probe.duration_s > settings.max_clip_seconds:
        service.metrics.rejected.labels("too_long").inc()
        raise HTTPException(413, f"{filename}: {probe.duration_s:.2f} s is longer than this server's limit of "
                                 f"{settings.max_clip_seconds:g} s")


def _queue_full(service: Service) -> HTTPException:
    service.metrics.rejected.labels("queue_full").inc()
    mean = service.store.mean_recent_seconds()
    retry_after = max(1, math.ceil(mean)) if mean else 5  # about when a device frees up
    return HTTPException(429, f"the queue is full ({service.settings.queue_size} jobs waiting); retry later",
                         headers={"Retry-After": str(retry_after)})


def _finished(job: Job) -> Job:
    if job.status != "done":
        detail = f"job is {job.status}" + (f": {job.error}" if job.error else "")
        raise HTTPException(409, detail)
    return job


def _describe(service: Service, job: Job) -> dict:
    body = {"id": job.id, "status": job.status, "filename": job.filename, "options": job.options,
            "created_at": job.created, "started_at": job.started, "finished_at": job.finished,
            "attempts": job.attempts, "worker": job.worker, "steps": job.steps, "error": job.error}
    if job.status == "queued":
        body["queue_position"] = service.store.queue_position(job)
    if job.status == "done":
        base = f"/v1/jobs/{job.id}"
        body["result"] = {"video": f"{base}/result", "plot": f"{base}/plot.png",
                          "audio": f"{base}/result?format=wav" if job.has_audio else None}
    return body


async def _event_stream(service: Service, job_id: str, after: int):
    """The store's events for one job as SSE frames, polled, until the job has ended (or is gone)."""
    idle = 0.0
    while True:
        rows, status = await anyio.to_thread.run_sync(service.store.events_since, job_id, after)
        for event_id, kind, data in rows:
            yield format_sse_event(data_str=data, event=kind, id=str(event_id))
            after = event_id
        if status is None or status in TERMINAL:
            return
        idle = 0.0 if rows else idle + EVENT_POLL_S
        if idle >= KEEPALIVE_S:
            yield b": ping\n\n"
            idle = 0.0
        await anyio.sleep(EVENT_POLL_S)


# -- middleware (plain ASGI: they also guard /docs and answer before any body is read) -------------


class TokenGuard:
    """Every route but ``/healthz`` needs ``Authorization: Bearer TOKEN``; browsers may send the token
    as an HTTP Basic password (any user name), which they then repeat for the page's requests,
    its event stream and its media."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] == "/healthz":
            return await self.app(scope, receive, send)
        if self._authorized(Headers(scope=scope).get("authorization", "")):
            return await self.app(scope, receive, send)
        api = scope["path"].startswith("/v1/") or scope["path"] in ("/metrics", "/readyz")
        challenge = 'Bearer realm="deepsound-rt"' if api else 'Basic realm="deepsound-rt", charset="UTF-8"'
        response = JSONResponse({"detail": "missing or wrong token (send Authorization: Bearer TOKEN)"},
                                status_code=401, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                value = base64.b64decode(value, validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self.token.encode())


class _TooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"upload larger than this server's limit of {(limit - FORM_SLACK_BYTES) / MIB:g} MiB")


class BodyLimit:
    """413 for a request body over ``limit`` bytes: at once from its Content-Length, or as soon as a
    chunked body passes the limit (nothing beyond it is read or stored)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            error = _TooLarge(self.limit)
            response = JSONResponse({"detail": error.detail}, status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge(self.limit)  # FastAPI passes an HTTPException from the body through
            return message

        await self.app(scope, limited_receive, send)

