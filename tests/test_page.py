"""The page in a real headless Chromium (Debian's `chromium`, driven by
Playwright; never a downloaded browser), against the real server."""
from __future__ import annotations

import os
import shutil

import pytest

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    for name in (os.environ.get("DIGITGEN_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium; scripts/test.sh does it in CI)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.mark.browser
def test_page_streams_frames_and_draws_the_digit(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelector('#steps').value === '20'")  # defaults came from /info
    assert page.is_hidden("#result")  # nothing to download before there is a result

    page.click("#digits button[data-digit='7']")
    page.fill("#steps", "12")
    page.select_option("#scheduler", "ddim")
    page.fill("#seed", "4242")
    page.click("#go")

    # frames arrive one by one over EventSource, then the final digit is drawn
    page.wait_for_function("() => Number(document.querySelector('#viewer').dataset.frames) >= 1", timeout=20000)
    page.wait_for_function("() => document.body.dataset.state === 'done'", timeout=30000)
    assert page.eval_on_selector("#viewer", "v => Number(v.dataset.frames)") == 12
    assert page.eval_on_selector("#progress", "p => p.value") == 1
    assert page.eval_on_selector("#final", "i => i.complete && i.naturalWidth") == 28
    assert page.eval_on_selector("#x0", "i => i.src.startsWith('data:image/png;base64,')")
    meta = page.inner_text("#result-meta")
    assert "Digit 7" in meta and "seed 4242" in meta
    assert page.get_attribute("#dl-gif", "href").startswith("/generate.gif?")
    assert page.is_hidden("#error")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 0

    # a parameter the server refuses shows its message
    page.fill("#seed", "")
    page.select_option("#scheduler", "dpm")
    page.evaluate("document.querySelector('#steps').removeAttribute('max')")  # past the page's own check
    page.fill("#steps", "1000")
    page.click("#go")
    page.wait_for_function("() => document.body.dataset.state === 'error'", timeout=20000)
    assert "422" in page.inner_text("#error") and "steps" in page.inner_text("#error")
    assert page.is_hidden("#result")  # the previous digit does not stay beside "Failed."
    assert page.eval_on_selector("#xt", "i => i.hasAttribute('src')") is False
    assert errors == []
    page.close()


@pytest.mark.browser
def test_model_toggle_switches_defaults_and_limits_and_runs_the_fast_model(browser, server):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelector('#model').options.length === 2")
    assert page.input_value("#model") == "base"  # the server's default
    assert page.get_attribute("#steps", "max") == "999"  # DPM-Solver++'s real limit
    page.select_option("#scheduler", "ddim")
    assert page.get_attribute("#steps", "max") == "1000"

    page.select_option("#model", "fast")
    assert page.input_value("#steps") == "4" and page.get_attribute("#steps", "max") == "50"
    assert page.eval_on_selector_all("#scheduler option", "os => os.map(o => o.value)") == ["tcd", "lcm"]
    assert page.is_disabled("#guidance") and "built in" in page.inner_text("#guidance-out")
    page.click("#digits button[data-digit='3']")
    page.fill("#seed", "77")
    page.click("#go")
    page.wait_for_function("() => document.body.dataset.state === 'done'", timeout=30000)
    assert page.eval_on_selector("#viewer", "v => Number(v.dataset.frames)") == 4
    meta = page.inner_text("#result-meta")
    assert "fast model" in meta and "tcd, 4 steps" in meta and "seed 77" in meta
    assert "model=fast" in page.get_attribute("#dl-gif", "href")

    page.select_option("#model", "base")  # and back: base's defaults again
    assert page.input_value("#steps") == "20" and page.input_value("#scheduler") == "dpm"
    assert not page.is_disabled("#guidance")
    assert errors == []
    page.close()


OUTSIDE = """() => { const W = document.documentElement.clientWidth; const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width && (r.right > W + 0.5 || r.left < -0.5)) out.push(`${el.tagName}#${el.id} ${r.left}-${r.right}`);
  }
  return {width: W, scroll: document.documentElement.scrollWidth, outside: out}; }"""


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 390])
def test_page_fits_desktop_and_phone_widths(browser, server, width):
    """Nothing wider than the screen or cut off at its edge, before and after
    a result (the result row with its download buttons is the widest part)."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelector('#model').options.length === 2")
    assert page.is_hidden("#result")
    before = page.evaluate(OUTSIDE)
    page.fill("#steps", "4")
    page.click("#go")
    page.wait_for_function("() => document.body.dataset.state === 'done'", timeout=30000)
    assert page.is_visible("#result") and page.is_visible("#dl-png") and page.is_visible("#dl-gif")
    after = page.evaluate(OUTSIDE)
    for layout in (before, after):
        assert layout["scroll"] == layout["width"] == width and layout["outside"] == [], layout
    size = page.eval_on_selector("#dl-size", "s => s.getBoundingClientRect().width")
    assert size >= 80  # the size menu shows its value, not a bare arrow
    page.close()


@pytest.mark.browser
def test_a_finished_run_can_be_scrubbed_and_replayed_frame_by_frame(browser, server):
    import httpx

    from conftest import sse_events

    params = {"model": "base", "label": 2, "steps": 6, "scheduler": "ddim", "seed": 31, "every": 1,
              "guidance_scale": 2}
    with httpx.stream("GET", server.url + "/generate/stream", params=params, timeout=30) as r:
        sent = [d for e, _, d in sse_events(r.iter_lines()) if e in ("start", "step")]
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelector('#model').options.length === 2")
    assert page.is_hidden("#replay")
    page.click("#digits button[data-digit='2']")
    page.fill("#steps", "6")
    page.select_option("#scheduler", "ddim")
    page.fill("#seed", "31")
    page.click("#go")
    page.wait_for_function("() => document.body.dataset.state === 'done'", timeout=30000)
    assert page.is_visible("#replay") and page.get_attribute("#scrub", "max") == "6"
    for i, frame in enumerate(sent):  # every frame of the run, the noise first, as the server sent it
        page.eval_on_selector("#scrub", "(s, v) => { s.value = v; s.dispatchEvent(new Event('input')); }", str(i))
        assert page.get_attribute("#xt", "src") == "data:image/png;base64," + frame["x_t"]
        if i:
            assert page.get_attribute("#x0", "src") == "data:image/png;base64," + frame["x0"]
        assert page.eval_on_selector("#progress", "p => p.value") == pytest.approx(i / 6)
    page.select_option("#speed", "30")
    page.click("#play")
    page.wait_for_function("() => document.querySelector('#viewer').dataset.replayed === '7'", timeout=10000)
    page.wait_for_function("() => document.querySelector('#play').textContent === 'Replay'")
    assert page.get_attribute("#xt", "src") == "data:image/png;base64," + sent[-1]["x_t"]
    page.close()


@pytest.mark.browser
@pytest.mark.parametrize("path, rendered", [("/docs", ".opblock")])
def test_api_docs_render_with_the_network_blocked(browser, server, path, rendered):
    """Every request not to the server itself is refused: the docs' files
    must come from the service."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside = []

    def only_the_server(route):
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()
    page.route("**/*", only_the_server)
    page.goto(server.url + path)
    page.wait_for_selector(rendered, timeout=20000)
    assert page.locator(rendered).count() >= 5  # the operations are there
    assert outside == []
    page.close()
