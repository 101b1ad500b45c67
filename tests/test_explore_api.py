"""The edit/explore API on a real server (tiny weights, both models):
image-to-image and inpainting from JSON and multipart bodies, bad images,
p(digit | x0) in the stream, morphs, comparison grids, and PNGs that carry
the parameters that make them again."""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import sse_events

openai = pytest.importorskip("openai", reason="the openai package is in the test extras")


def png(a: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.int16)


def params_of(data: bytes) -> dict:
    return json.loads(Image.open(io.BytesIO(data)).text["parameters"])


@pytest.fixture(scope="module")
def seven(client) -> bytes:
    """A digit to edit: one the server drew, as a plain 28 x 28 PNG."""
    r = client.post("/generate", params={"label": 7, "seed": 5, "steps": 4})
    return png(pixels(r.content).astype(np.uint8))


LOWER = np.zeros((28, 28), np.uint8)
LOWER[14:] = 255  # the model draws the lower half


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- image-to-image and inpainting -----------------------------------------------------------
def test_image_to_image_from_json_and_from_multipart_is_the_same(client, seven):
    body = {"label": 3, "seed": 9, "steps": 6, "strength": 0.5, "image": b64(seven)}
    a = client.post("/generate", json=body)
    assert a.status_code == 200, a.text
    fields = {k: str(v) for k, v in body.items() if k != "image"}
    b = client.post("/generate", data=fields, files={"image": ("seven.png", seven, "image/png")})
    assert b.status_code == 200, b.text
    assert a.content == b.content
    p = params_of(a.content)
    assert (p["strength"], p["label"], p["seed"]) == (0.5, 3, 9) and len(p["image_sha256"]) == 64
    assert client.post("/generate", json={**body, "strength": 1.0}).content != a.content


def test_inpainting_keeps_the_given_pixels(client, seven):
    for model in ("base", "fast"):
        r = client.post("/generate", json={"label": 7, "seed": 2, "model": model, "image": b64(seven),
                                           "mask_image": b64(png(LOWER)), "jump_length": 2, "jump_n_sample": 2}
                        if model == "base" else {"label": 7, "seed": 2, "model": model, "image": b64(seven),
                                                 "mask_image": b64(png(LOWER))})
        assert r.status_code == 200, (model, r.text)
        got, given = pixels(r.content), pixels(seven)
        assert np.abs(got[:14] - given[:14]).max() <= 1, model  # the kept half, within a grey level (8-bit)
        assert np.abs(got[14:] - given[14:]).mean() > 0.5, model
    assert params_of(r.content)["mask_image_sha256"]


@pytest.mark.parametrize("make, status, words", [
    (lambda s: b"GIF89a not a png", 422, "not a PNG"),
    (lambda s: png(np.zeros((1, 5000), np.uint8)), 422, "at most 4096 a side"),
    (lambda s: png(np.zeros((4, 4, 4), np.uint8), "RGBA"), 200, ""),   # transparent: a black image, readable
    (lambda s: s[:60], 422, "cannot be read"),
])
def test_bad_images_are_clear_4xx(client, seven, make, status, words):
    r = client.post("/generate", json={"label": 1, "steps": 2, "image": b64(make(seven))})
    assert r.status_code == status, r.text
    if words:
        assert r.json()["errors"][0]["loc"] == ["body", "image"] and words in r.json()["detail"]


