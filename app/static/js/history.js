// Recent results, kept in the browser's storage across reloads; a tap
// (or Enter) puts that result's settings back.
const $ = (sel) => document.querySelector(sel);
const STORE = "digitgen.history";
const KEEP = 16;

export class History {
  constructor(onPick) {
    this.onPick = onPick;
    this.items = [];
    try {
      this.items = JSON.parse(localStorage.getItem(STORE) || "[]").filter((x) => x && x.image && x.params);
    } catch (_) { /* a damaged entry: start empty */ }
    this.render();
  }

  add(image, params, text) {
    this.items.unshift({image, params, text});
    this.items = this.items.slice(0, KEEP);
    try { localStorage.setItem(STORE, JSON.stringify(this.items)); } catch (_) { /* storage full or off */ }
    this.render();
  }

  render() {
    const box = $("#history-items");
    box.replaceChildren(...this.items.map((it) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "history-item";
      b.title = `${it.text}: use these settings`;
      b.setAttribute("aria-label", `${it.text}: use these settings`);
      const img = document.createElement("img");
      img.src = "data:image/png;base64," + it.image;
      img.alt = "";
      b.append(img);
      b.addEventListener("click", () => this.onPick(it.params));
      return b;
    }));
    $("#history").hidden = this.items.length === 0;
  }
}
