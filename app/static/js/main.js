// The page: tabs, the key, /info, and each view wired to the shared
// controls and viewer. Plain ES modules, no build step, no dependencies.
import {ApiError, api, apiKey, blobOf, keyRemembered, save, setApiKey} from "./api.js";
import {Compare} from "./compare.js";
import {DrawPad} from "./draw.js";
import {Controls, watch} from "./generate.js";
import {History} from "./history.js";
import {Morph} from "./morph.js";
import {Noising} from "./noising.js";
import {Viewer} from "./viewer.js";

const $ = (sel) => document.querySelector(sel);
const viewer = new Viewer();
const controls = new Controls();
const pad = new DrawPad();
const noising = new Noising();
const history = new History((p) => { controls.apply(p); showTab("generate"); });
let last = null;   // the last finished run: {done, params, edit}
let stopRun = null;

function notice(text) {
  $("#notice").textContent = text || "";
  $("#notice").hidden = !text;
}

// One run at a time on the page: every Generate-like button waits, every Stop stops it.
function busy(on, stop) {
  document.body.dataset.state = on ? "running" : (document.body.dataset.state === "running" ? "done" : document.body.dataset.state);
  stopRun = on ? stop : null;
  for (const b of document.querySelectorAll("button.primary")) b.disabled = on;
  for (const b of document.querySelectorAll("button.stop")) b.disabled = !on;
}

function showTab(name) {
  document.body.dataset.tab = name;
  for (const t of document.querySelectorAll("[role=tab]")) {
    const on = t.dataset.tab === name;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(`#${t.getAttribute("aria-controls")}`).hidden = !on;
  }
  // the viewer belongs to the runs that stream one digit
  $("#viewer").hidden = !(name === "generate" || name === "draw");
}

async function run(edit) {
  const params = controls.params();
  const body = {...params, probs: $("#probs").checked};
  if (edit) {
    try {
      Object.assign(body, pad.body());
      // completing takes the model's own inpainting sampler (RePaint on the base model)
      if (body.mask_image) delete body.scheduler;
    } catch (err) {
      viewer.error(err.message);
      return;
    }
  }
  // on a phone the viewer is below the form: bring it into view now, not after the run
  $("#viewer").scrollIntoView({block: "start", behavior: "instant"});
  document.body.dataset.state = "running";
  $("#result").hidden = true;
  const done = await watch(viewer, "/generate/stream", body, busy);
  if (!done) { document.body.dataset.state = viewer.ui.error.hidden ? "idle" : "error"; return; }
  last = {done, params: {...params, seed: done.seed}, edit: Boolean(edit)};
  finish(done, edit);
}

function finish(d, edit) {
  $("#final").src = "data:image/png;base64," + d.image;
  const what = edit ? (d.strength != null ? `cleaned up at strength ${d.strength}` : "completed") : "drawn";
  // a distilled model's guidance is its teacher's, built in: the request's 1 would mislead
  const built = controls.models[d.model]?.defaults.distilled_guidance_scale;
  const guidance = built != null ? `, its teacher's guidance ${built} built in` : `, guidance ${d.guidance_scale}`;
  $("#result-meta").textContent = `A ${d.label}, ${what} · ${d.model} model · seed ${d.seed} · ` +
    `${d.scheduler}, ${d.steps} steps${guidance} · ${d.seconds.toFixed(2)} s`;
  $("#result").hidden = false;
  $("#dl-gif").hidden = Boolean(edit);   // a GIF is made again from the parameters; an edit's image is the client's
  document.body.dataset.state = "done";
  viewer.status(`Done: a ${d.label} in ${viewer.frames.length - 1} steps. Scrub or tap the filmstrip to look back.`);
  history.add(d.image, last.params, `${d.label} · seed ${d.seed} · ${d.model} ${d.scheduler} ${d.steps} steps`);
  noising.setDigit(d.image);
}

