"""Jobs are not lost: a server killed mid-job, then started again on the same data directory, runs
the job it was running and the ones still queued; a server stopped politely puts its job back."""
from __future__ import annotations

import signal
import sqlite3

from deepsound_rt.io.sample import sample_clip_path
from serving_util import ServerProcess, submit, wait_for

ARGS = ("--preset", "dev", "--num-steps", 2, "--devices", "cpu")


def store_rows(data_dir) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(data_dir / "jobs.sqlite3") as db:
        return {job_id: (status, attempts) for job_id, status, attempts
                in db.execute("SELECT id, status, attempts FROM jobs")}


def test_killed_then_restarted_server_runs_every_job(tmp_path):
    data = tmp_path / "data"
    first = ServerProcess(data, *ARGS, log=tmp_path / "first.log").start()
    try:
        first.wait_ready()
        with first.client() as client:
            ids = [submit(client, sample_clip_path(), judge="vad", duration=1.0).json()["id"] for _ in range(2)]
            wait_for(client, ids[0], statuses={"running"})  # its first step loads the MLLM: seconds to go
    finally:
        first.stop(signal.SIGKILL)  # a crash: nothing is cleaned up
    at_crash = store_rows(data)
    assert at_crash == {ids[0]: ("running", 1), ids[1]: ("queued", 0)}

    second = ServerProcess(data, *ARGS, log=tmp_path / "second.log").start()
    try:
        second.wait_ready()
        with second.client() as client:
            jobs = [wait_for(client, job_id) for job_id in ids]
            assert [job["status"] for job in jobs] == ["done"] * 2
            assert [job["attempts"] for job in jobs] == [2, 1]
            assert all(client.get(f"/v1/jobs/{job_id}/result").status_code == 200 for job_id in ids)
            events = client.get(f"/v1/jobs/{ids[0]}/events").text
            assert '"reason": "the server restarted"' in events and '"attempt": 2' in events

            # A polite stop (SIGTERM) puts the running job back in the queue.
            last = submit(client, sample_clip_path(), judge="vad").json()["id"]  # 8 s: many checks to stop at
            wait_for(client, last, statuses={"running"})
    finally:
        second.stop(signal.SIGTERM)  # uvicorn shuts down, then ends by the signal it caught
    assert "Application shutdown complete" in second.log_tail()
    assert store_rows(data)[last] == ("queued", 0)  # an orderly stop is not one of its attempts
