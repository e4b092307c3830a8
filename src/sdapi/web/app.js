// sdapi playground. Plain JS, no build step. It talks only to this server's /api/v3 routes;
// the API key lives in localStorage and travels only in those requests' bodies.
"use strict";

const KEY_STORE = "sdapi.playground.key";
const LOAD_EVERY_MS = 5000;
const GALLERY_LIMIT = 24;
const NUMBER_FIELDS = ["width", "height", "samples", "num_inference_steps", "guidance_scale"];

const $ = (id) => document.getElementById(id);
const job = { id: null, timer: null, prompt: "" };

// ---- the API -------------------------------------------------------------------------------

// Every answer is JSON with a `status`, even errors (HTTP 200 by default, 4xx with
// --http-errors); a network failure becomes an answer of the same shape.
async function api(path, body = {}) {
  const key = $("key").value.trim();
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...body, key }),
      cache: "no-store",
    });
  } catch (err) {
    return { status: "error", message: `Cannot reach the server: ${err.message}` };
  }
  try {
    return await response.json();
  } catch {
    return { status: "error", message: `HTTP ${response.status}: the answer was not JSON` };
  }
}

function messageOf(answer) {
  const text = answer.message ?? answer.error ?? "Unknown error";
  return typeof text === "string" ? text : JSON.stringify(text);
}

// ---- the key -------------------------------------------------------------------------------

function setupKey() {
  const input = $("key");
  input.value = localStorage.getItem(KEY_STORE) ?? "";
  let debounce = null;
  input.addEventListener("input", () => {
    localStorage.setItem(KEY_STORE, input.value.trim());
    clearTimeout(debounce);
    debounce = setTimeout(refreshAll, 400);
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault(); // Enter in the key field refreshes, never reloads the page
    refreshAll();
  });
  $("key-show").addEventListener("click", () => {
    const shown = input.type === "text";
    input.type = shown ? "password" : "text";
    $("key-show").textContent = shown ? "Show" : "Hide";
    $("key-show").setAttribute("aria-pressed", String(!shown));
  });
  $("key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    input.value = "";
    refreshAll();
  });
}

const hasKey = () => $("key").value.trim() !== "";

// ---- the form ------------------------------------------------------------------------------

function selectedTask() {
  return $("gen-form").elements.task.value;
}

function showTaskFields() {
  const task = selectedTask();
  for (const el of document.querySelectorAll("[data-tasks]")) {
    el.hidden = !el.dataset.tasks.split(" ").includes(task);
  }
}

function readFile(input) {
  const file = input.files[0];
  if (!file) return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result); // a data URI, which the API accepts
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// The body as typed; the server does all validation, so its messages are the only ones shown.
async function requestBody(task) {
  const form = $("gen-form").elements;
  const body = {
    prompt: form.prompt.value,
    negative_prompt: form.negative_prompt.value,
    instant_response: true, // answer at once; the job panel polls fetch for progress
  };
  const numbers = [...NUMBER_FIELDS, "seed", ...(task === "text2img" ? [] : ["strength"])];
  for (const name of numbers) {
    const raw = form[name].value.trim();
    if (raw !== "") body[name] = Number.isFinite(Number(raw)) ? Number(raw) : raw;
  }
  if (form.scheduler.value) body.scheduler = form.scheduler.value;
  if (task !== "text2img") body.init_image = await readFile(form.init_image);
  if (task === "inpaint") body.mask_image = await readFile(form.mask_image);
  return body;
}

function clearErrors() {
  $("error").hidden = true;
  $("error").replaceChildren();
  for (const slot of document.querySelectorAll("[data-error-for]")) {
    slot.hidden = true;
    slot.textContent = "";
    $(slot.dataset.errorFor)?.removeAttribute("aria-invalid");
  }
}

// Validation answers carry {field: [messages]}: each goes next to its field, all in the box.
function showError(answer, title = "The server refused the request") {
  clearErrors();
  const box = $("error");
  const heading = document.createElement("strong");
  const list = document.createElement("ul");
  const message = answer.message ?? answer.error;
  if (message && typeof message === "object") {
    heading.textContent = "Please fix the highlighted fields:";
    for (const [field, texts] of Object.entries(message)) {
      const lines = Array.isArray(texts) ? texts.map(String) : [String(texts)];
      markField(field, lines.join(" "));
      for (const line of lines) list.append(item(line));
    }
  } else {
    heading.textContent = `${title}: ${messageOf(answer)}`;
    if (answer.detail) list.append(item(answer.detail));
  }
  box.append(heading);
  if (list.childElementCount) box.append(list);
  box.hidden = false;
}

function markField(field, text) {
  const slot = document.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
  if (!slot) return;
  slot.textContent = text;
  slot.hidden = false;
  $(field)?.setAttribute("aria-invalid", "true");
}

function item(text) {
  const li = document.createElement("li");
  li.textContent = text;
  return li;
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  if (!hasKey()) {
    showError({ message: "Enter your API key first." }, "No key");
    $("key").focus();
    return;
  }
  const task = selectedTask();
  $("generate").disabled = true;
  try {
    const body = await requestBody(task);
    const answer = await api(`/api/v3/${task}`, body);
    if (answer.status === "processing" || answer.status === "success") {
      startJob(answer, body.prompt);
    } else {
      showError(answer);
      $("generate").disabled = false;
    }
  } catch (err) {
    showError({ message: `Could not read the image file: ${err.message}` }, "Error");
    $("generate").disabled = false;
  }
}

