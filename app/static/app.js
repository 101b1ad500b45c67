// digitgen page: pick parameters, watch the denoising arrive over
// Server-Sent Events (GET /generate/stream), download the PNG or GIF.
// No build step, no dependencies.
"use strict";

const $ = (sel) => document.querySelector(sel);
const png = (b64) => "data:image/png;base64," + b64;
const ui = {
  form: $("#controls"), digits: $("#digits"), model: $("#model"), steps: $("#steps"), scheduler: $("#scheduler"),
  guidance: $("#guidance"), seed: $("#seed"), every: $("#every"), go: $("#go"), stop: $("#stop"),
  xt: $("#xt"), x0: $("#x0"), progress: $("#progress"), status: $("#status"), error: $("#error"),
  viewer: $("#viewer"), result: $("#result"), final: $("#final"), meta: $("#result-meta"),
  dlSize: $("#dl-size"), dlPng: $("#dl-png"), dlGif: $("#dl-gif"), history: $("#history"),
  replay: $("#replay"), scrub: $("#scrub"), speed: $("#speed"), play: $("#play"),
};
let label = 5;
let source = null;   // the open EventSource
let last = null;     // parameters + seed of the last finished generation
let models = {};     // /info's description of each loaded model
let recorded = [];   // the frames of the current run: {step, total, timestep, x_t, x0}, the noise first
let player = null;   // the replay timer
const MODEL_NAMES = {fast: "Fast: distilled, a few steps", base: "Base: diffusion model"};
const SCHEDULER_NAMES = {dpm: "DPM-Solver++ (fast)", ddim: "DDIM (deterministic)", ddpm: "DDPM (stochastic)",
                         tcd: "TCD (consistency, keeps some of its noise)", lcm: "LCM (consistency, fresh noise)"};

function setState(state, text) {
  document.body.dataset.state = state;
  if (text !== undefined) ui.status.textContent = text;
  const busy = state === "queued" || state === "running";
  ui.go.disabled = busy;
  ui.stop.disabled = !busy;
}

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = !text;
}

function pickDigit(d) {
  label = d;
  for (const b of ui.digits.children) b.setAttribute("aria-checked", String(Number(b.dataset.digit) === d));
}

function params() {
  const p = {model: ui.model.value, label, steps: ui.steps.value, scheduler: ui.scheduler.value};
  if (!ui.guidance.disabled) p.guidance_scale = ui.guidance.value;
  if (ui.seed.value !== "") p.seed = ui.seed.value;
  return p;
}

function start() {
  stop(false);
  if (!ui.form.reportValidity()) return;
  const p = params();
  const query = new URLSearchParams({...p, every: ui.every.value});
  const url = "/generate/stream?" + query;
  let frames = 0, total = Number(p.steps), t0 = performance.now();
  showError("");
  ui.result.hidden = true;   // a new run: the old result and frames go
  ui.replay.hidden = true;
  stopReplay();
  recorded = [];
  ui.xt.removeAttribute("src");
  ui.x0.removeAttribute("src");
  ui.progress.value = 0;
  ui.viewer.dataset.frames = "0";
  setState("queued", "Waiting for a slot in the batch…");

  const es = source = new EventSource(url);
  es.addEventListener("start", (e) => {
    const d = JSON.parse(e.data);
    total = d.total;
    ui.xt.src = png(d.x_t);
    ui.x0.removeAttribute("src");
    recorded.push({step: 0, total: d.total, timestep: null, x_t: d.x_t, x0: null});
    ui.seed.placeholder = `random (this one: ${d.seed})`;
    setState("running", `Pure noise · seed ${d.seed} · ${d.scheduler}, ${d.total} steps`);
  });
  es.addEventListener("step", (e) => {
    const d = JSON.parse(e.data);
    ui.xt.src = png(d.x_t);
    ui.x0.src = png(d.x0);
    ui.progress.value = d.step / d.total;
    ui.viewer.dataset.frames = String(++frames);
    recorded.push(d);
    setState("running", `Step ${d.step} / ${d.total} · t = ${d.timestep}`);
  });
  es.addEventListener("done", (e) => {
    const d = JSON.parse(e.data);
    es.close();
    source = null;
    finish(d, performance.now() - t0);
  });
  es.addEventListener("error", (e) => {
    if (e.data) {  // the server's own `event: error`
      const d = JSON.parse(e.data);
      es.close();
      source = null;
      fail(`${d.status}: ${d.detail}`);
    } else if (es.readyState === EventSource.CLOSED) {  // refused before streaming (422, 503, ...)
      source = null;
      explain(url);
    } else {
      setState("queued", "Connection lost, reconnecting (the stream resumes where it stopped)…");
    }
  });
}

