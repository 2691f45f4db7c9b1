"""`deepsound-rt serve` as a real process on a free loopback port, and an SSE reader, for the
serving tests."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TERMINAL = {"done", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``python -m deepsound_rt.cli serve ARGS`` with its output in ``log``; the checkout's package
    first on the path, so the tests run the code beside them."""

    def __init__(self, data_dir: Path, *args: str, token: str | None = None, log: Path):
        self.data_dir, self.args, self.token, self.log = data_dir, [str(a) for a in args], token, log
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        env.pop("DEEPSOUND_RT_TOKEN", None)
        command = [sys.executable, "-m", "deepsound_rt.cli", "serve", "--port", str(self.port),
                   "--data-dir", str(self.data_dir), *self.args] + (["--token", self.token] if self.token else [])
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                            start_new_session=True)
        return self

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60, **kwargs)

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited ({self.process.returncode}):\n{self.log_tail()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log_tail()}")

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        """Signal the server and wait for it; a server that does not stop is killed with its group."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """A real uvicorn server for ``app`` on a free loopback port, in this process; yields its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(60)


def submit(client: httpx.Client, video: Path, filename: str | None = None, **fields) -> httpx.Response:
    with open(video, "rb") as file:
        return client.post("/v1/jobs", files={"video": (filename or video.name, file, "video/mp4")},
                           data={name: str(value) for name, value in fields.items()})


def read_events(client: httpx.Client, job_id: str, last_event_id: int | None = None) -> list[dict]:
    """Every event of a job's stream until the server ends it: {id, event, data}."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    events, current = [], {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=300) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
    return events


def wait_for(client: httpx.Client, job_id: str, statuses=TERMINAL, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")
