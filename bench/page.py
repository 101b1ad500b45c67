"""How soon a phone user sees something: the page at 390 x 844 in Debian's
headless Chromium, against `digitgen serve` on the shipped weights, from the
tap on Generate to the first frame on screen (the starting noise, in view)
and to the first denoising step, and the whole 20-step run.

    python bench/page.py [--rounds 5] [--json bench/results/page.json]

Times come from the page's own clock (performance.now() at the tap, and at
the moment each frame's image is set), so the browser's driver adds nothing.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_json  # noqa: E402
from bench.server import LocalServer  # noqa: E402
from engine import paths  # noqa: E402

# Watches #xt and #x0 for their first src, and the body for the end of the run.
PROBE = """() => { const t = {tap: performance.now()};
  const seen = (el, key) => new MutationObserver((_, o) => { if (!t[key] && el.src) { t[key] = performance.now();
    const r = el.getBoundingClientRect(); t[key + '_in_view'] = r.top >= 0 && r.bottom <= innerHeight; o.disconnect(); } })
    .observe(el, {attributes: true, attributeFilter: ['src']});
  seen(document.querySelector('#xt'), 'first_frame'); seen(document.querySelector('#x0'), 'first_step');
  new MutationObserver((_, o) => { if (document.body.dataset.state === 'done') { t.done = performance.now();
    o.disconnect(); } }).observe(document.body, {attributes: true});
  window.__timing = t; }"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(paths.WEIGHTS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "page.json"))
    args = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    server = LocalServer(Path(args.weights))
    rows = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            for _ in range(args.rounds):
                context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
                page = context.new_page()
                page.goto(server.url + "/")
                page.wait_for_function("() => document.querySelector('#model').options.length >= 1")
                page.evaluate(PROBE)
                page.tap("#go")
                page.wait_for_function("() => window.__timing.done", timeout=120000)
                t = page.evaluate("window.__timing")
                rows.append({"first_frame_ms": t["first_frame"] - t["tap"], "first_step_ms": t["first_step"] - t["tap"],
                             "run_ms": t["done"] - t["tap"], "first_frame_in_view": t["first_frame_in_view"]})
                context.close()
            browser.close()
    finally:
        server.close()
    summary = {k: statistics.median(r[k] for r in rows) for k in ("first_frame_ms", "first_step_ms", "run_ms")}
    summary["first_frame_in_view"] = all(r["first_frame_in_view"] for r in rows)
    print(f"{'phone, 390 x 844, base model 20 steps':40}{'median':>10}{'worst':>10}")
    for k in ("first_frame_ms", "first_step_ms", "run_ms"):
        print(f"{k:40}{summary[k]:>8.0f}ms{max(r[k] for r in rows):>8.0f}ms")
    print(f"first frame in view every round: {summary['first_frame_in_view']}")
    write_json(args.json, {"rounds": rows, "median": summary, "machine": {"cpus": os.cpu_count(),
                                                                         "load_1min": os.getloadavg()[0]}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
