// Morph: n frames between (seed A, digit A) and (seed B, digit B), made in
// one job (POST /morph, format json), then played there and back; the
// slider or the strip picks one frame.
import {ApiError, api, png} from "./api.js";

const $ = (sel) => document.querySelector(sel);

export class Morph {
  constructor(controls) {
    this.controls = controls;
    this.ui = {a: $("#morph-a"), seedA: $("#morph-seed-a"), b: $("#morph-b"), seedB: $("#morph-seed-b"),
               n: $("#morph-n"), status: $("#morph-status"), view: $("#morph-view"), frame: $("#morph-frame"),
               scrub: $("#morph-scrub"), out: $("#morph-out"), play: $("#morph-play"), strip: $("#morph-strip"),
               go: $("#morph-go")};
    this.frames = [];
    this.timer = null;
    this.ui.scrub.addEventListener("input", () => { this.pause(); this.show(Number(this.ui.scrub.value)); });
    this.ui.play.addEventListener("click", () => (this.timer ? this.pause() : this.play()));
  }

  async run() {
    const p = this.controls.params();
    const body = {model: p.model, steps: p.steps, scheduler: p.scheduler, guidance_scale: p.guidance_scale,
                  label: Number(this.ui.a.value), seed: Number(this.ui.seedA.value), label_b: Number(this.ui.b.value),
                  seed_b: Number(this.ui.seedB.value), n: Number(this.ui.n.value), format: "json"};
    this.pause();
    this.ui.go.disabled = true;
    this.ui.status.textContent = `Making ${body.n} frames in one batch…`;
    try {
      const r = await api("/morph", {json: body});
      this.frames = (await r.json()).frames;
    } catch (err) {
      this.ui.status.textContent = err instanceof ApiError ? err.message : String(err);
      return;
    } finally {
      this.ui.go.disabled = false;
    }
    this.ui.strip.replaceChildren(...this.frames.map((f, i) => {
      const img = document.createElement("img");
      img.src = png(f.png_base64);
      img.alt = `frame ${i}, alpha ${f.alpha.toFixed(2)}`;
      img.tabIndex = 0;
      img.addEventListener("click", () => { this.pause(); this.show(i); });
      return img;
    }));
    this.ui.scrub.max = String(this.frames.length - 1);
    this.ui.view.hidden = false;
    this.ui.status.textContent = `${body.label} (seed ${body.seed}) to ${body.label_b} (seed ${body.seed_b}): ` +
      "frame k blends them by alpha = k / (n − 1).";
    this.play();
  }

  show(i) {
    const f = this.frames[i];
    this.ui.frame.src = png(f.png_base64);
    this.ui.scrub.value = String(i);
    this.ui.out.textContent = `${i} / ${this.frames.length - 1} · alpha ${f.alpha.toFixed(2)}`;
    this.ui.view.dataset.shown = String(i);
    for (const [k, img] of [...this.ui.strip.children].entries()) img.classList.toggle("current", k === i);
  }

  // there and back, ~8 frames a second
  play() {
    let i = 0, dir = 1;
    this.ui.play.textContent = "Pause";
    this.ui.view.dataset.played = "0";
    this.timer = setInterval(() => {
      this.show(i);
      this.ui.view.dataset.played = String(Number(this.ui.view.dataset.played) + 1);
      if (this.frames.length < 2) return;
      if (i + dir < 0 || i + dir >= this.frames.length) dir = -dir;
      i += dir;
    }, 120);
  }

  pause() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.ui.play.textContent = "Play";
  }
}
