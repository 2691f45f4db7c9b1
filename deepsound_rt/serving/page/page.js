// The page's whole logic: submit the form, follow the job's event stream, show the result.
// Same-origin requests only; with a token the browser repeats its Basic credentials itself.
"use strict";

const $ = (id) => document.getElementById(id);
// Absolute URLs from the origin: a page opened as http://user:token@host/ must not pass its
// credentials on in request URLs (fetch refuses those); the browser sends them from its cache.
const url = (path) => new URL(path, location.origin).href;
const OPTIONS = ["mode", "judge", "postprocess", "prompt", "negative_prompt", "duration", "seed"];
const TERMINAL = new Set(["done", "failed", "cancelled"]);
let source = null;

function describeError(detail) {
  if (Array.isArray(detail)) {  // FastAPI's validation errors: one per field
    return detail.map((item) => `${item.loc[item.loc.length - 1]}: ${item.msg}`).join("; ");
  }
  return String(detail);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(status) {
  $("status").textContent = status;
  $("status").className = `status ${status}`;
  $("cancel").hidden = TERMINAL.has(status);
}

function stepStarted(step) {
  const item = document.createElement("li");
  item.dataset.step = step;
  item.className = "running";
  item.innerHTML = `<b></b> <span class="decision">running…</span> <span class="seconds"></span>`;
  item.querySelector("b").textContent = step;
  $("steps").appendChild(item);
}

function stepFinished(record) {
  const running = [...$("steps").querySelectorAll("li.running")].filter((li) => li.dataset.step === record.step);
  let item = running[running.length - 1];
  if (!item) {
    stepStarted(record.step);
    item = $("steps").lastElementChild;
  }
  item.className = "finished";
  item.querySelector(".decision").textContent = record.decision;
  item.querySelector(".seconds").textContent = `${record.seconds.toFixed(2)} s`;
}

function note(text) {
  const item = document.createElement("li");
  item.className = "note";
  item.textContent = text;
  $("steps").appendChild(item);
}

async function showResult(id) {
  const job = await (await fetch(url(`/v1/jobs/${id}`))).json();
  $("result").hidden = false;
  $("player").src = url(job.result.video);
  $("audio").hidden = !job.result.audio;
  if (job.result.audio) $("audio").src = url(job.result.audio);
  $("plot").src = url(job.result.plot);
  $("links").innerHTML = "";
  for (const [label, href] of [["video (mp4)", job.result.video], ["audio (wav)", job.result.audio],
                               ["picture (png)", job.result.plot]]) {
    if (!href) continue;
    const link = document.createElement("a");
    link.href = url(href);
    link.textContent = label;
    link.download = "";
    $("links").append(link, " ");
  }
}

function follow(id) {
  if (source) source.close();
  source = new EventSource(url(`/v1/jobs/${id}/events`));
  source.addEventListener("status", (event) => {
    const data = JSON.parse(event.data);
    setStatus(data.status);
    if (data.reason) note(`back in the queue: ${data.reason}`);
    if (data.status === "running" && data.attempt > 1) note(`attempt ${data.attempt}`);
    if (TERMINAL.has(data.status)) {
      source.close();  // the server ends the stream; without this the browser would reconnect
      $("progress").hidden = true;
      if (data.error) showError(data.error);
      if (data.status === "done") showResult(id);
    }
  });
  source.addEventListener("step", (event) => {
    const data = JSON.parse(event.data);
    if (data.status === "started") stepStarted(data.step);
    else stepFinished(data);
  });
  source.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    $("progress").hidden = false;
    $("stage").textContent = `${data.stage} ${data.completed}/${data.total}`;
    $("stage-bar").max = data.total;
    $("stage-bar").value = data.completed;
  });
}

$("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData();
  form.append("video", $("video").files[0]);
  for (const name of OPTIONS) {
    const value = $(name).value.trim();
    if (value !== "") form.append(name, value);
  }
  $("submit").disabled = true;
  $("job").hidden = false;
  $("result").hidden = true;
  $("steps").innerHTML = "";
  showError("");
  try {
    const response = await fetch(url("/v1/jobs"), { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      setStatus(`refused (${response.status})`);
      showError(describeError(body.detail));
      return;
    }
    $("job-id").textContent = body.id;
    $("cancel").dataset.id = body.id;
    setStatus(body.status);
    follow(body.id);
  } catch (error) {
    showError(`cannot reach the server: ${error}`);
  } finally {
    $("submit").disabled = false;
  }
});

$("cancel").addEventListener("click", async () => {
  const response = await fetch(url(`/v1/jobs/${$("cancel").dataset.id}`), { method: "DELETE" });
  if (!response.ok) showError(describeError((await response.json()).detail));
});
