"""The page in a real headless Chromium (Debian's `chromium`, driven by
Playwright; never a downloaded browser), against the real server: each view
(generate, draw, compare, morph, noising), phones, API keys, history."""
from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import Server, add_tiny_onestep, sse_events
from engine.io.images import png_parameters, read_digit

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
DONE = "() => document.body.dataset.state === 'done'"
READY = "() => document.querySelector('#model').options.length === 2"


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


class Watched:
    """A page (in its own context: its own storage) whose script errors, console errors and
    CSP violations are collected; `check()` asserts there were none."""

    def __init__(self, browser, url: str, width=1100, height=800, **context):
        self.context = browser.new_context(viewport={"width": width, "height": height}, **context)
        self.page = self.context.new_page()
        self.errors = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.goto(url)

    def check(self):
        assert self.errors == []
        self.context.close()


def src_png(page, selector: str) -> bytes:
    src = page.get_attribute(selector, "src")
    assert src.startswith("data:image/png;base64,"), src
    return base64.b64decode(src.split(",", 1)[1])


@pytest.mark.browser
def test_generate_watches_the_base_model_with_probs_schedule_and_filmstrip(browser, server):
    w = Watched(browser, server.url + "/")
    page = w.page
    page.wait_for_function(READY)
    # watch mode: the page opens on the base model with its steps, whatever the server's default
    assert page.input_value("#model") == "base" and page.input_value("#steps") == "20"
    assert page.is_hidden("#result") and page.is_checked("#probs")
    page.click("#digits button[data-digit='7']")
    page.fill("#steps", "12")
    page.select_option("#scheduler", "ddim")
    assert "deterministic" in page.inner_text("#scheduler-why")
    page.fill("#seed", "4242")
    page.click("#go")
    page.wait_for_function(DONE, timeout=30000)
    assert page.eval_on_selector("#viewer", "v => Number(v.dataset.frames)") == 12
    assert page.locator("#filmstrip img").count() == 12
    assert page.is_visible("#probs-chart") and "p(7)" in page.inner_text("#probs-why")
    assert page.is_visible("#schedule")
    meta = page.inner_text("#result-meta")
    assert "A 7" in meta and "seed 4242" in meta and "ddim, 12 steps" in meta
    assert page.eval_on_selector("#final", "i => i.complete && i.naturalWidth") == 28

    # the final image is the one the API gives for these settings, parameters and all
    direct = httpx.post(server.url + "/generate", json={"model": "base", "label": 7, "steps": 12, "scheduler": "ddim",
                                                         "seed": 4242})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(src_png(page, "#final")))),
                          np.asarray(Image.open(io.BytesIO(direct.content))))
    with page.expect_download() as dl:
        page.click("#dl-png")
    params = png_parameters(open(dl.value.path(), "rb").read())
    assert params["label"] == 7 and params["seed"] == 4242 and params["size"] == 224 and params["scheduler"] == "ddim"
    with page.expect_download() as dl:
        page.click("#dl-gif")
    assert open(dl.value.path(), "rb").read(6) == b"GIF89a"

    # a tap on the filmstrip shows that step's frame
    page.click("#filmstrip img >> nth=2")
    assert page.get_attribute("#viewer", "data-shown") == "3" and "Step 3 / 12" in page.inner_text("#status")
    w.check()


@pytest.mark.browser
def test_history_survives_a_reload_and_a_tap_puts_its_settings_back(browser, server):
    w = Watched(browser, server.url + "/")
    page = w.page
    page.wait_for_function(READY)
    page.click("#digits button[data-digit='3']")
    page.fill("#steps", "5")
    page.fill("#seed", "99")
    page.click("#go")
    page.wait_for_function(DONE, timeout=30000)
    page.reload()
    page.wait_for_function(READY)
    assert page.locator("#history-items button").count() == 1 and page.input_value("#seed") == ""
    page.click("#history-items button")   # a tap, not a hover tooltip
    assert page.input_value("#seed") == "99" and page.input_value("#steps") == "5"
    assert page.get_attribute("#digits button[data-digit='3']", "aria-checked") == "true"
    w.check()


