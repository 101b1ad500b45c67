"""The service over real HTTP: a uvicorn subprocess on loopback with tiny
real weights (tests/conftest.py). Few steps per request keep it quick."""
from __future__ import annotations

import base64
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server, sse_events

STEPS = 4


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# -- images ------------------------------------------------------------------
def test_png_has_requested_size_and_reports_its_seed(client):
    r = client.post("/generate", params={"label": 5, "steps": STEPS, "size": 84})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    img = decode(r.content)
    assert img.format == "PNG" and img.size == (84, 84) and img.mode == "L"
    seed = int(r.headers["x-seed"])
    assert 0 <= seed < 2**32
    again = client.post("/generate", params={"label": 5, "steps": STEPS, "size": 84, "seed": seed})
    assert again.content == r.content


def test_n_gives_a_grid_png(client):
    r = client.post("/generate", params={"label": 1, "steps": STEPS, "n": 4, "seed": 9})
    assert r.status_code == 200, r.text
    # 2 x 2 tiles of 28 px with a 2 px gutter around every tile
    assert decode(r.content).size == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)


def test_json_format_gives_each_image_with_its_own_seed(client):
    r = client.post("/generate", json={"label": 8, "n": 3, "seed": 2**32 - 2, "format": "json", "steps": STEPS,
                                       "size": 56})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seed"] == 2**32 - 2 and body["n"] == 3 and body["steps"] == STEPS
    assert [im["seed"] for im in body["images"]] == [2**32 - 2, 2**32 - 1, 0]  # (seed + i) mod 2^32
    for im in body["images"]:
        png = base64.b64decode(im["png_base64"])
        assert decode(png).size == (56, 56)
        alone = client.post("/generate", params={"label": 8, "seed": im["seed"], "steps": STEPS, "size": 56})
        assert alone.content == png  # each image's seed reproduces it with n=1


def test_body_and_query_are_the_same_parameters(client):
    q = client.post("/generate", params={"label": 2, "seed": 7, "steps": STEPS, "scheduler": "ddim"})
    b = client.post("/generate", json={"label": 2, "seed": 7, "steps": STEPS, "scheduler": "ddim"})
    mixed = client.post("/generate", params={"label": 2, "seed": 7}, json={"steps": STEPS, "scheduler": "ddim",
                                                                           "label": 2})
    assert q.status_code == b.status_code == mixed.status_code == 200
    assert q.content == b.content == mixed.content
    conflict = client.post("/generate", params={"label": 2}, json={"label": 3})
    assert conflict.status_code == 422 and "label" in conflict.json()["detail"]


# -- determinism under load -----------------------------------------------------
def _post(url: str, params: dict) -> bytes:
    r = httpx.post(url + "/generate", params=params, timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def test_seed_gives_identical_bytes_across_8_concurrent_requests(server):
    params = {"label": 3, "seed": 1234, "steps": 6}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _post(server.url, params), range(8)))
    assert len(set(results)) == 1


def test_seeded_request_is_the_same_alone_or_in_a_crowd(tiny_weights, tmp_path):
    """The engine is held until all eight requests are in, so they share
    batches on any machine; the seeded one still gives the bytes it gives alone."""
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", engine="tiny")
    try:
        mine = {"label": 6, "seed": 99, "steps": 8, "scheduler": "ddpm", "guidance_scale": 3.5}
        alone = _post(srv.url, mine)
        crowd = [{"label": i, "seed": i, "steps": 3 + i, "scheduler": ("ddpm", "ddim", "dpm")[i % 3]}
                 for i in range(7)]
        srv.control("hold")
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(_post, srv.url, p) for p in crowd[:4]]
            futures.append(pool.submit(_post, srv.url, mine))
            futures += [pool.submit(_post, srv.url, p) for p in crowd[4:]]
            end = time.monotonic() + 30
            while (arrived := srv.metric("digitgen_inflight_trajectories") + srv.metric("digitgen_queue_depth")) < 8:
                assert time.monotonic() < end, f"only {arrived:g} of 8 requests arrived"
                time.sleep(0.02)
            srv.control("run")
            results = [f.result() for f in futures]
        assert results[4] == alone
        # and they really were batched: some step carried all eight
        assert srv.metric("digitgen_batch_size_bucket", le="4") < srv.metric("digitgen_batch_size_count")
    finally:
        srv.stop()


