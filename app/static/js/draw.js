// Draw: a pad for a digit (mouse, touch, pen) and a second layer that marks
// what the model may redraw; sent as PNGs for image-to-image ("clean up")
// or inpainting ("complete"). A dropped or picked PNG starts the pad.
const $ = (sel) => document.querySelector(sel);
const WIDTH = {ink: 18, erase: 28, mask: 36};
const EDIT_WHY = {
  clean: "Image-to-image (SDEdit): your drawing is noised to a point partway down the schedule and the model " +
         "denoises it from there. Strength is how far: low keeps your strokes, 1 starts from pure noise.",
  complete: "Inpainting: the model draws only the marked (orange) area; every other pixel is put back from your " +
            "drawing at each step, so the new strokes have to fit the kept ones. On the base model it samples with " +
            "RePaint: every few steps it adds noise back and redoes them, so both parts agree (more steps to watch).",
};

export class DrawPad {
  constructor() {
    this.ink = $("#pad");
    this.mask = $("#pad-mask");
    this.ui = {strength: $("#strength"), strengthOut: $("#strength-out"), strengthLabel: $("#strength-label"),
               why: $("#edit-why"), file: $("#pad-file")};
    this.masked = false;
    this.clear();
    this.attach(this.ink.parentElement);
    $("#pad-clear").addEventListener("click", () => this.clear());
    $("#pad-mask-half").addEventListener("click", () => this.maskLowerHalf());
    this.ui.file.addEventListener("change", () => this.ui.file.files[0] && this.load(this.ui.file.files[0]));
    const wrap = $("#pad-wrap");
    wrap.addEventListener("dragover", (e) => { e.preventDefault(); wrap.classList.add("dropping"); });
    wrap.addEventListener("dragleave", () => wrap.classList.remove("dropping"));
    wrap.addEventListener("drop", (e) => {
      e.preventDefault();
      wrap.classList.remove("dropping");
      const f = [...e.dataTransfer.files].find((x) => x.type === "image/png");
      if (f) this.load(f);
    });
    for (const r of document.querySelectorAll("input[name=edit]")) r.addEventListener("change", () => this.sync());
    this.ui.strength.addEventListener("input", () => this.sync());
    this.sync();
  }

  brush() { return document.querySelector("input[name=brush]:checked").value; }
  edit() { return document.querySelector("input[name=edit]:checked").value; }

  sync() {
    const edit = this.edit();
    this.ui.why.textContent = EDIT_WHY[edit];
    this.ui.strengthLabel.hidden = edit !== "clean";
    this.ui.strengthOut.textContent = Number(this.ui.strength.value).toFixed(2);
  }

  clear() {
    const g = this.ink.getContext("2d");
    g.fillStyle = "#000";
    g.fillRect(0, 0, this.ink.width, this.ink.height);
    this.mask.getContext("2d").clearRect(0, 0, this.mask.width, this.mask.height);
    this.masked = false;
    this.ink.dataset.strokes = "0";
  }

  maskLowerHalf() {
    const g = this.mask.getContext("2d");
    g.fillStyle = "rgba(255, 140, 0, 0.45)";
    g.fillRect(0, this.mask.height / 2, this.mask.width, this.mask.height / 2);
    this.masked = true;
    document.querySelector("input[name=edit][value=complete]").checked = true;
    this.sync();
  }

  // Pointer events: one path for mouse, touch and pen (the pad sets touch-action: none).
  attach(surface) {
    let last = null;
    const at = (e) => {
      const r = this.ink.getBoundingClientRect();
      return [(e.clientX - r.left) * (this.ink.width / r.width), (e.clientY - r.top) * (this.ink.height / r.height)];
    };
    surface.addEventListener("pointerdown", (e) => {
      try { surface.setPointerCapture(e.pointerId); } catch (_) { /* a pointer already gone */ }
      last = at(e);
      this.line(last, last, e.pressure);
    });
    surface.addEventListener("pointermove", (e) => {
      if (!last) return;
      const p = at(e);
      this.line(last, p, e.pressure);
      last = p;
    });
    const end = () => {
      if (last) this.ink.dataset.strokes = String(Number(this.ink.dataset.strokes) + 1);
      last = null;
    };
    surface.addEventListener("pointerup", end);
    surface.addEventListener("pointercancel", end);
  }

  line(a, b, pressure) {
    const brush = this.brush();
    const onMask = brush === "mask";
    const g = (onMask ? this.mask : this.ink).getContext("2d");
    // a pen's pressure thickens the stroke; a mouse reports 0.5
    g.lineWidth = WIDTH[brush] * (pressure > 0 && pressure !== 0.5 ? 0.6 + pressure : 1);
    g.lineCap = g.lineJoin = "round";
    g.strokeStyle = onMask ? "rgba(255, 140, 0, 0.45)" : brush === "erase" ? "#000" : "#fff";
    g.beginPath();
    g.moveTo(...a);
    g.lineTo(...b);
    g.stroke();
    if (onMask) {
      this.masked = true;
      if (this.edit() !== "complete") {
        document.querySelector("input[name=edit][value=complete]").checked = true;
        this.sync();
      }
    }
  }

  async load(file) {
    const img = new Image();
    img.src = URL.createObjectURL(file);
    await img.decode();
    this.clear();
    const s = Math.min(this.ink.width / img.width, this.ink.height / img.height);
    const w = img.width * s, h = img.height * s;
    this.ink.getContext("2d").drawImage(img, (this.ink.width - w) / 2, (this.ink.height - h) / 2, w, h);
    URL.revokeObjectURL(img.src);
    this.ink.dataset.strokes = "1";
  }

  // The request's image fields: the drawing, and for "complete" the mask
  // (white where the model draws), both base64 PNGs of the pad's size.
  body() {
    const image = this.ink.toDataURL("image/png").split(",")[1];
    if (this.edit() === "clean") return {image, strength: Number(this.ui.strength.value)};
    if (!this.masked) throw new Error("Mark the area the model may redraw first (the Redraw area brush).");
    const m = document.createElement("canvas");
    m.width = this.mask.width;
    m.height = this.mask.height;
    const g = m.getContext("2d");
    g.fillStyle = "#000";
    g.fillRect(0, 0, m.width, m.height);
    const src = this.mask.getContext("2d").getImageData(0, 0, m.width, m.height);
    const out = g.getImageData(0, 0, m.width, m.height);
    for (let i = 0; i < src.data.length; i += 4) {
      const v = src.data[i + 3] > 0 ? 255 : 0;
      out.data[i] = out.data[i + 1] = out.data[i + 2] = v;
    }
    g.putImageData(out, 0, 0);
    return {image, mask_image: m.toDataURL("image/png").split(",")[1]};
  }
}