// ---- the job panel -------------------------------------------------------------------------

function startJob(answer, prompt) {
  clearTimeout(job.timer);
  job.id = answer.id;
  job.prompt = prompt;
  $("job-id").textContent = `#${answer.id}`;
  $("result").replaceChildren();
  $("cancel").disabled = false;
  onAnswer(answer);
}

function onAnswer(answer) {
  showJobState(answer);
  if (answer.status === "processing") {
    // Poll about twice per expected wait, within sensible bounds.
    const wait = Math.min(2000, Math.max(300, (answer.eta ?? 1) * 500));
    job.timer = setTimeout(poll, wait, job.id);
    return;
  }
  finishJob(answer);
}

async function poll(id) {
  const answer = await api(`/api/v3/fetch/${id}`);
  if (id === job.id) onAnswer(answer); // a newer job owns the panel otherwise
}

function showJobState(answer) {
  const status = $("job-status");
  status.dataset.status = answer.status;
  const queued = answer.queue_position != null;
  const progress = answer.status === "success" ? 1 : (answer.progress ?? 0);
  status.textContent = statusText(answer, queued);
  $("job-position").textContent = queued ? String(answer.queue_position) : "–";
  $("job-progress").value = progress;
  $("job-percent").textContent = `${Math.round(progress * 100)}%`;
  const running = answer.status === "processing";
  $("job-eta").textContent = running && answer.eta != null ? formatSeconds(answer.eta) : "–";
}

function statusText(answer, queued) {
  switch (answer.status) {
    case "processing":
      return queued ? "Queued: waiting for a worker." : "Generating…";
    case "success":
      return `Done in ${formatSeconds(answer.generationTime ?? 0)}.`;
    case "cancelled":
      return "Cancelled.";
    case "failed":
      return `Failed: ${answer.error ?? messageOf(answer)}`;
    default:
      return `Error: ${messageOf(answer)}`;
  }
}

function finishJob(answer) {
  $("cancel").disabled = true;
  $("generate").disabled = false;
  if (answer.status === "success") {
    $("result").replaceChildren(
      ...answer.output.map((url, i) => figure(url, `Result ${i + 1}: ${job.prompt}`, "result-image")),
    );
  }
  refreshGallery();
  refreshLoad();
}

async function cancel() {
  if (job.id == null) return;
  $("cancel").disabled = true;
  const answer = await api(`/api/v3/cancel/${job.id}`);
  if (answer.status !== "success") showError(answer, "Could not cancel");
  // The polling loop sees the job end and updates the panel.
}

function formatSeconds(seconds) {
  return seconds < 10 ? `${Number(seconds).toFixed(1)} s` : `${Math.round(seconds)} s`;
}

// ---- images, the gallery and the queue's load ----------------------------------------------

function figure(url, caption, testid) {
  const fig = document.createElement("figure");
  const link = document.createElement("a");
  link.href = url;
  link.target = "_blank";
  link.rel = "noopener noreferrer";
  const img = document.createElement("img");
  img.src = url;
  img.alt = caption;
  // The gallery may grow long; the job's own result must load at once.
  if (testid === "gallery-image") img.loading = "lazy";
  img.dataset.testid = testid;
  link.append(img);
  const text = document.createElement("figcaption");
  text.textContent = caption;
  fig.append(link, text);
  return fig;
}

async function refreshGallery() {
  const status = $("gallery-status");
  if (!hasKey()) {
    $("gallery").replaceChildren();
    status.textContent = "Enter your API key to see your recent images.";
    return;
  }
  const answer = await api("/api/v3/jobs", { limit: GALLERY_LIMIT });
  if (answer.status !== "success") {
    status.textContent = `Could not list your jobs: ${messageOf(answer)}`;
    return;
  }
  const figures = answer.jobs.flatMap((j) =>
    j.output.map((url) => figure(url, `#${j.id} · ${j.width}×${j.height} · ${j.prompt}`, "gallery-image")),
  );
  $("gallery").replaceChildren(...figures);
  status.textContent = figures.length ? "" : "No images yet.";
}

async function refreshLoad() {
  const num = $("queue-num");
  const time = $("queue-time");
  if (!hasKey()) {
    num.textContent = time.textContent = "–";
    return;
  }
  const answer = await api("/api/v3/system_load");
  if (answer.status !== "ok") {
    num.textContent = time.textContent = "–";
    $("queue-load").title = messageOf(answer);
    return;
  }
  num.textContent = String(answer.queue_num);
  time.textContent = formatSeconds(answer.queue_time ?? 0);
  $("queue-load").title = "Jobs queued or running on this server";
}

function refreshAll() {
  refreshLoad();
  refreshGallery();
}

// ---- start ---------------------------------------------------------------------------------

function start() {
  setupKey();
  showTaskFields();
  $("gen-form").addEventListener("change", (e) => e.target.name === "task" && showTaskFields());
  $("gen-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("gallery-refresh").addEventListener("click", refreshGallery);
  refreshAll();
  setInterval(refreshLoad, LOAD_EVERY_MS);
}

start();
