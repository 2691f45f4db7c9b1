"""`deepsound-rt serve` as a real process on a loopback port (dev preset, two CPU runners, a token):
the API, live events, metrics, limits, the token, cancel/delete, and the page in a real browser."""
from __future__ import annotations

import base64
import io
import os
import shutil
import tempfile
import time

import av
import numpy as np
import pytest
import soundfile
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from deepsound_rt.cli import main
from deepsound_rt.options import EngineConfig
from deepsound_rt.io.sample import make_test_video, sample_clip_path
from deepsound_rt.serving import ServeSettings, create_app
from serving_util import TERMINAL, ServerProcess, read_events, serve_in_thread, submit, wait_for
from test_io import bad_inputs

TOKEN = "test-token-1234"
EULER_STEPS = 2
QUEUE_SIZE = 2
SAMPLE_RATE = 44100
ALL_STEPS = ["plan", "generate", "judge", "remove", "silence"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    process = ServerProcess(folder / "data", "--preset", "dev", "--num-steps", EULER_STEPS, "--devices", "cpu,cpu",
                            "--queue-size", QUEUE_SIZE, "--max-upload-mb", 1, "--max-clip-seconds", 9,
                            token=TOKEN, log=folder / "server.log").start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def metric(client, name: str, **labels) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(f"{name}{labels} not in /metrics")


def job_folders(server) -> set[str]:
    return {path.name for path in (server.data_dir / "jobs").iterdir()}


def test_only_healthz_is_open_without_the_token(server):
    import httpx

    with httpx.Client(base_url=server.base) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        for path in ("/readyz", "/metrics", "/v1/jobs/" + "0" * 32, "/docs", "/openapi.json"):
            answer = anonymous.get(path)
            assert answer.status_code == 401, path
            api = path.startswith("/v1/") or path in ("/readyz", "/metrics")
            assert answer.headers["www-authenticate"].startswith("Bearer" if api else "Basic"), path
        page = anonymous.get("/")
        assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic")  # browsers ask
        assert anonymous.get("/readyz", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert anonymous.post("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
        assert anonymous.get("/", headers={"Authorization": f"Basic {basic}"}).text.startswith("<!doctype html>")
        ready = anonymous.get("/readyz", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert ready == {"ready": True, "runners": [{"device": "cpu", "state": "ready"}] * 2}


def test_docs_and_openapi_describe_the_api(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/result",
            "/v1/jobs/{job_id}/plot.png", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    form = spec["components"]["schemas"]["JobForm"]
    assert form["additionalProperties"] is False
    assert set(form["properties"]) == {"video", "mode", "postprocess", "judge", "prompt", "negative_prompt",
                                       "duration", "seed"}


def test_a_job_runs_every_step_streams_events_and_gives_its_files(client, server):
    answer = submit(client, sample_clip_path(), judge="always", duration=1.5, seed=3)
    assert answer.status_code == 202
    job_id = answer.json()["id"]
    assert answer.json() == {"id": job_id, "status": "queued"}
    assert answer.headers["location"] == f"/v1/jobs/{job_id}"

    events = read_events(client, job_id)  # from the job's start until the server ends the stream
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "done" and job["error"] is None and job["attempts"] == 1
    assert job["options"] == {"mode": "s4", "postprocess": "rep", "judge": "always", "prompt": "",
                              "negative_prompt": "", "duration": 1.5, "seed": 3,
                              "window_overlap": 2.0, "seam": "crossfade"}  # the whole RunOptions, defaults too
    ids = [event["id"] for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    statuses = [event["data"]["status"] for event in events if event["event"] == "status"]
    assert statuses == ["queued", "running", "done"]
    step_events = [(e["data"]["step"], e["data"]["status"]) for e in events if e["event"] == "step"]
    assert step_events == [(step, status) for step in ALL_STEPS for status in ("started", "finished")]
    finished = [e["data"] for e in events if e["event"] == "step" and e["data"]["status"] == "finished"]
    assert job["steps"] == [{key: record[key] for key in ("step", "decision", "seconds")} for record in finished]
    assert [record["step"] for record in job["steps"]] == ALL_STEPS
    assert job["steps"][2]["decision"].startswith("voice-over")
    sampling = [e["data"] for e in events if e["event"] == "progress" and e["data"]["stage"] == "sampling"]
    assert [(p["completed"], p["total"]) for p in sampling] == [(n, EULER_STEPS) for n in range(EULER_STEPS + 1)]
    generate_at = [i for i, e in enumerate(events) if e["event"] == "step" and e["data"]["step"] == "generate"]
    progress_at = [i for i, e in enumerate(events) if e["event"] == "progress"]
    assert generate_at[0] < min(progress_at) and max(progress_at) < generate_at[1]  # progress is inside step 1

    resumed = read_events(client, job_id, last_event_id=ids[len(ids) // 2])
    assert [event["id"] for event in resumed] == ids[len(ids) // 2 + 1:]

    video = client.get(f"/v1/jobs/{job_id}/result")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(video.content)) as container:
        assert len(container.streams.video) == 1
        audio = container.streams.audio[0]
        assert audio.rate == SAMPLE_RATE and abs(float(audio.duration * audio.time_base) - 1.5) < 0.05
    wav = client.get(f"/v1/jobs/{job_id}/result", params={"format": "wav"})
    assert wav.headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(wav.content), dtype="float32")
    assert rate == SAMPLE_RATE and samples.shape == (round(1.5 * SAMPLE_RATE),) and np.abs(samples).max() > 0
    plot = client.get(f"/v1/jobs/{job_id}/plot.png")
    assert plot.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(plot.content)).size == (1000, 720)
    assert client.get(f"/v1/jobs/{job_id}/result", params={"format": "flac"}).status_code == 422

    assert metric(client, "deepsound_rt_step_seconds_count", step="generate") >= 1
    assert metric(client, "deepsound_rt_job_seconds_count", status="done") >= 1
    assert metric(client, "deepsound_rt_jobs", status="done") >= 1
    assert metric(client, "deepsound_rt_queue_depth") == 0
    assert metric(client, "process_resident_memory_bytes") > 100e6  # torch and two engines are loaded


def test_two_devices_run_two_jobs_at_once(client):
    ids = [submit(client, sample_clip_path(), judge="always", duration=1.0).json()["id"] for _ in range(2)]
    first, second = (wait_for(client, job_id) for job_id in ids)
    assert first["status"] == second["status"] == "done"
    assert first["worker"] != second["worker"]
    assert second["started_at"] < first["finished_at"] and first["started_at"] < second["finished_at"]


def test_a_clip_too_short_fails_with_its_reason_in_the_clients_words(client, tmp_path):
    short = make_test_video(tmp_path / "short.mp4", 0.5, 25, (160, 120))
    job = wait_for(client, submit(client, short, filename="holiday.mp4").json()["id"])
    assert job["status"] == "failed"
    assert job["error"].startswith("holiday.mp4: video is only ") and "at least 0.64 s is needed" in job["error"]
    assert "/" not in job["error"]  # no server path
    assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 409


@pytest.mark.parametrize("case", ["text", "wav"])
def test_what_is_not_video_gets_415_with_the_clis_message(client, server, tmp_path, capsys, case):
    good = make_test_video(tmp_path / "good.mp4", 1.0, 25, (96, 64))
    path, _ = bad_inputs(tmp_path, good)[case]
    assert main(["run", str(path), "-o", str(tmp_path / "out.mp4"), "--preset", "dev"]) == 2
    cli_line = capsys.readouterr().err.strip().splitlines()[-1].removeprefix("deepsound-rt: error: ")
    before = job_folders(server)
    answer = submit(client, path, filename="my clip" + path.suffix)
    assert answer.status_code == 415
    assert answer.json()["detail"] == cli_line.replace(str(path), "my clip" + path.suffix)
    assert job_folders(server) == before  # nothing of it stays on the server


def test_limits_answer_413(client, server, tmp_path):
    before = job_folders(server)
    long_clip = make_test_video(tmp_path / "long.mp4", 10.0, 25, (64, 48))  # limit: 9 s; tiny in bytes
    answer = submit(client, long_clip)
    assert answer.status_code == 413 and "10.00 s is longer than this server's limit of 9 s" in answer.json()["detail"]

    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(3 * 1024 * 1024))  # limit: 1 MiB
    answer = submit(client, big)
    assert answer.status_code == 413 and "1 MiB" in answer.json()["detail"]

    def chunked():  # no Content-Length: the server counts as it reads
        yield b"--b\r\nContent-Disposition: form-data; name=\"video\"; filename=\"x.mp4\"\r\n\r\n"
        for _ in range(3 * 16):
            yield os.urandom(64 * 1024)
        yield b"\r\n--b--\r\n"

    answer = client.post("/v1/jobs", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 413
    assert job_folders(server) == before
    assert metric(client, "deepsound_rt_rejected_total", reason="too_long") >= 1


def test_unknown_or_invalid_options_get_422(client):
    for fields in ({"voice": "loud"}, {"mode": "s9"}, {"judge": "maybe"}, {"seed": "-1"}, {"duration": "0.1"}):
        answer = submit(client, sample_clip_path(), **fields)
        assert answer.status_code == 422, fields
        assert next(iter(fields)) in str(answer.json()["detail"])
    assert client.post("/v1/jobs", data={"mode": "s4"}).status_code == 422  # no video


def test_ids_are_checked_before_any_lookup(client):
    assert client.get("/v1/jobs/not-an-id").status_code == 422
    assert client.get("/v1/jobs/" + "ab" * 15 + "..").status_code == 422
    assert client.get("/v1/jobs/" + "0" * 32).status_code == 404
    assert client.delete("/v1/jobs/" + "0" * 32).status_code == 404


def test_a_full_queue_answers_429_then_cancel_and_delete(client, server):
    accepted, refused = [], []
    for _ in range(2 + QUEUE_SIZE + 2):  # two runners busy, the queue full, and then some
        answer = submit(client, sample_clip_path(), judge="always")  # 8 s clips: seconds per job
        (accepted if answer.status_code == 202 else refused).append(answer)
    assert len(accepted) >= QUEUE_SIZE and refused
    for answer in refused:
        assert answer.status_code == 429 and "queue is full" in answer.json()["detail"]
        assert int(answer.headers["retry-after"]) >= 1
    assert metric(client, "deepsound_rt_rejected_total", reason="queue_full") >= len(refused)
    assert metric(client, "deepsound_rt_queue_depth") <= QUEUE_SIZE

    ids = [answer.json()["id"] for answer in accepted]
    codes = {}
    for job_id in reversed(ids):  # the queued ones first: they cannot start meanwhile
        answer = client.delete(f"/v1/jobs/{job_id}")
        codes[job_id] = answer.status_code
        assert answer.json()["status"] == {200: "cancelled", 202: "running"}[answer.status_code]
    jobs = [wait_for(client, job_id) for job_id in ids]
    assert all(job["status"] == "cancelled" and job["error"] == "cancelled by request" for job in jobs)
    assert 202 in codes.values() and 200 in codes.values()  # running ones stop at their next check

    assert client.delete(f"/v1/jobs/{ids[0]}").status_code == 204  # a finished job: its files go
    assert client.get(f"/v1/jobs/{ids[0]}").status_code == 404
    assert ids[0] not in job_folders(server)


def test_the_page_runs_a_job_in_a_real_browser(server):
    """Debian's chromium through its chromedriver: upload the sample clip, watch the steps arrive,
    play the result. The token travels as HTTP Basic credentials, as a person would type them."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing; `make test` installs them")
        pytest.skip("chromium/chromedriver not installed (`make browser` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,1600", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        browser.get(server.base.replace("http://", f"http://user:{TOKEN}@") + "/")
        browser.find_element(By.ID, "video").send_keys(str(sample_clip_path()))
        Select(browser.find_element(By.ID, "judge")).select_by_value("always")
        browser.find_element(By.ID, "duration").send_keys("1.5")
        browser.find_element(By.ID, "submit").click()
        seen_running = []

        def finished(driver):
            status = driver.find_element(By.ID, "status").text
            if status == "running":
                seen_running.append(len(driver.find_elements(By.CSS_SELECTOR, "#steps li")))
            return status in TERMINAL or status.startswith("refused")

        WebDriverWait(browser, 180, poll_frequency=0.1).until(finished)
        assert browser.find_element(By.ID, "status").text == "done", browser.find_element(By.ID, "error").text
        assert max(seen_running, default=0) >= 1  # steps arrived while the job still ran
        steps = [item.text.split()[0] for item in browser.find_elements(By.CSS_SELECTOR, "#steps li")]
        assert steps == ALL_STEPS
        WebDriverWait(browser, 60).until(lambda driver: driver.execute_script(
            "const v = document.getElementById('player'), p = document.getElementById('plot');"
            "return v.readyState >= 1 && v.duration > 0 && p.complete && p.naturalWidth > 0"))
        player = browser.execute_script(
            "const v = document.getElementById('player'), a = document.getElementById('audio');"
            "return [v.currentSrc, v.duration, v.error, a.duration]")
        source, video_seconds, error, audio_seconds = player
        assert source.endswith("/result") and video_seconds > 1.4 and error is None
        assert audio_seconds == pytest.approx(1.5, abs=0.01)
        assert browser.execute_script("return document.getElementById('plot').naturalWidth") == 1000
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_serve_without_a_token_listens_on_loopback_only(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("DEEPSOUND_RT_TOKEN", raising=False)
    code = main(["serve", "--host", "0.0.0.0", "--preset", "dev", "--device", "cpu", "--data-dir", str(tmp_path)])
    assert code == 2
    assert "without a token the server listens on 127.0.0.1 only" in capsys.readouterr().err
    assert not (tmp_path / "jobs.sqlite3").exists()


def test_a_second_server_on_the_same_data_dir_is_refused(server, capsys):
    code = main(["serve", "--preset", "dev", "--device", "cpu", "--data-dir", str(server.data_dir), "--port", "1"])
    assert code == 2
    assert "another deepsound-rt server uses this data directory" in capsys.readouterr().err


def test_a_device_that_cannot_load_its_models_is_reported(tmp_path):
    import httpx

    settings = ServeSettings(engine=EngineConfig(preset="small_16k"), data_dir=tmp_path, devices=("cpu",))
    with serve_in_thread(create_app(settings)) as base, httpx.Client(base_url=base) as client:
        for _ in range(600):
            ready = client.get("/readyz")
            if ready.json()["runners"][0]["state"] != "loading":
                break
            time.sleep(0.1)
        assert ready.status_code == 503
        (runner,) = ready.json()["runners"]
        assert runner["state"].startswith("failed: ") and "--weights" in runner["state"]
        answer = submit(client, sample_clip_path())
        assert answer.status_code == 503 and answer.json()["detail"] == f"no device can run jobs: {runner['state']}"
