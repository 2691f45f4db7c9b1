"""Load test of `deepsound-rt serve` on one box: a bounded number of jobs from a few concurrent
clients against a local server, and a check that none is lost.

The server runs as its own process (the CLI, on a free loopback port). Each client submits its
share of the jobs one after another, waits out ``Retry-After`` when the queue is full (a 429,
counted), then waits for its jobs. Recorded: jobs per minute (first submit to last finish), job
latency p50/p95 (first submit attempt to the server's finish time; same clock), queue-full answers,
and the server's resident memory when ready and after the last job. Every accepted job must end
``done`` with its result file, or ``failed`` with a reason; anything else counts as lost and makes
the run fail.

Example (the checked-in result):
    python benchmarks/bench_serve.py --jobs 20 --clients 4 --out benchmarks/results/cpu-epyc-2core
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "deepsound_rt" / "assets" / "sample.mp4"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resident_bytes(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1])
    raise RuntimeError("/metrics has no process_resident_memory_bytes")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class Client(threading.Thread):
    def __init__(self, base: str, jobs: int, fields: dict, deadline: float):
        super().__init__()
        self.base, self.jobs, self.fields, self.deadline = base, jobs, fields, deadline
        self.accepted: list[tuple[str, float]] = []  # (id, first attempt time)
        self.queue_full = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base, timeout=120) as client:
                for _ in range(self.jobs):
                    first_attempt = time.time()
                    while time.time() < self.deadline:
                        with open(SAMPLE, "rb") as video:
                            answer = client.post("/v1/jobs", files={"video": ("sample.mp4", video, "video/mp4")},
                                                 data=self.fields)
                        if answer.status_code == 429:
                            self.queue_full += 1
                            time.sleep(int(answer.headers["retry-after"]))
                            continue
                        answer.raise_for_status()
                        self.accepted.append((answer.json()["id"], first_attempt))
                        break
        except Exception as error:  # noqa: BLE001 - reported in the result
            self.error = f"{type(error).__name__}: {error}"


def run(args: argparse.Namespace) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_args = ["--preset", "dev", "--devices", args.devices, "--queue-size", str(args.queue_size),
                  "--num-steps", str(args.num_steps)]
    command = [sys.executable, "-m", "deepsound_rt.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
               *serve_args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log = open(data_dir / "server.log", "wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            deadline = time.monotonic() + 600
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not get ready; see {data_dir / 'server.log'}")
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            memory_ready = resident_bytes(client)

            fields = {"judge": args.judge, "duration": str(args.duration)}
            stop_at = time.time() + args.timeout
            shares = [args.jobs // args.clients + (index < args.jobs % args.clients) for index in range(args.clients)]
            clients = [Client(base, share, fields, stop_at) for share in shares]
            started = time.time()
            for each in clients:
                each.start()
            for each in clients:
                each.join()
            accepted = [job for each in clients for job in each.accepted]
            finished: dict[str, dict] = {}
            while len(finished) < len(accepted) and time.time() < stop_at:
                for job_id, _ in accepted:
                    if job_id not in finished:
                        job = client.get(f"/v1/jobs/{job_id}").json()
                        if job["status"] in ("done", "failed", "cancelled"):
                            finished[job_id] = job
                time.sleep(0.2)
            memory_after = resident_bytes(client)

            done = failed_with_reason = 0
            latencies, run_times = [], []
            for job_id, first_attempt in accepted:
                job = finished.get(job_id)
                if job is None:
                    continue
                if job["status"] == "done":
                    result = client.get(f"/v1/jobs/{job_id}/result")
                    if result.status_code == 200 and len(result.content) > 0:
                        done += 1
                        latencies.append(job["finished_at"] - first_attempt)
                        run_times.append(job["finished_at"] - job["started_at"])
                elif job["status"] == "failed" and job["error"]:
                    failed_with_reason += 1
            last_finish = max((job["finished_at"] for job in finished.values()), default=started)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()

    lost = len(accepted) - done - failed_with_reason
    return {
        "command": "python benchmarks/bench_serve.py " + shlex.join(sys.argv[1:]),
        "server": shlex.join(["deepsound-rt", "serve", *serve_args]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "jobs": args.jobs, "clients": args.clients, "clip_seconds": args.duration, "judge": args.judge,
        "devices": args.devices, "queue_size": args.queue_size, "euler_steps": args.num_steps,
        "accepted": len(accepted), "done": done, "failed_with_reason": failed_with_reason, "lost": lost,
        "queue_full_answers": sum(each.queue_full for each in clients),
        "client_errors": [each.error for each in clients if each.error],
        "wall_seconds": last_finish - started,
        "jobs_per_minute": 60 * done / (last_finish - started) if done else 0.0,
        "latency_p50_s": percentile(latencies, 0.5) if latencies else None,
        "latency_p95_s": percentile(latencies, 0.95) if latencies else None,
        "latency_mean_s": statistics.fmean(latencies) if latencies else None,
        "run_p50_s": percentile(run_times, 0.5) if run_times else None,
        "rss_ready_mib": memory_ready / 2**20, "rss_after_mib": memory_after / 2**20,
        "load_average_5min_at_end": os.getloadavg()[1],  # the cores are shared: how busy they were
    }


def markdown(result: dict) -> str:
    rows = [
        ("jobs (clients)", f"{result['jobs']} ({result['clients']})"),
        ("done / failed with a reason / lost", f"{result['done']} / {result['failed_with_reason']} / {result['lost']}"),
        ("jobs per minute", f"{result['jobs_per_minute']:.1f}"),
        ("job latency p50 / p95 (submit to done)",
         f"{result['latency_p50_s']:.1f} s / {result['latency_p95_s']:.1f} s"),
        ("run time p50 (start to done)", f"{result['run_p50_s']:.1f} s"),
        ("queue-full answers (429)", str(result["queue_full_answers"])),
        ("server memory ready → after", f"{result['rss_ready_mib']:.0f} → {result['rss_after_mib']:.0f} MiB"),
    ]
    lines = [f"`{result['command']}` ({result['date']}, {result['machine']}; server: `{result['server']}`, "
             f"{result['clip_seconds']:g} s clips, judge {result['judge']}; load average "
             f"{result['load_average_5min_at_end']:.1f} at the end)", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of audio per job")
    parser.add_argument("--judge", default="always", help="always: every job runs every step")
    parser.add_argument("--devices", default="cpu", help="the server's runners (default: one CPU runner)")
    parser.add_argument("--queue-size", type=int, default=4, help="small, so that the clients meet 429s")
    parser.add_argument("--num-steps", type=int, default=25, help="Euler steps")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    parser.add_argument("--out", type=Path, help="write bench_serve.json and bench_serve.md here")
    args = parser.parse_args(argv)
    result = run(args)
    text = markdown(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_serve.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "bench_serve.md").write_text(text)
    if result["lost"] or result["client_errors"]:
        print(f"LOST {result['lost']} job(s); client errors: {result['client_errors']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