function finish(d, ms) {
  ui.final.src = png(d.image);
  ui.progress.value = 1;
  last = {model: d.model, label: d.label, steps: d.steps, scheduler: d.scheduler, guidance_scale: d.guidance_scale,
          seed: d.seed};
  ui.meta.textContent = `Digit ${d.label} · ${d.model} model · seed ${d.seed} · ${d.scheduler}, ${d.steps} steps, ` +
    `guidance ${d.guidance_scale} · ${(ms / 1000).toFixed(2)} s (queued ${(d.queue_ms / 1000).toFixed(2)} s)`;
  ui.result.hidden = false;
  ui.scrub.max = String(recorded.length - 1);
  ui.scrub.value = ui.scrub.max;
  ui.replay.hidden = recorded.length < 2;
  syncScrub();
  updateGifLink();
  addHistory(d);
  setState("done", `Done: a ${d.label} in ${d.steps} steps.`);
}

// Watching again: the frames of the finished run, one by one with the
// slider, or played back at a chosen speed.
function show(i) {
  const f = recorded[i];
  if (!f) return;
  ui.xt.src = png(f.x_t);
  if (f.x0) ui.x0.src = png(f.x0); else ui.x0.removeAttribute("src");
  ui.progress.value = f.step / f.total;
  ui.viewer.dataset.shown = String(i);
  setState(document.body.dataset.state, f.step === 0 ? "Pure noise" :
    `Step ${f.step} / ${f.total} · t = ${f.timestep}`);
}

function syncScrub() {
  $("#scrub-out").textContent = `${ui.scrub.value} / ${ui.scrub.max}`;
}

function stopReplay() {
  if (player) clearInterval(player);
  player = null;
  ui.play.textContent = "Replay";
}

function replay() {
  if (player) { stopReplay(); return; }
  let i = 0;
  ui.play.textContent = "Pause";
  ui.viewer.dataset.replayed = "0";
  player = setInterval(() => {
    ui.scrub.value = String(i);
    syncScrub();
    show(i);
    ui.viewer.dataset.replayed = String(Number(ui.viewer.dataset.replayed) + 1);
    if (++i >= recorded.length) stopReplay();
  }, 1000 / Number(ui.speed.value));
}

function fail(text) {
  showError(text);
  setState("error", "Failed.");
}

// EventSource hides HTTP errors; ask again with fetch to read the status and
// message, and drop the body if it turns out to stream after all.
async function explain(url) {
  const abort = new AbortController();
  try {
    const r = await fetch(url, {signal: abort.signal});
    if (r.ok) {
      abort.abort();
      return fail("The connection to the server was lost.");
    }
    let msg = r.statusText;
    try {
      const j = await r.json();
      msg = j.detail || msg;  // every error is a problem body: {status, code, detail, errors}
    } catch (_) { /* not JSON */ }
    const retry = r.headers.get("Retry-After");
    fail(`${r.status}: ${msg}${retry ? ` (retry in ${retry} s)` : ""}`);
  } catch (err) {
    fail(`The server cannot be reached (${err.message}).`);
  }
}

function stop(user = true) {
  if (source) {
    source.close();  // the server notices and takes the trajectory out of its batch
    source = null;
    if (user) setState("idle", "Stopped.");
  }
}

function query(extra) {
  return new URLSearchParams({...last, ...extra}).toString();
}

function updateGifLink() {
  if (!last) return;
  ui.dlGif.href = "/generate.gif?" + query({size: ui.dlSize.value});
  ui.dlGif.download = `digit-${last.label}-seed-${last.seed}.gif`;
}

async function downloadPng() {
  if (!last) return;
  ui.dlPng.disabled = true;
  try {
    const r = await fetch("/generate?" + query({size: ui.dlSize.value}), {method: "POST"});
    if (!r.ok) throw new Error(`${r.status}: ${(await r.json()).detail || r.statusText}`);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await r.blob());
    a.download = `digit-${last.label}-seed-${last.seed}.png`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (err) {
    showError(`Download failed: ${err.message}`);
  } finally {
    ui.dlPng.disabled = false;
  }
}

