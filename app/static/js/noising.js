// Noising: the forward process on a digit, computed here exactly as the
// engine's add_noise does it: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
// with one fixed draw of eps, so the slider only moves t.
import {drawSchedule} from "./schedule.js";

const $ = (sel) => document.querySelector(sel);

// a seeded standard normal (mulberry32 + Box-Muller): the same noise every time
function normals(n, seed = 1) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 1) / 4294967297;
  };
  return Float32Array.from({length: n}, () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform()));
}

export class Noising {
  constructor() {
    this.ui = {x0: $("#noise-x0"), xt: $("#noise-xt"), t: $("#noise-t"), out: $("#noise-t-out"),
               meta: $("#noise-meta"), schedule: $("#noise-schedule")};
    this.alphas = null;
    this.x0 = null;   // the digit in [-1, 1], 28 x 28
    this.eps = normals(28 * 28);
    this.ui.t.addEventListener("input", () => this.draw());
  }

  setSchedule(alphas) {
    this.alphas = alphas;
    this.ui.t.max = String(alphas.length - 1);
    this.draw();
  }

  // a finished digit (base64 PNG, any size) as x0
  async setDigit(b64) {
    this.ui.x0.src = "data:image/png;base64," + b64;
    await this.ui.x0.decode();
    const c = document.createElement("canvas");
    c.width = c.height = 28;
    const g = c.getContext("2d");
    g.drawImage(this.ui.x0, 0, 0, 28, 28);
    const px = g.getImageData(0, 0, 28, 28).data;
    this.x0 = Float32Array.from({length: 28 * 28}, (_, i) => (px[4 * i] / 255) * 2 - 1);
    this.draw();
  }

  draw() {
    if (!this.alphas || !this.x0) return;
    const t = Number(this.ui.t.value), a = this.alphas[t];
    const g = this.ui.xt.getContext("2d"), img = g.createImageData(28, 28);
    const sa = Math.sqrt(a), sn = Math.sqrt(1 - a);
    for (let i = 0; i < 28 * 28; i++) {
      const v = Math.max(-1, Math.min(1, sa * this.x0[i] + sn * this.eps[i]));
      img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = Math.round((v + 1) * 127.5);
      img.data[4 * i + 3] = 255;
    }
    g.putImageData(img, 0, 0);
    this.ui.xt.dataset.t = String(t);
    this.ui.out.textContent = String(t);
    const snr = a / (1 - a);
    this.ui.meta.textContent = `ᾱ_t = ${a.toPrecision(3)}: the digit is scaled by √ᾱ = ${sa.toFixed(3)} and the ` +
      `noise by √(1−ᾱ) = ${sn.toFixed(3)}; signal-to-noise ratio ᾱ/(1−ᾱ) = ${snr.toPrecision(3)}. ` +
      (snr < 0.05 ? "Almost nothing of the digit is left: this is where sampling starts." :
        snr > 5 ? "Mostly digit: the last steps of sampling only clean up the strokes." :
          "The middle of the schedule: the digit's shape is decided here.");
    drawSchedule(this.ui.schedule, this.alphas, t);
  }
}