@pytest.mark.browser
def test_a_refused_parameter_shows_the_servers_message(browser, server):
    w = Watched(browser, server.url + "/")
    page = w.page
    page.wait_for_function(READY)
    page.evaluate("document.querySelector('#steps').removeAttribute('max')")  # past the page's own check
    page.fill("#steps", "1000")
    page.click("#go")
    page.wait_for_function("() => !document.querySelector('#error').hidden", timeout=20000)
    assert "422" in page.inner_text("#error") and "steps" in page.inner_text("#error")
    assert page.is_hidden("#result")
    assert not page.is_disabled("#go")
    w.errors = [e for e in w.errors if "422" not in e]  # the browser logs the refused request itself
    w.check()


@pytest.mark.browser
def test_the_fast_model_is_one_click_away_and_says_what_it_is(browser, server):
    w = Watched(browser, server.url + "/")
    page = w.page
    page.wait_for_function(READY)
    names = page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")
    assert any("Fast model" in n for n in names) and any("Base model" in n for n in names)
    page.select_option("#model", "fast")
    assert page.input_value("#steps") == "4" and page.get_attribute("#steps", "max") == "50"
    assert page.eval_on_selector_all("#scheduler option", "os => os.map(o => o.value)") == ["tcd", "lcm"]
    assert page.is_disabled("#guidance") and "built in" in page.inner_text("#guidance-out")
    page.fill("#seed", "77")
    page.click("#go")
    page.wait_for_function(DONE, timeout=30000)
    meta = page.inner_text("#result-meta")
    assert "fast model" in meta and "tcd, 4 steps" in meta and "guidance 1 " not in meta and "built in" in meta
    page.select_option("#model", "base")
    assert page.input_value("#steps") == "20" and not page.is_disabled("#guidance")
    w.check()


@pytest.mark.browser
def test_the_one_step_model_is_listed_when_served_and_says_what_it_is(browser, tiny_weights, tmp_path):
    import shutil
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    srv = Server(add_tiny_onestep(weights), tmp_path / "onestep.log")
    try:
        w = Watched(browser, srv.url + "/")
        page = w.page
        page.wait_for_function("() => document.querySelector('#model').options.length === 3")
        names = page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")
        assert any("One-step model" in n for n in names), names
        page.select_option("#model", "onestep")
        assert page.input_value("#steps") == "1"
        assert "ONE step" in page.inner_text("#model-why")
        page.click("#go")
        page.wait_for_function(DONE, timeout=30000)
        assert "onestep" in page.inner_text("#result-meta") and "1 step" in page.inner_text("#result-meta")
        w.check()
    finally:
        srv.stop()


OUTSIDE = """() => { const W = document.documentElement.clientWidth; const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width && (r.right > W + 0.5 || r.left < -0.5) && !el.closest('.filmstrip')) out.push(`${el.tagName}#${el.id}`);
  }
  return {width: W, scroll: document.documentElement.scrollWidth, outside: out}; }"""
IN_VIEW = """s => { const r = document.querySelector(s).getBoundingClientRect();
  return r.top >= 0 && r.bottom <= window.innerHeight && r.width > 0; }"""


@pytest.mark.browser
def test_on_a_phone_the_frames_come_into_view_side_by_side(browser, server):
    w = Watched(browser, server.url + "/", width=390, height=844, has_touch=True, is_mobile=True)
    page = w.page
    page.wait_for_function(READY)
    assert not page.evaluate(IN_VIEW, "#xt")   # below the form before Generate
    page.tap("#go")
    # the viewer is scrolled into view by the tap itself, before any frame is computed ...
    assert page.evaluate(IN_VIEW, "#xt") and page.evaluate(IN_VIEW, "#x0")
    # ... and the first frame (the starting noise) lands there
    page.wait_for_function("() => document.querySelector('#xt').hasAttribute('src')", timeout=20000)
    assert page.evaluate(IN_VIEW, "#xt")
    xt, x0 = (page.eval_on_selector(s, "e => e.getBoundingClientRect().toJSON()") for s in ("#xt", "#x0"))
    assert xt["top"] == x0["top"] and xt["right"] <= x0["left"] and xt["width"] >= 150   # side by side
    page.wait_for_function(DONE, timeout=30000)
    w.check()