function addHistory(d) {
  const img = document.createElement("img");
  img.src = png(d.image);
  img.alt = `${d.label} (seed ${d.seed})`;
  img.title = `${d.label} · seed ${d.seed} · ${d.scheduler} ${d.steps} steps · guidance ${d.guidance_scale}` +
    "\nclick to use these settings";
  img.addEventListener("click", () => {
    pickDigit(d.label);
    if (models[d.model]) { ui.model.value = d.model; applyModel(d.model); }
    ui.steps.value = d.steps;
    ui.scheduler.value = d.scheduler;
    ui.guidance.value = d.guidance_scale;
    ui.seed.value = d.seed;
    syncOutputs();
  });
  const items = $("#history-items");
  items.prepend(img);
  while (items.children.length > 16) items.lastChild.remove();
  ui.history.hidden = false;
}

// Steps, sampler and guidance as the chosen model takes them: its samplers,
// its defaults, its real step limit (e.g. DPM-Solver++ 999, LCM 50).
function applyModel(name) {
  const m = models[name];
  if (!m) return;
  ui.scheduler.replaceChildren(...m.schedulers.map((s) => new Option(SCHEDULER_NAMES[s] || s, s)));
  ui.scheduler.value = m.defaults.scheduler;
  ui.steps.value = m.defaults.num_inference_steps;
  const built = m.defaults.distilled_guidance_scale;
  ui.guidance.disabled = built != null;
  ui.guidance.value = built != null ? built : m.defaults.guidance_scale;
  applyLimits();
  syncOutputs();
}

function applyLimits() {
  const m = models[ui.model.value];
  if (m) ui.steps.max = m.limits.max_steps[ui.scheduler.value];
}

function syncOutputs() {
  const built = models[ui.model.value]?.defaults.distilled_guidance_scale;
  $("#guidance-out").textContent = Number(ui.guidance.value).toFixed(2) + (built != null ? " (built in)" : "");
  $("#every-out").textContent = ui.every.value === "1" ? "step" : `${ui.every.value} steps`;
}

async function loadInfo() {
  try {
    const r = await fetch("/info");
    if (!r.ok) throw new Error(`${r.status}`);
    const info = await r.json();
    models = info.models;
    ui.model.replaceChildren(...Object.keys(models).sort().reverse()
      .map((name) => new Option(MODEL_NAMES[name] || name, name)));
    ui.model.value = info.default_model;
    applyModel(info.default_model);
    $("#model-info").textContent = `${info.model.parameters.toLocaleString()} parameters, ` +
      `${info.model.sample_shape.slice(1).join("×")} samples`;
  } catch (err) {
    ui.steps.value ||= 20;
    ui.guidance.value ||= 2;
    showError(`The service is not ready (${err.message}); generation may fail.`);
  }
  syncOutputs();
}

for (let d = 0; d < 10; d++) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = d;
  b.dataset.digit = d;
  b.setAttribute("role", "radio");
  b.addEventListener("click", () => pickDigit(d));
  ui.digits.append(b);
}
pickDigit(label);
ui.form.addEventListener("submit", (e) => { e.preventDefault(); start(); });
ui.form.addEventListener("input", syncOutputs);
ui.model.addEventListener("change", () => applyModel(ui.model.value));
ui.scheduler.addEventListener("change", applyLimits);
ui.scrub.addEventListener("input", () => { stopReplay(); syncScrub(); show(Number(ui.scrub.value)); });
ui.play.addEventListener("click", replay);
ui.stop.addEventListener("click", () => stop());
$("#dice").addEventListener("click", () => { ui.seed.value = Math.floor(Math.random() * 2 ** 32); });
ui.dlPng.addEventListener("click", downloadPng);
ui.dlSize.addEventListener("change", updateGifLink);
document.addEventListener("keydown", (e) => {
  if (e.target.matches("input, select") || e.ctrlKey || e.metaKey || e.altKey) return;
  if (/^[0-9]$/.test(e.key)) pickDigit(Number(e.key));
  else if (e.key === "Enter" && !ui.go.disabled) start();
});
loadInfo();
