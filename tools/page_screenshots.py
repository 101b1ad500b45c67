"""Dev-only: screenshots of the page at desktop and phone width, after a
finished run on the shipped weights (docs/page-1280.png, docs/page-390.png).
Needs Debian's chromium and the test extras (playwright).

    python tools/page_screenshots.py
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Server  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main() -> int:
    srv = Server(ROOT / "weights", Path("/tmp/digitgen-screenshots.log"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for width in (1280, 390):
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.goto(srv.url + "/")
                page.wait_for_function("() => document.querySelector('#model').options.length >= 1")
                page.click("#digits button[data-digit='7']")
                page.fill("#seed", "7")
                page.click("#go")
                page.wait_for_function("() => document.body.dataset.state === 'done'", timeout=60000)
                out = ROOT / "docs" / f"page-{width}.png"
                page.screenshot(path=str(out), full_page=True)
                print(f"wrote {out}")
            browser.close()
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
