// The training run, live: poll /log for new lines, draw the loss curve,
// refresh the sample grid when a new one is written.
const $ = (sel) => document.querySelector(sel);
const points = [];   // [step, loss]
let next = 0, lastSample = -1, total = 0, batch = 64, rate = null;

function draw() {
  const c = $("#loss"), g = c.getContext("2d"), w = c.width, h = c.height, pad = 36;
  g.clearRect(0, 0, w, h);
  if (points.length < 2) return;
  // log scale: the early drop and the late creep both visible
  const ys = points.map(([, l]) => Math.log10(l));
  const lo = Math.min(...ys), hi = Math.max(...ys), span = Math.max(hi - lo, 1e-6);
  const last = total || points[points.length - 1][0];
  const x = (s) => pad + (s / last) * (w - pad - 8), y = (v) => 8 + (1 - (v - lo) / span) * (h - pad - 8);
  g.strokeStyle = "#3a4150";
  g.fillStyle = "#a9b1c0";
  g.font = "12px sans-serif";
  for (const v of [lo, (lo + hi) / 2, hi]) {
    g.beginPath(); g.moveTo(pad, y(v)); g.lineTo(w - 8, y(v)); g.stroke();
    g.fillText((10 ** v).toPrecision(2), 2, y(v) + 4);
  }
  g.fillText(`step ${last}`, w - 70, h - 6);
  g.strokeStyle = "#8aa6ff";
  g.lineWidth = 1.5;
  g.beginPath();
  points.forEach(([s], i) => (i ? g.lineTo(x(s), y(ys[i])) : g.moveTo(x(s), y(ys[i]))));
  g.stroke();
}

async function poll() {
  try {
    const r = await fetch(`/log?from=${next}`);
    const d = await r.json();
    next = d.next;
    total = d.total_steps;
    batch = d.batch_size;
    for (const line of d.lines) {
      if (line.loss != null) {
        points.push([line.step, line.loss]);
        rate = line.img_per_s;
      }
      if (line.sample && line.step > lastSample) {
        lastSample = line.step;
        $("#samples").src = `/samples/latest.png?step=${line.step}`;
        $("#sample-step").textContent = `(step ${line.step})`;
      }
    }
    if (points.length) {
      const [step, loss] = points[points.length - 1];
      $("#progress").value = step / total;
      const left = rate ? (total - step) * batch / rate : null;
      $("#status").textContent = `Step ${step} / ${total} · loss ${loss.toFixed(4)}` +
        (rate ? ` · ${rate.toFixed(0)} images/s` : "") + (left ? ` · about ${Math.ceil(left / 60)} min to go` : "");
      document.body.dataset.points = String(points.length);
    }
    draw();
  } catch (err) {
    $("#status").textContent = `The trainer stopped answering (${err.message}): the run has ended or was stopped.`;
  }
}

poll();
setInterval(poll, 1000);