// Downloads through fetch, so they carry the key; the PNG has its parameters inside.
async function download(kind) {
  if (!last) return;
  const size = Number($("#dl-size").value);
  const name = `digit-${last.done.label}-seed-${last.done.seed}.${kind}`;
  try {
    if (last.edit) {   // an edit's PNG as the run made it (its image is the client's to send again)
      save(blobOf(last.done.image), name);
      return;
    }
    const path = kind === "png" ? "/generate" : "/generate.gif";
    const r = await api(path, {json: {...last.params, size}});
    save(await r.blob(), name);
  } catch (err) {
    viewer.error(`Download failed: ${err.message}`);
  }
}

async function loadInfo() {
  try {
    const info = await (await api("/info")).json();
    controls.setModels(info);
    viewer.setSchedule(info.models[controls.ui.model.value].noise_schedule.alphas_cumprod);
    noising.setSchedule(info.models[controls.ui.model.value].noise_schedule.alphas_cumprod);
    $("#model-info").textContent = Object.entries(info.models).map(([n, m]) =>
      `${n}: ${m.model.parameters.toLocaleString()} parameters`).join(" · ");
    notice("");
    if (!last) {   // the noising view needs a digit before the first run
      const r = await api("/generate", {json: {label: 5, seed: 1, model: controls.ui.model.value, format: "json"}});
      noising.setDigit((await r.json()).images[0].png_base64);
    }
    return true;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      $("#key-panel").open = true;
      notice(err.message);
    } else if (err instanceof ApiError && err.status === 503) {
      notice(`The service is not ready yet (${err.message}); reload in a moment.`);
    } else {
      notice(`Could not load the models: ${err.message}`);
    }
    return false;
  }
}

// wiring
for (const t of document.querySelectorAll("[role=tab]")) t.addEventListener("click", () => showTab(t.dataset.tab));
$("#tabs").addEventListener("keydown", (e) => {   // arrow keys move between tabs
  const tabs = [...document.querySelectorAll("[role=tab]")];
  const i = tabs.findIndex((t) => t.getAttribute("aria-selected") === "true");
  const j = e.key === "ArrowRight" ? i + 1 : e.key === "ArrowLeft" ? i - 1 : null;
  if (j === null) return;
  const next = tabs[(j + tabs.length) % tabs.length];
  showTab(next.dataset.tab);
  next.focus();
});
$("#panel-generate").addEventListener("submit", (e) => { e.preventDefault(); if (e.target.reportValidity()) run(false); });
$("#panel-draw").addEventListener("submit", (e) => { e.preventDefault(); run(true); });
const compare = new Compare(controls, busy);
$("#panel-compare").addEventListener("submit", (e) => { e.preventDefault(); compare.run(); });
const morph = new Morph(controls);
$("#panel-morph").addEventListener("submit", (e) => { e.preventDefault(); morph.run(); });
for (const b of document.querySelectorAll("button.stop")) b.addEventListener("click", () => stopRun?.());
$("#dl-png").addEventListener("click", () => download("png"));
$("#dl-gif").addEventListener("click", () => download("gif"));
$("#model").addEventListener("change", () => {
  const m = controls.model();
  if (m) { viewer.setSchedule(m.noise_schedule.alphas_cumprod); noising.setSchedule(m.noise_schedule.alphas_cumprod); }
});
$("#key").value = apiKey();
$("#key-remember").checked = keyRemembered();
$("#key-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  setApiKey($("#key").value.trim(), $("#key-remember").checked);
  if (await loadInfo()) $("#key-panel").open = false;
});
document.addEventListener("keydown", (e) => {
  if (document.body.dataset.tab !== "generate" || e.target.matches("input, select, textarea, button")
      || e.ctrlKey || e.metaKey || e.altKey) return;
  if (/^[0-9]$/.test(e.key)) controls.pick(Number(e.key));
  else if (e.key === "Enter" && !$("#go").disabled) run(false);
});
showTab("generate");
loadInfo();