@pytest.mark.browser
@pytest.mark.parametrize("width", [320, 390, 1280])
def test_no_view_is_wider_than_the_screen(browser, server, width):
    w = Watched(browser, server.url + "/", width=width, height=900)
    page = w.page
    page.wait_for_function(READY)
    page.fill("#steps", "4")
    page.click("#go")
    page.wait_for_function(DONE, timeout=30000)
    for tab in ("generate", "draw", "compare", "morph", "noising"):
        page.click(f"#tab-{tab if tab != 'noising' else 'noise'}")
        layout = page.evaluate(OUTSIDE)
        assert layout["scroll"] == layout["width"] == width and layout["outside"] == [], (tab, layout)
    w.check()


@pytest.mark.browser
def test_with_api_keys_on_the_page_asks_for_one_and_then_works(browser, tiny_weights, tmp_path):
    srv = Server(tiny_weights, tmp_path / "keyed.log", api_keys="s3cret-key")
    try:
        w = Watched(browser, srv.url + "/")
        page = w.page
        page.wait_for_function("() => !document.querySelector('#notice').hidden")
        assert "needs an API key" in page.inner_text("#notice") and "401" in page.inner_text("#notice")
        assert page.get_attribute("#key-panel", "open") is not None
        page.fill("#key", "wrong")
        page.click("#key-save")
        page.wait_for_function("() => document.querySelector('#notice').textContent.includes('refused')")
        page.fill("#key", "s3cret-key")
        page.click("#key-save")
        page.wait_for_function(READY)
        assert page.is_hidden("#notice") and page.input_value("#steps") == "20"   # the model's own defaults
        page.fill("#steps", "3")
        page.click("#go")   # the stream through fetch, with the key in its header
        page.wait_for_function(DONE, timeout=30000)
        assert page.eval_on_selector("#viewer", "v => Number(v.dataset.frames)") == 3
        with page.expect_download() as dl:
            page.click("#dl-png")
        assert png_parameters(open(dl.value.path(), "rb").read())["steps"] == 3
        page.reload()   # kept for the tab (not remembered): still there after a reload
        page.wait_for_function(READY)
        assert page.is_hidden("#notice")
        w.errors = [e for e in w.errors if "401" not in e]   # the refused /info requests the browser logs
        w.check()
    finally:
        srv.stop()


def stroke(page, points, pointer="mouse"):
    """Draw through the pad's pointer events, as mouse, pen or touch send them."""
    page.eval_on_selector("#pad", "c => c.scrollIntoView({block: 'center'})")   # a mouse acts in the viewport
    box = page.eval_on_selector("#pad", "c => c.getBoundingClientRect().toJSON()")
    at = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    if pointer == "mouse":
        page.mouse.move(*at[0])
        page.mouse.down()
        for p in at[1:]:
            page.mouse.move(*p, steps=4)
        page.mouse.up()
        return
    page.evaluate("""([at, type]) => {
      const el = document.querySelector('#pad-wrap');
      const ev = (name, [x, y]) => el.dispatchEvent(new PointerEvent(name, {clientX: x, clientY: y, pointerId: 7,
        pointerType: type, pressure: 0.7, bubbles: true}));
      ev('pointerdown', at[0]); for (const p of at.slice(1)) ev('pointermove', p); ev('pointerup', at.at(-1));
    }""", [at, pointer])