# -- stream ------------------------------------------------------------------------
def test_stream_sends_every_kth_step_then_done(client):
    with client.stream("GET", "/generate/stream", params={"label": 7, "steps": 8, "every": 3, "seed": 5}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r.iter_lines()))
    kinds = [e for e, _, _ in events]
    assert kinds == ["start", "step", "step", "step", "done"]
    steps = [d for e, _, d in events if e == "step"]
    assert [d["step"] for d in steps] == [3, 6, 8]  # every 3rd, and the last
    assert [i for e, i, _ in events if e == "step"] == ["5-3", "5-6", "5-8"]
    for d in steps:
        assert d["total"] == 8 and isinstance(d["timestep"], int)
        assert decode(base64.b64decode(d["x_t"])).size == (28, 28)
        assert decode(base64.b64decode(d["x0"])).size == (28, 28)
    done = events[-1][2]
    assert done["seed"] == 5
    # the streamed digit is the very PNG that POST gives for the same seed
    png = client.post("/generate", params={"label": 7, "steps": 8, "seed": 5}).content
    assert base64.b64decode(done["image"]) == png


def test_stream_resumes_after_last_event_id(client):
    headers = {"Last-Event-ID": "5-6"}
    with client.stream("GET", "/generate/stream", params={"label": 7, "steps": 8}, headers=headers) as r:
        events = list(sse_events(r.iter_lines()))
    assert [(e, d.get("step")) for e, _, d in events] == [("step", 7), ("step", 8), ("done", None)]
    finished = client.get("/generate/stream", params={"label": 7, "steps": 8}, headers={"Last-Event-ID": "5-done"})
    assert finished.status_code == 204  # tells EventSource to stop reconnecting


# -- GIF ---------------------------------------------------------------------------
@pytest.mark.parametrize("frames, expected", [("xt", STEPS + 1), ("x0", STEPS)])
def test_gif_has_one_frame_per_step(client, frames, expected):
    r = client.get("/generate.gif", params={"label": 4, "steps": STEPS, "seed": 3, "size": 56, "frames": frames})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/gif" and r.headers["x-seed"] == "3"
    img = decode(r.content)
    assert img.format == "GIF" and img.size == (56, 56) and img.n_frames == expected


# -- bad input -------------------------------------------------------------------------
BAD = [
    ("post", "/generate", {"label": 10}, None, "label"),
    ("post", "/generate", {"label": -1}, None, "label"),
    ("post", "/generate", {"label": "five"}, None, "label"),
    ("post", "/generate", {}, None, "label"),
    ("post", "/generate", {"label": 1, "steps": 0}, None, "steps"),
    ("post", "/generate", {"label": 1, "steps": 1001}, None, "steps"),
    ("post", "/generate", {"label": 1, "steps": 1000, "scheduler": "dpm"}, None, "steps"),
    ("post", "/generate", {"label": 1, "scheduler": "euler"}, None, "scheduler"),
    ("post", "/generate", {"label": 1, "guidance_scale": 10.5}, None, "guidance_scale"),
    ("post", "/generate", {"label": 1, "guidance_scale": "nan"}, None, "guidance_scale"),
    ("post", "/generate", {"label": 1, "seed": -1}, None, "seed"),
    ("post", "/generate", {"label": 1, "seed": 2**32}, None, "seed"),
    ("post", "/generate", {"label": 1, "n": 0}, None, "n"),
    ("post", "/generate", {"label": 1, "n": 65}, None, "n"),
    ("post", "/generate", {"label": 1, "size": 27}, None, "size"),
    ("post", "/generate", {"label": 1, "size": 513}, None, "size"),
    ("post", "/generate", {"label": 1, "format": "bmp"}, None, "format"),
    ("post", "/generate", {}, {"label": 12}, "label"),
    ("post", "/generate", {}, {"label": 1, "steps": "many"}, "steps"),
    ("post", "/generate", {}, {"lable": 1}, "lable"),
    ("post", "/generate", {}, {"label": True}, "label"),
    ("post", "/generate", {}, {"label": 1, "seed": 1.5}, "seed"),
    ("post", "/generate", {}, [1, 2], "body"),
    ("get", "/generate/stream", {"label": 1, "every": 0}, None, "every"),
    ("get", "/generate/stream", {"steps": 5}, None, "label"),
    ("get", "/generate/stream", {"label": 1, "size": 9999}, None, "size"),
    ("get", "/generate.gif", {"label": 1, "frames": "both"}, None, "frames"),
    ("get", "/generate.gif", {"label": 11}, None, "label"),
]


@pytest.mark.parametrize("method, path, params, body, field", BAD,
                         ids=[f"{m}{p}-{f}-{i}" for i, (m, p, _, _, f) in enumerate(BAD)])