def test_a_decompression_bomb_is_refused_unopened(client):
    """A PNG whose header says 100,000 x 100,000 pixels (10 G pixels) and whose data is a few bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    r = client.post("/generate", json={"label": 1, "steps": 2, "image": b64(bomb)})
    assert r.status_code == 422 and "100000 x 100000" in r.json()["detail"]


def test_a_mask_must_fit_its_image_and_bodies_are_bounded(client, seven):
    small = png(np.zeros((14, 14), np.uint8))
    r = client.post("/generate", json={"label": 1, "image": b64(seven), "mask_image": b64(small)})
    assert r.status_code == 422 and "the same size" in r.json()["detail"]
    r = client.post("/generate", json={"label": 1, "mask_image": b64(small)})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"][-1] == "mask_image"
    r = client.post("/generate", json={"label": 1, "image": "not base64!"})
    assert r.status_code == 422 and "base64" in r.json()["detail"]
    big = client.post("/generate", json={"label": 1, "image": "A" * (2 << 20)})
    assert big.status_code == 413


# -- p(digit | x0) ---------------------------------------------------------------------------------
def test_the_stream_carries_the_digits_probabilities_when_asked(client):
    with client.stream("GET", "/generate/stream", params={"label": 4, "steps": 3, "probs": "true", "seed": 1}) as r:
        steps = [d for e, _, d in sse_events(r.iter_lines()) if e == "step"]
    assert len(steps) == 3 and all(len(s["probs"]) == 10 and abs(sum(s["probs"]) - 1) < 1e-3 for s in steps)
    with client.stream("GET", "/generate/stream", params={"label": 4, "steps": 3, "seed": 1}) as r:
        plain = [d for e, _, d in sse_events(r.iter_lines()) if e == "step"]
    assert "probs" not in plain[0] and [s["x0"] for s in plain] == [s["x0"] for s in steps]


def test_a_post_stream_takes_an_image(client, seven):
    with client.stream("POST", "/generate/stream", json={"label": 2, "steps": 4, "strength": 0.5, "seed": 3,
                                                         "image": b64(seven)}) as r:
        assert r.status_code == 200
        events = list(sse_events(r.iter_lines()))
    assert [e for e, _, _ in events] == ["start", "step", "step", "done"]  # int(4 x 0.5) steps
    assert events[-1][2]["strength"] == 0.5


# -- morph ---------------------------------------------------------------------------------------------
def test_a_morphs_ends_are_the_plain_generations_and_every_frame_is_made_alone(client):
    q = {"label": 2, "label_b": 8, "seed": 21, "seed_b": 22, "n": 4, "steps": 5, "format": "json"}
    frames = client.post("/morph", params=q).json()["frames"]
    assert [f["alpha"] for f in frames] == [0.0, 1 / 3, 2 / 3, 1.0]
    first = client.post("/generate", params={"label": 2, "seed": 21, "steps": 5}).content
    last = client.post("/generate", params={"label": 8, "seed": 22, "steps": 5}).content
    assert np.array_equal(pixels(base64.b64decode(frames[0]["png_base64"])), pixels(first))
    assert np.array_equal(pixels(base64.b64decode(frames[-1]["png_base64"])), pixels(last))
    for f in frames:  # the frame's own parameters give its bytes, parameters chunk included
        p = {k: v for k, v in f["parameters"].items() if k != "engine"}
        alone = client.post("/generate", json=p)
        assert alone.status_code == 200 and alone.content == base64.b64decode(f["png_base64"]), p
    strip = client.get("/morph", params={**q, "format": "png", "size": 28})
    assert strip.headers["content-type"] == "image/png" and Image.open(io.BytesIO(strip.content)).width > 4 * 28
    gif = client.get("/morph", params={**q, "format": "gif"})
    assert gif.content[:6] == b"GIF89a"


def test_a_morph_streams_its_frames(client):
    with client.stream("GET", "/morph/stream", params={"label": 1, "label_b": 6, "seed": 1, "seed_b": 2, "n": 3,
                                                       "steps": 2}) as r:
        events = list(sse_events(r.iter_lines()))
    kinds = [e for e, _, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("cell") == 3 and kinds.count("step") == 6
    assert [c["alpha"] for c in events[0][2]["cells"]] == [0.0, 0.5, 1.0]


# -- comparison grid -------------------------------------------------------------------------------------
GRID = {"label": 3, "model": "base", "seed": 7, "x": {"param": "guidance_scale", "values": [0, 1, 2.5]},
        "y": {"param": "steps", "values": [2, 4]}}


def test_a_grid_cell_is_the_same_bytes_as_the_cell_asked_alone(client):
    r = client.post("/grid", json={**GRID, "format": "json"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["columns"] == ["guidance_scale=0", "guidance_scale=1", "guidance_scale=2.5"]
    assert data["rows"] == ["steps=2", "steps=4"] and len(data["cells"]) == 6
    for cell in data["cells"]:
        p = {k: v for k, v in cell["parameters"].items() if k != "engine"}
        assert client.post("/generate", json=p).content == base64.b64decode(cell["png_base64"]), p
    grid = client.post("/grid", json=GRID)
    assert grid.headers["content-type"] == "image/png"


def test_a_grid_streams_every_cell_step_by_step_as_each_would_alone(client):
    with client.stream("POST", "/grid/stream", json=GRID) as r:
        events = list(sse_events(r.iter_lines()))
    steps = [d for e, _, d in events if e == "step"]
    assert len(steps) == 3 * 2 + 3 * 4 and events[-1][0] == "done"
    cell = next(c for c in events[0][2]["cells"] if c["column"] == 2 and c["row"] == 1)
    with client.stream("GET", "/generate/stream", params={"label": 3, "model": "base", "seed": 7,
                                                          "guidance_scale": 2.5, "steps": 4}) as r:
        alone = [d for e, _, d in sse_events(r.iter_lines()) if e == "step"]
    mine = [s for s in steps if s["cell"] == cell["cell"]]
    assert [(s["x_t"], s["x0"]) for s in mine] == [(s["x_t"], s["x0"]) for s in alone]


def test_grid_requests_are_checked(client):
    for body, field in [({**GRID, "x": {"param": "steps", "values": [2]}, "y": {"param": "steps", "values": [3]}}, "y"),
                        ({**GRID, "x": {"param": "seed", "values": list(range(16))},
                          "y": {"param": "steps", "values": list(range(1, 6))}}, "x"),
                        ({**GRID, "x": {"param": "scheduler", "values": ["ddim", "tcd"]}}, "scheduler"),
                        ({**GRID, "x": {"param": "colour", "values": [1]}}, "param")]:
        r = client.post("/grid", json=body)
        assert r.status_code == 422 and field in json.dumps(r.json()["errors"]), (body, r.text)


# -- PNG parameters ------------------------------------------------------------------------------------------
def test_png_info_reads_back_a_request_that_makes_the_same_bytes(client):
    made = client.post("/generate", params={"label": 9, "seed": 123, "steps": 5, "scheduler": "ddim", "eta": 0.4,
                                            "size": 56})
    info = client.post("/png-info", content=made.content, headers={"content-type": "image/png"}).json()
    assert info["parameters"]["engine"].startswith("digitgen ")
    again = client.post(info["request"]["path"], json=info["request"]["body"])
    assert again.content == made.content
    plain = png(np.zeros((8, 8), np.uint8))
    r = client.post("/png-info", content=plain, headers={"content-type": "image/png"})
    assert r.status_code == 422 and "carries no generation parameters" in r.json()["detail"]


# -- OpenAI ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=60)


def test_openai_edits_variations_models_and_seeds_through_the_sdk(sdk, seven):
    mask = np.zeros((28, 28, 4), np.uint8)
    mask[..., 3] = 255
    mask[14:, :, 3] = 0  # OpenAI's convention: transparent where the model draws
    edit = sdk.images.edit(image=("seven.png", seven, "image/png"), mask=("mask.png", png(mask, "RGBA"), "image/png"),
                           prompt="a 7", n=2, size="28x28", response_format="b64_json", extra_body={"seed": 4})
    assert len(edit.data) == 2
    kept = pixels(base64.b64decode(edit.data[0].b64_json))
    assert np.abs(kept[:14] - pixels(seven)[:14]).max() <= 1
    again = sdk.images.edit(image=("seven.png", seven, "image/png"), mask=("mask.png", png(mask, "RGBA"), "image/png"),
                            prompt="a 7", n=2, size="28x28", response_format="b64_json", extra_body={"seed": 4})
    assert again.data[1].b64_json == edit.data[1].b64_json  # seeded: reproducible
    var = sdk.images.create_variation(image=("seven.png", seven, "image/png"), n=2, size="56x56",
                                      response_format="b64_json")
    assert len(var.data) == 2 and Image.open(io.BytesIO(base64.b64decode(var.data[0].b64_json))).size == (56, 56)
    names = {m.id for m in sdk.models.list().data}
    assert names == {"digitgen-base", "digitgen-fast"}
    gen = sdk.images.generate(prompt="3", size="28x28", extra_body={"seed": 77})
    assert gen.data[0].b64_json == sdk.images.generate(prompt="3", size="28x28", extra_body={"seed": 77}).data[0].b64_json
    with pytest.raises(openai.BadRequestError) as e:
        sdk.images.edit(image=("seven.png", seven, "image/png"), mask=("m.png", png(LOWER), "image/png"), prompt="7")
    assert e.value.body["param"] == "mask" and "transparency" in e.value.body["message"]


def test_the_engine_version_a_png_records_is_looked_up_once(monkeypatch):
    """importlib.metadata scans sys.path on every call: per PNG it was a
    third of the event loop's time at 16 clients of the one-step model."""
    import importlib.metadata

    from engine import generation

    calls = []
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: calls.append(name) or real(name))
    generation.engine_version.cache_clear()
    first = generation.engine_version()
    assert [generation.engine_version() for _ in range(5)] == [first] * 5
    assert calls == ["digitgen"]