@pytest.mark.browser
def test_a_drawn_stroke_is_completed_and_the_kept_part_comes_back_exactly(browser, server):
    w = Watched(browser, server.url + "/")
    page = w.page
    page.wait_for_function(READY)
    page.fill("#steps", "6")
    page.fill("#seed", "5")
    page.click("#tab-draw")
    page.click("#draw-digits button[data-digit='7']")   # the digit is picked on the pad's panel too
    assert page.get_attribute("#digits button[data-digit='7']", "aria-checked") == "true"
    assert page.is_hidden("#strength-label") is False and "Strength" in page.inner_text("#panel-draw")
    stroke(page, [(0.25, 0.25), (0.75, 0.25), (0.45, 0.8)])             # a 7 with the mouse
    stroke(page, [(0.35, 0.5), (0.6, 0.5)], pointer="touch")            # its bar with a finger
    assert page.get_attribute("#pad", "data-strokes") == "2"
    page.click("#pad-mask-half")
    assert page.is_checked("input[name=edit][value=complete]") and "Inpainting" in page.inner_text("#edit-why")
    drawing = base64.b64decode(page.evaluate("document.querySelector('#pad').toDataURL('image/png').split(',')[1]"))
    page.click("#draw-go")
    page.wait_for_function(DONE, timeout=60000)
    assert "completed" in page.inner_text("#result-meta") and page.is_hidden("#dl-gif")
    assert page.eval_on_selector("#viewer", "v => Number(v.dataset.frames)") > 6   # RePaint's jumps: more model steps
    final = np.asarray(Image.open(io.BytesIO(src_png(page, "#final"))), dtype=np.int16)
    kept = ((read_digit(drawing)[0] + 1) * 127.5).round().astype(np.int16)
    assert np.abs(final[:14] - kept[:14]).max() <= 1   # the upper half, not marked, is the drawing's

    # clean up the same drawing instead, with a pen
    page.click("#pad-clear")
    stroke(page, [(0.3, 0.2), (0.7, 0.2), (0.4, 0.85)], pointer="pen")
    page.check("input[name=edit][value=clean]")
    page.eval_on_selector("#strength", "s => { s.value = '0.5'; s.dispatchEvent(new Event('input')); }")
    assert page.inner_text("#strength-out") == "0.50"
    page.click("#draw-go")
    page.wait_for_function(DONE, timeout=60000)
    assert "cleaned up at strength 0.5" in page.inner_text("#result-meta")
    assert page.eval_on_selector("#viewer", "v => Number(v.dataset.frames)") == 3   # int(6 x 0.5) steps run
    w.check()


@pytest.mark.browser
def test_a_png_picked_or_dropped_starts_the_pad(browser, server, tmp_path):
    digit = np.zeros((56, 56), np.uint8)
    digit[10:46, 24:32] = 255   # a 1
    path = tmp_path / "one.png"
    Image.fromarray(digit).save(path)
    w = Watched(browser, server.url + "/")
    page = w.page
    page.wait_for_function(READY)
    page.click("#digits button[data-digit='1']")
    page.fill("#steps", "4")
    page.click("#tab-draw")
    page.set_input_files("#pad-file", str(path))
    page.wait_for_function("() => document.querySelector('#pad').dataset.strokes === '1'")
    lit = page.evaluate("""() => { const c = document.querySelector('#pad');
      const d = c.getContext('2d').getImageData(140, 140, 1, 1).data; return d[0]; }""")
    assert lit == 255   # the middle of the 1 is on the pad
    # dropped on the pad, as a file dragged from the desktop arrives
    page.click("#pad-clear")
    page.evaluate("""b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
      const dt = new DataTransfer(); dt.items.add(new File([bytes], 'one.png', {type: 'image/png'}));
      document.querySelector('#pad-wrap').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true})); }""",
                  base64.b64encode(path.read_bytes()).decode())
    page.wait_for_function("() => document.querySelector('#pad').dataset.strokes === '1'")
    page.click("#draw-go")
    page.wait_for_function(DONE, timeout=60000)
    w.check()


