// The viewer: one run's frames as they arrive (x_t and x̂0 side by side),
// where each step sits on the noise schedule, p(digit | x̂0) per step, a
// filmstrip of the run, and replay.
import {png} from "./api.js";
import {drawSchedule} from "./schedule.js";

const $ = (sel) => document.querySelector(sel);
const COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
                 "#bfef45", "#fabed4"];

export class Viewer {
  constructor() {
    this.el = $("#viewer");
    this.ui = {xt: $("#xt"), x0: $("#x0"), status: $("#status"), error: $("#error"), schedule: $("#schedule"),
               probsBox: $("#probs-box"), probs: $("#probs-chart"), probsWhy: $("#probs-why"), replay: $("#replay"),
               scrub: $("#scrub"), scrubOut: $("#scrub-out"), play: $("#play"), strip: $("#filmstrip")};
    this.frames = [];       // {step, total, timestep, x_t, x0, probs}; the start (pure noise or the noised image) first
    this.alphas = null;     // the model's alpha-bar per training timestep
    this.label = null;
    this.player = null;
    this.ui.scrub.addEventListener("input", () => { this.stopReplay(); this.show(Number(this.ui.scrub.value)); });
    this.ui.play.addEventListener("click", () => this.replay());
  }

  setSchedule(alphas) {
    this.alphas = alphas;
    this.drawSchedule(null);
  }

  status(text) { this.ui.status.textContent = text; }

  error(text) {
    this.ui.error.textContent = text || "";
    this.ui.error.hidden = !text;
  }

  // A new run: the old frames go.
  reset(label) {
    this.stopReplay();
    this.frames = [];
    this.label = label;
    this.ui.xt.removeAttribute("src");
    this.ui.x0.removeAttribute("src");
    this.ui.strip.replaceChildren();
    this.ui.replay.hidden = true;
    this.ui.probsBox.hidden = true;
    this.el.dataset.frames = "0";
    delete this.el.dataset.shown;
    this.error("");
    this.drawSchedule(null);
  }

  start(d) {
    this.frames.push({step: 0, total: d.total, timestep: null, x_t: d.x_t, x0: null, probs: null});
    this.ui.xt.src = png(d.x_t);
  }

  step(d) {
    this.frames.push(d);
    this.el.dataset.frames = String(this.frames.length - 1);
    this.paint(this.frames.length - 1);
    this.addThumb(this.frames.length - 1);
  }

  finished() {
    const n = this.frames.length;
    this.ui.scrub.max = String(n - 1);
    this.ui.scrub.value = String(n - 1);
    this.ui.replay.hidden = n < 2;
    this.syncScrub();
  }

  // Frame i on screen: the two images, its place on the schedule, the chart up to it.
  paint(i) {
    const f = this.frames[i];
    this.ui.xt.src = png(f.x_t);
    if (f.x0) this.ui.x0.src = png(f.x0); else this.ui.x0.removeAttribute("src");
    this.drawSchedule(f.timestep);
    this.drawProbs(i);
    for (const [k, img] of [...this.ui.strip.children].entries()) img.classList.toggle("current", k + 1 === i);
  }

  describe(f) {
    if (f.step === 0) return "The start: x_t at the first step";
    const a = this.alphas && f.timestep != null ? this.alphas[f.timestep] : null;
    const signal = a != null ? ` · signal √ᾱ = ${Math.sqrt(a).toFixed(3)}, noise √(1−ᾱ) = ${Math.sqrt(1 - a).toFixed(3)}` : "";
    return `Step ${f.step} / ${f.total} · t = ${f.timestep}${signal}`;
  }

  // A frame of the finished run, by the slider or the filmstrip.
  show(i) {
    const f = this.frames[i];
    if (!f) return;
    this.paint(i);
    this.el.dataset.shown = String(i);
    this.ui.scrub.value = String(i);
    this.syncScrub();
    this.status(`Replaying: ${this.describe(f)}`);
  }

  syncScrub() {
    this.ui.scrubOut.textContent = `${this.ui.scrub.value} / ${this.ui.scrub.max}`;
  }

  addThumb(i) {
    const f = this.frames[i];
    const img = document.createElement("img");
    img.src = png(f.x0);
    img.alt = `x̂0 at step ${f.step}`;
    img.title = `step ${f.step}, t = ${f.timestep}`;
    img.tabIndex = 0;
    const pick = () => { this.stopReplay(); this.show(i); };
    img.addEventListener("click", pick);
    img.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
    this.ui.strip.append(img);
  }

  stopReplay() {
    if (this.player) clearInterval(this.player);
    this.player = null;
    this.ui.play.textContent = "Replay";
  }

  replay() {
    if (this.player) { this.stopReplay(); return; }
    let i = 0;
    this.ui.play.textContent = "Pause";
    this.el.dataset.replayed = "0";
    this.player = setInterval(() => {
      this.show(i);
      this.el.dataset.replayed = String(Number(this.el.dataset.replayed) + 1);
      if (++i >= this.frames.length) this.stopReplay();
    }, 100);
  }

  drawSchedule(timestep) {
    if (this.alphas) drawSchedule(this.ui.schedule, this.alphas, timestep);
  }

  // p(digit | x̂0) over the steps so far: the asked digit bold, the others thin.
  drawProbs(upto) {
    const rows = this.frames.slice(1, upto + 1).map((f) => f.probs).filter(Boolean);
    if (!rows.length) return;
    this.ui.probsBox.hidden = false;
    const c = this.ui.probs, g = c.getContext("2d"), total = this.frames[upto].total || rows.length;
    const w = c.width, h = c.height, left = 28, bottom = h - 16;
    g.clearRect(0, 0, w, h);
    g.fillStyle = "#9aa3b5";
    g.font = "11px sans-serif";
    g.fillText("1", 8, 12);
    g.fillText("0", 8, bottom);
    g.fillText("step →", w - 48, h - 3);
    const x = (k) => left + ((k + 1) / total) * (w - left - 6);
    const y = (p) => bottom - p * (bottom - 6);
    for (let d = 0; d < 10; d++) {
      g.strokeStyle = COLOURS[d];
      g.lineWidth = d === this.label ? 3 : 1;
      g.globalAlpha = d === this.label ? 1 : 0.6;
      g.beginPath();
      rows.forEach((p, k) => (k ? g.lineTo(x(k), y(p[d])) : g.moveTo(x(k), y(p[d]))));
      g.stroke();
    }
    g.globalAlpha = 1;
    const p = rows[rows.length - 1];
    const best = p.indexOf(Math.max(...p));
    this.ui.probsWhy.textContent = `p(digit | x̂0): what a separately trained classifier reads in the model's ` +
      `current guess, each line one digit (${this.label} bold). Now: p(${this.label}) = ${p[this.label].toFixed(2)}, ` +
      `most likely ${best}. Watch the step where the model commits.`;
  }
}