def test_bad_parameter_gives_422_naming_the_field(client, method, path, params, body, field):
    r = client.request(method.upper(), path, params=params, json=body)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert any(field in map(str, e["loc"]) for e in problem["errors"]), problem
    assert field in problem["detail"], problem["detail"]


def test_range_errors_say_the_allowed_range(client):
    """The range is the sampler's own, as the loaded model says (and /info publishes)."""
    r = client.post("/generate", params={"label": 1, "steps": 5000, "scheduler": "ddim"})
    assert "1-1000 with scheduler ddim" in r.json()["detail"]
    r = client.post("/generate", params={"label": 1, "steps": 5000})
    assert "1-999 with scheduler dpm" in r.json()["detail"]
    assert client.get("/info").json()["limits"]["max_steps"] == {"ddpm": 1000, "ddim": 1000, "dpm": 999}


@pytest.mark.parametrize("raw", [b'{"label": 3,', b"not json", b'{"label": 3}}'])
def test_malformed_json_gives_422(client, raw):
    r = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "malformed JSON" in r.json()["detail"]


# -- probes, metrics, docs, page -------------------------------------------------
def test_probes_and_unknown_routes(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert client.get("/no/such/route").status_code == 404
    assert client.get("/generate").status_code == 405
    info = client.get("/info").json()
    assert info["defaults"]["num_inference_steps"] == 20 and info["model"]["num_labels"] == 10


SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                    r'(-?[0-9.e+-]+|\+Inf|NaN)$')


def test_metrics_are_prometheus_text(client):
    client.post("/generate", params={"label": 0, "steps": 2})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    typed = {}
    for line in r.text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            typed[name] = kind
        elif not line.startswith("#"):
            assert SAMPLE.match(line), line
    for name, kind in [("digitgen_http_requests_total", "counter"),
                       ("digitgen_http_request_duration_seconds", "histogram"),
                       ("digitgen_queue_depth", "gauge"), ("digitgen_inflight_trajectories", "gauge"),
                       ("digitgen_batch_size", "histogram"), ("digitgen_denoising_steps_total", "counter"),
                       ("digitgen_denoising_steps_per_second", "gauge"),
                       ("digitgen_trajectories_cancelled_total", "counter")]:
        assert typed.get(name) == kind, name
    # read back as Prometheus reads it (label order is not part of the format)
    got = {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
           for family in text_string_to_metric_families(r.text) for smp in family.samples}
    assert got[("digitgen_http_requests_total", (("method", "POST"), ("route", "/generate"), ("status", "200")))] >= 1
    # histogram buckets are cumulative and end in +Inf == _count
    buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in got.items()
                      if name == "digitgen_http_request_duration_seconds_bucket" and ("route", "/generate") in labels))
    counts = [v for _, v in buckets]
    assert buckets[-1][0] == float("inf") and counts == sorted(counts)
    assert got[("digitgen_http_request_duration_seconds_count", (("route", "/generate"),))] == counts[-1] >= 1


def test_openapi_documents_parameters_with_examples(client):
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/generate"]["post"]
    params = {p["name"]: p for p in post["parameters"]}
    assert {"label", "steps", "scheduler", "guidance_scale", "seed", "n", "size", "format"} <= params.keys()
    assert params["label"]["schema"]["examples"] == [5] and params["label"]["description"]
    assert "examples" in post["requestBody"]["content"]["application/json"]
    assert {"/generate/stream", "/generate.gif", "/healthz", "/readyz", "/metrics"} <= spec["paths"].keys()
    assert client.get("/docs").status_code == 200


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script type="module" src="/static/js/main.js">' in page.text
    # every module the page imports is served as JavaScript (a module script refuses any other type)
    main = client.get("/static/js/main.js")
    assert main.headers["content-type"].startswith("text/javascript")
    for module in re.findall(r'from "\./([a-z]+\.js)"', main.text):
        r = client.get(f"/static/js/{module}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), module
    assert client.get("/static/style.css").status_code == 200


def test_two_independent_servers_answer_a_seeded_request_with_the_same_bytes(tiny_weights, tmp_path):
    """Stateless: any replica can answer any request."""
    servers = [Server(tiny_weights, tmp_path / f"replica{i}.log") for i in range(2)]
    try:
        for params in ({"label": 4, "seed": 77, "steps": 5}, {"label": 2, "seed": 3, "n": 3, "model": "fast"},
                       {"label": 9, "seed": 12, "steps": 4, "scheduler": "ddpm", "size": 56}):
            a, b = (httpx.post(s.url + "/generate", params=params, timeout=60) for s in servers)
            assert a.status_code == b.status_code == 200 and a.content == b.content
    finally:
        for s in servers:
            s.stop()