@pytest.mark.browser
def test_a_comparison_grid_forms_all_its_cells_together(browser, server):
    w = Watched(browser, server.url + "/")
    page = w.page
    page.wait_for_function(READY)
    page.fill("#seed", "11")
    page.click("#tab-compare")
    page.select_option("#grid-x", "guidance_scale")
    page.fill("#grid-x-values", "0, 2")
    page.select_option("#grid-y", "steps")
    page.fill("#grid-y-values", "3, 5")
    page.click("#grid-go")
    page.wait_for_function("() => document.querySelector('#grid').dataset.done === '4'", timeout=60000)
    grid = page.locator("#grid")
    assert grid.get_attribute("data-cells") == "4" and int(grid.get_attribute("data-frames")) == 2 * 3 + 2 * 5
    assert page.locator("#grid img.final").count() == 4
    heads = page.eval_on_selector_all("#grid .axis", "s => s.map(e => e.textContent)")
    assert heads == ["guidance 0", "guidance 2", "steps 3", "steps 5"]
    # a cell is what /generate gives for its settings alone
    cell = src_png(page, "#grid img >> nth=3")
    alone = httpx.post(server.url + "/generate", json={"model": "base", "label": 5, "seed": 11, "steps": 5,
                                                       "guidance_scale": 2, "scheduler": "dpm"})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(cell))), np.asarray(Image.open(io.BytesIO(alone.content))))
    assert "Done: 4 cells" in page.inner_text("#grid-status")
    w.check()


@pytest.mark.browser
def test_a_morph_plays_there_and_back_and_can_be_scrubbed(browser, server):
    w = Watched(browser, server.url + "/")
    page = w.page
    page.wait_for_function(READY)
    page.fill("#steps", "4")
    page.click("#tab-morph")
    page.fill("#morph-n", "5")
    page.click("#morph-go")
    page.wait_for_function("() => Number(document.querySelector('#morph-view').dataset.played) >= 8", timeout=60000)
    assert page.locator("#morph-strip img").count() == 5
    page.click("#morph-play")   # pause, then pick a frame
    page.eval_on_selector("#morph-scrub", "s => { s.value = '2'; s.dispatchEvent(new Event('input')); }")
    assert page.get_attribute("#morph-view", "data-shown") == "2" and "alpha 0.50" in page.inner_text("#morph-out")
    assert page.get_attribute("#morph-frame", "src") == page.get_attribute("#morph-strip img >> nth=2", "src")
    w.check()


@pytest.mark.browser
def test_the_noising_view_follows_the_models_schedule(browser, server):
    info = httpx.get(server.url + "/info").json()
    abar = info["models"]["base"]["noise_schedule"]["alphas_cumprod"]
    w = Watched(browser, server.url + "/")
    page = w.page
    page.wait_for_function(READY)
    page.click("#tab-noise")
    page.wait_for_function("() => document.querySelector('#noise-xt').dataset.t === '300'", timeout=20000)
    at = """t => { const s = document.querySelector('#noise-t'); s.value = String(t);
      s.dispatchEvent(new Event('input'));
      const grey = (el) => { const c = document.createElement('canvas'); c.width = c.height = 28;
        const g = c.getContext('2d'); g.drawImage(el, 0, 0, 28, 28);
        return [...g.getImageData(0, 0, 28, 28).data].filter((_, i) => i % 4 === 0); };
      return {xt: grey(document.querySelector('#noise-xt')), x0: grey(document.querySelector('#noise-x0')),
              meta: document.querySelector('#noise-meta').textContent}; }"""
    clean = page.evaluate(at, 0)   # sqrt(1 - abar_0) = 0.01: the digit itself, to a few grey levels
    assert max(abs(a - b) for a, b in zip(clean["xt"], clean["x0"])) <= 6
    mid = page.evaluate(at, 500)
    shown = float(mid["meta"].split("ᾱ_t = ")[1].split(":")[0])
    assert shown == pytest.approx(abar[500], rel=5e-3)
    noisy = page.evaluate(at, len(abar) - 1)   # sqrt(abar) < 0.01: noise, mid-grey on average
    assert abs(sum(noisy["xt"]) / 784 - 127.5) < 15
    w.check()


