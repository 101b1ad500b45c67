// Generate: the controls every run shares (digit, model, sampler, steps,
// guidance, seed), and one run streamed into the viewer (Draw uses it too).
import {ApiError, stream} from "./api.js";

const $ = (sel) => document.querySelector(sel);

const MODEL_NAMES = {base: "Base model: diffusion (watch it)", fast: "Fast model: distilled student, 3 steps",
                     onestep: "One-step model: a digit in one UNet call"};
const MODEL_WHY = {
  base: "The diffusion model: it removes a little noise each step, so you can watch the digit emerge.",
  fast: "A student distilled from the base model (a consistency model): it jumps to a digit in a few steps, " +
        "with the guidance of its teacher built in. Quick, but there is little to watch.",
  onestep: "A student trained to draw its teacher's digit from the same noise in ONE step: the whole walk " +
           "from noise to digit in one UNet call. Nothing to watch; compare it with the base model's 20 steps.",
};
const SAMPLER_NAMES = {dpm: "DPM-Solver++", ddim: "DDIM", ddpm: "DDPM", tcd: "TCD", lcm: "LCM"};
const SAMPLER_WHY = {
  dpm: "DPM-Solver++: a second-order solver of the denoising ODE; good digits in 10–20 steps, no fresh noise.",
  ddim: "DDIM: deterministic steps along the model's own noise estimate (eta 0): the same seed walks the same path.",
  ddpm: "DDPM: the original sampler; each step adds fresh noise, so it needs many steps (try 100+).",
  tcd: "TCD: jumps to the model's x̂0, then re-noises part of the way down (eta: how much noise is fresh).",
  lcm: "LCM: jumps to the model's x̂0, then re-noises with all-fresh noise; a new guess each step.",
};

export class Controls {
  constructor(onChange) {
    this.ui = {digits: $("#digits"), model: $("#model"), scheduler: $("#scheduler"), steps: $("#steps"),
               guidance: $("#guidance"), guidanceOut: $("#guidance-out"), guidanceWhy: $("#guidance-why"),
               seed: $("#seed"), probs: $("#probs")};
    this.models = {};
    this.label = 5;
    this.onChange = onChange;
    // one digit picker on every panel that draws one (Generate, Draw), kept in step
    for (const box of document.querySelectorAll(".digits")) {
      for (let d = 0; d < 10; d++) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = d;
        b.dataset.digit = d;
        b.setAttribute("role", "radio");
        b.setAttribute("aria-label", `digit ${d}`);
        b.addEventListener("click", () => this.pick(d));
        box.append(b);
      }
    }
    this.pick(this.label);
    this.ui.model.addEventListener("change", () => this.applyModel(this.ui.model.value));
    this.ui.scheduler.addEventListener("change", () => this.applySampler());
    this.ui.guidance.addEventListener("input", () => this.sync());
    $("#dice").addEventListener("click", () => { this.ui.seed.value = Math.floor(Math.random() * 2 ** 32); });
  }

  pick(d) {
    this.label = d;
    for (const b of document.querySelectorAll(".digits button")) {
      b.setAttribute("aria-checked", String(Number(b.dataset.digit) === d));
    }
    this.onChange?.(this);
  }

  // /info's models; the page opens on the base model, the one worth watching.
  setModels(info) {
    this.models = info.models;
    const names = Object.keys(this.models).sort();
    this.ui.model.replaceChildren(...names.map((n) => new Option(MODEL_NAMES[n] || n, n)));
    this.applyModel("base" in this.models ? "base" : info.default_model);
    this.ui.probs.disabled = !info.classifier;
    this.ui.probs.checked = info.classifier;
  }

  applyModel(name) {
    const m = this.models[name];
    if (!m) return;
    this.ui.model.value = name;
    $("#model-why").textContent = MODEL_WHY[name] || "";
    this.ui.scheduler.replaceChildren(...m.schedulers.map((s) => new Option(SAMPLER_NAMES[s] || s, s)));
    this.ui.scheduler.value = m.defaults.scheduler;
    this.ui.steps.value = m.defaults.num_inference_steps;
    const built = m.defaults.distilled_guidance_scale;
    this.ui.guidance.disabled = built != null;
    this.ui.guidance.value = built != null ? 1 : m.defaults.guidance_scale;
    this.applySampler();
  }

  applySampler() {
    const m = this.models[this.ui.model.value];
    if (m) this.ui.steps.max = m.limits.max_steps[this.ui.scheduler.value];
    $("#scheduler-why").textContent = SAMPLER_WHY[this.ui.scheduler.value] || "";
    this.sync();
  }

  sync() {
    const m = this.models[this.ui.model.value];
    const built = m?.defaults.distilled_guidance_scale;
    this.ui.guidanceOut.textContent = built != null ? `built in (${built} from its teacher)`
      : Number(this.ui.guidance.value).toFixed(2);
    this.onChange?.(this);
  }

  model() { return this.models[this.ui.model.value]; }

  // The request's parameters, as POST /generate takes them.
  params() {
    const p = {model: this.ui.model.value, label: this.label, steps: Number(this.ui.steps.value),
               scheduler: this.ui.scheduler.value};
    if (!this.ui.guidance.disabled) p.guidance_scale = Number(this.ui.guidance.value);
    if (this.ui.seed.value !== "") p.seed = Number(this.ui.seed.value);
    return p;
  }

  // Settings back from a history entry or a PNG's parameters.
  apply(p) {
    if (p.model && this.models[p.model]) this.applyModel(p.model);
    if (p.label != null) this.pick(p.label);
    if (p.scheduler) { this.ui.scheduler.value = p.scheduler; this.applySampler(); }
    if (p.steps) this.ui.steps.value = p.steps;
    if (p.guidance_scale != null && !this.ui.guidance.disabled) this.ui.guidance.value = p.guidance_scale;
    if (p.seed != null) this.ui.seed.value = p.seed;
    this.sync();
  }
}

// One run: stream `body` to `path` into the viewer; resolves with the done
// event (null when stopped). `busy(true|false)` brackets it.
export async function watch(viewer, path, body, busy) {
  const abort = new AbortController();
  const t0 = performance.now();
  viewer.reset(body.label);
  viewer.status("Waiting for a place in the batch…");
  busy(true, () => abort.abort());
  try {
    let done = null;
    await stream(path, {...body, every: 1}, {
      start: (d) => { viewer.start(d); viewer.status(`Pure noise · seed ${d.seed} · ${d.total} steps to go`); },
      step: (d) => { viewer.step(d); viewer.status(viewer.describe(d)); },
      done: (d) => { done = d; },
    }, abort.signal);
    viewer.finished();
    done.seconds = (performance.now() - t0) / 1000;
    return done;
  } catch (err) {
    if (err.name === "AbortError") { viewer.status("Stopped."); return null; }
    viewer.status("Failed.");
    viewer.error(err instanceof ApiError ? err.message : String(err));
    return null;
  } finally {
    busy(false);
  }
}
