"""`deepsound-rt serve --ray`: a local Ray instance on the CPU runs two dev-preset replicas behind
the same API; a replica killed mid-job sees its job taken up by the other one, not lost.

Slow (Ray and two replicas start in a minute or two on 2 cores), and part of `make test`."""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from deepsound_rt.io.sample import sample_clip_path
from serving_util import ServerProcess, read_events, submit, wait_for

TOKEN = "ray-token"


def pid_of(worker: str) -> int:
    return int(worker.split(":")[1])  # host:pid:device:tag


def test_two_replicas_serve_jobs_and_a_killed_replicas_job_is_retried(tmp_path):
    server = ServerProcess(tmp_path / "data", "--ray", "--replicas", 2, "--replica-cpus", 1, "--preset", "dev",
                           "--num-steps", 2, "--lease-seconds", 3, token=TOKEN, log=tmp_path / "ray.log").start()
    try:
        server.wait_ready(timeout_s=900)
        with httpx.Client(base_url=server.base) as anonymous:
            assert anonymous.get("/healthz").status_code == 200
            assert anonymous.get("/v1/jobs/" + "0" * 32).status_code == 401  # the token guards replicas too
        with server.client() as client, ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: submit(client, sample_clip_path(), judge="vad", duration=1.0),
                                    range(3)))
            assert [answer.status_code for answer in answers] == [202] * 3
            ids = [answer.json()["id"] for answer in answers]

            deadline = time.monotonic() + 600
            while True:  # both replicas at work at once (each one's first job also loads its MLLM)
                jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
                running = [job for job in jobs if job["status"] == "running"]
                if len({pid_of(job["worker"]) for job in running}) == 2:
                    break
                assert time.monotonic() < deadline, jobs
                time.sleep(0.05)
            victim = running[0]
            os.kill(pid_of(victim["worker"]), signal.SIGKILL)

            finished = [wait_for(client, job_id, timeout_s=600) for job_id in ids]
            assert [job["status"] for job in finished] == ["done"] * 3, finished
            retried = next(job for job in finished if job["id"] == victim["id"])
            assert retried["attempts"] == 2 and pid_of(retried["worker"]) != pid_of(victim["worker"])
            statuses = [event["data"] for event in read_events(client, victim["id"]) if event["event"] == "status"]
            assert statuses[-2]["retry_of"] == victim["worker"] and statuses[-1] == {"status": "done"}
            assert all(client.get(f"/v1/jobs/{job_id}/result").status_code == 200 for job_id in ids)
    finally:
        server.stop(signal.SIGTERM, timeout_s=120)
    assert "serving on" in server.log.read_text()
