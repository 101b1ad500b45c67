// The noise schedule as a strip: alpha-bar_t (the signal left in x_t) from
// t = T-1 (left, where sampling starts) to t = 0 (right), one step marked.
export function drawSchedule(canvas, alphas, timestep) {
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, T = alphas.length;
  const left = 4, right = w - 4, top = 6, bottom = h - 18;
  const x = (t) => left + ((T - 1 - t) / (T - 1)) * (right - left);
  const y = (a) => bottom - a * (bottom - top);
  g.clearRect(0, 0, w, h);
  g.fillStyle = "rgba(90, 150, 255, 0.25)";
  g.beginPath();
  g.moveTo(x(T - 1), bottom);
  for (let t = T - 1; t >= 0; t--) g.lineTo(x(t), y(alphas[t]));
  g.lineTo(x(0), bottom);
  g.fill();
  g.fillStyle = "#9aa3b5";
  g.font = "11px sans-serif";
  g.fillText(`t = ${T - 1}: pure noise`, left, h - 4);
  const end = "t = 0: the digit";
  g.fillText(end, right - g.measureText(end).width, h - 4);
  g.fillText("ᾱ_t", w / 2 - 8, h - 4);
  if (timestep == null) return;
  g.strokeStyle = "#ffb020";
  g.lineWidth = 2;
  g.beginPath();
  g.moveTo(x(timestep), top - 4);
  g.lineTo(x(timestep), bottom);
  g.stroke();
}
