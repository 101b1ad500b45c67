// Compare: one seed over one or two parameters (POST /grid/stream), every
// cell's x̂0 updated as its step arrives: the cells form side by side.
import {ApiError, png, stream} from "./api.js";

const $ = (sel) => document.querySelector(sel);
const PARAMS = {guidance_scale: "guidance", steps: "steps", scheduler: "sampler", seed: "seed", eta: "eta",
                model: "model", label: "digit"};

// "0, 1, 1.5" -> [0, 1, 1.5]; "dpm, ddim" -> ["dpm", "ddim"]
export function parseValues(text) {
  return text.split(",").map((v) => v.trim()).filter((v) => v !== "")
    .map((v) => (Number.isFinite(Number(v)) ? Number(v) : v));
}

export class Compare {
  constructor(controls, busy) {
    this.controls = controls;
    this.busy = busy;
    this.ui = {x: $("#grid-x"), xValues: $("#grid-x-values"), y: $("#grid-y"), yValues: $("#grid-y-values"),
               grid: $("#grid"), status: $("#grid-status")};
    this.ui.x.replaceChildren(...Object.entries(PARAMS).map(([k, v]) => new Option(v, k)));
    this.ui.y.replaceChildren(new Option("(none)", ""), ...Object.entries(PARAMS).map(([k, v]) => new Option(v, k)));
    this.ui.x.value = "guidance_scale";
    this.ui.y.value = "steps";
  }

  body() {
    const p = this.controls.params();
    if (p.seed == null) p.seed = Math.floor(Math.random() * 2 ** 32);  // one seed for every cell
    const body = {...p, x: {param: this.ui.x.value, values: parseValues(this.ui.xValues.value)}};
    if (this.ui.y.value) body.y = {param: this.ui.y.value, values: parseValues(this.ui.yValues.value)};
    for (const axis of [body.x, body.y].filter(Boolean)) delete body[axis.param];  // the axis sets it
    return body;
  }

  async run() {
    const body = this.body();
    const cols = body.x.values.length;
    const grid = this.ui.grid;
    grid.replaceChildren();
    grid.dataset.cells = "0";
    grid.dataset.done = "0";
    grid.dataset.frames = "0";
    grid.style.gridTemplateColumns = `auto repeat(${cols}, minmax(0, 1fr))`;
    this.ui.status.textContent = "Waiting for a place in the batch…";
    const abort = new AbortController();
    this.busy(true, () => abort.abort());
    const cells = [];
    try {
      await stream("/grid/stream", body, {
        start: (d) => {
          grid.append(document.createElement("span"));
          for (const v of body.x.values) grid.append(this.heading(body.x.param, v));
          d.cells.forEach((c, i) => {
            if (i % cols === 0) grid.append(this.heading(body.y?.param, body.y ? body.y.values[c.row] : ""));
            const img = document.createElement("img");
            img.alt = `cell ${i + 1}`;
            img.width = img.height = 96;
            grid.append(img);
            cells.push({img, total: c.total});
          });
          grid.dataset.cells = String(d.cells.length);
          this.ui.status.textContent = `${d.cells.length} cells, seed ${body.seed}, in one batch…`;
        },
        step: (d) => {
          cells[d.cell].img.src = png(d.x0);
          cells[d.cell].img.title = `step ${d.step} / ${d.total}, t = ${d.timestep}`;
          grid.dataset.frames = String(Number(grid.dataset.frames) + 1);
        },
        cell: (d) => {
          cells[d.cell].img.src = png(d.image);
          cells[d.cell].img.classList.add("final");
          grid.dataset.done = String(Number(grid.dataset.done) + 1);
        },
      }, abort.signal);
      this.ui.status.textContent = `Done: ${cells.length} cells from seed ${body.seed}. Each cell is what POST ` +
        "/generate gives for its settings alone.";
    } catch (err) {
      if (err.name === "AbortError") this.ui.status.textContent = "Stopped.";
      else this.ui.status.textContent = err instanceof ApiError ? err.message : String(err);
    } finally {
      this.busy(false);
    }
  }

  heading(param, value) {
    const s = document.createElement("span");
    s.className = "axis";
    s.textContent = param ? `${PARAMS[param]} ${value}` : "";
    return s;
  }
}