@pytest.mark.browser
def test_a_finished_run_can_be_scrubbed_and_replayed_frame_by_frame(browser, server):
    params = {"model": "base", "label": 2, "steps": 6, "scheduler": "ddim", "seed": 31, "every": 1,
              "guidance_scale": 2}
    with httpx.stream("GET", server.url + "/generate/stream", params=params, timeout=30) as r:
        sent = [d for e, _, d in sse_events(r.iter_lines()) if e in ("start", "step")]
    w = Watched(browser, server.url + "/")
    page = w.page
    page.wait_for_function(READY)
    assert page.is_hidden("#replay")
    page.click("#digits button[data-digit='2']")
    page.fill("#steps", "6")
    page.select_option("#scheduler", "ddim")
    page.eval_on_selector("#guidance", "s => { s.value = '2'; s.dispatchEvent(new Event('input')); }")
    page.fill("#seed", "31")
    page.click("#go")
    page.wait_for_function(DONE, timeout=30000)
    assert page.is_visible("#replay") and page.get_attribute("#scrub", "max") == "6"
    for i, frame in enumerate(sent):  # every frame of the run, the noise first, as the server sent it
        page.eval_on_selector("#scrub", "(s, v) => { s.value = v; s.dispatchEvent(new Event('input')); }", str(i))
        assert page.get_attribute("#xt", "src") == "data:image/png;base64," + frame["x_t"]
        if i:
            assert page.get_attribute("#x0", "src") == "data:image/png;base64," + frame["x0"]
    page.click("#play")
    page.wait_for_function("() => document.querySelector('#viewer').dataset.replayed === '7'", timeout=10000)
    page.wait_for_function("() => document.querySelector('#play').textContent === 'Replay'")
    assert page.get_attribute("#xt", "src") == "data:image/png;base64," + sent[-1]["x_t"]
    w.check()


@pytest.mark.browser
def test_every_control_has_a_name_and_the_tabs_work_from_the_keyboard(browser, server):
    w = Watched(browser, server.url + "/")
    page = w.page
    page.wait_for_function(READY)
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, button, canvas[aria-label], textarea')]
      .filter(e => !e.hidden && e.type !== 'hidden')
      .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
      .map(e => e.outerHTML.slice(0, 80))""")
    assert unnamed == []
    page.focus("#tab-generate")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-draw", "aria-selected") == "true" and page.is_visible("#pad")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert page.get_attribute("#tab-noise", "aria-selected") == "true"
    w.check()


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


def _luminance(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_text_colours_meet_wcag_aa_contrast_on_their_backgrounds():
    """WCAG 2's contrast ratio, (L1 + 0.05) / (L2 + 0.05), of every text colour
    of the page's palette on the backgrounds it is used on: at least 4.5."""
    import re

    css = (Path(__file__).resolve().parents[1] / "app" / "static" / "style.css").read_text()
    var = dict(re.findall(r"--([a-z0-9-]+):\s*(#[0-9a-fA-F]{6})", css))
    pairs = [("text", "bg"), ("text", "card"), ("muted", "bg"), ("muted", "card"), ("bad", "card"),
             ("accent", "bg"), ("accent", "card")]
    for fg, bg in pairs:
        hi, lo = sorted((_luminance(var[fg]), _luminance(var[bg])), reverse=True)
        assert (hi + 0.05) / (lo + 0.05) >= 4.5, (fg, bg)
    # a primary button's dark text on the accent colour
    hi, lo = sorted((_luminance(var["accent"]), _luminance("#0b0d12")), reverse=True)
    assert (hi + 0.05) / (lo + 0.05) >= 4.5 and "color: #0b0d12" in css
