"""Dev-only: screenshots of each view of the page at desktop and phone width,
after a finished run on the shipped weights: docs/page-<view>-<width>.png
for the views generate, draw, compare, morph, noising. Needs Debian's
chromium and the test extras (playwright).

    python tools/page_screenshots.py [--widths 1280,390] [--views generate,draw,...]
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Server  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from test_page import DONE, READY, stroke  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def generate(page):
    page.click("#digits button[data-digit='7']")
    page.fill("#seed", "7")
    page.click("#go")
    page.wait_for_function(DONE, timeout=120000)
    page.eval_on_selector("#scrub", "s => { s.value = '6'; s.dispatchEvent(new Event('input')); }")  # mid-run


def draw(page):
    page.click("#digits button[data-digit='8']")
    page.fill("#seed", "3")
    page.click("#tab-draw")
    stroke(page, [(0.5, 0.15), (0.3, 0.3), (0.5, 0.48), (0.7, 0.3), (0.5, 0.15)])   # an 8's top loop
    page.click("#pad-mask-half")
    page.click("#draw-go")
    page.wait_for_function(DONE, timeout=180000)


def compare(page):
    page.fill("#seed", "7")
    page.click("#digits button[data-digit='3']")
    page.click("#tab-compare")
    page.click("#grid-go")
    page.wait_for_function("() => document.querySelector('#grid').dataset.done === '12'", timeout=180000)


def morph(page):
    page.click("#tab-morph")
    page.click("#morph-go")
    page.wait_for_function("() => Number(document.querySelector('#morph-view').dataset.played) >= 3", timeout=180000)
    page.click("#morph-play")
    page.eval_on_selector("#morph-scrub", "s => { s.value = '5'; s.dispatchEvent(new Event('input')); }")


def noising(page):
    page.click("#tab-noise")
    page.wait_for_function("() => document.querySelector('#noise-xt').dataset.t === '300'", timeout=60000)


VIEWS = {"generate": generate, "draw": draw, "compare": compare, "morph": morph, "noising": noising}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="1280,390")
    p.add_argument("--views", default=",".join(VIEWS))
    args = p.parse_args(argv)
    srv = Server(ROOT / "weights", Path("/tmp/digitgen-screenshots.log"))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for width in (int(w) for w in args.widths.split(",")):
                for view in args.views.split(","):
                    context = browser.new_context(viewport={"width": width, "height": 900})
                    page = context.new_page()
                    page.goto(srv.url + "/")
                    page.wait_for_function(READY)
                    VIEWS[view](page)
                    out = ROOT / "docs" / f"page-{view}-{width}.png"
                    page.screenshot(path=str(out), full_page=True)
                    print(f"wrote {out}")
                    context.close()
            browser.close()
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
