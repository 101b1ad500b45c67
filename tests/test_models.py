"""Two models in one service: the base diffusion model and the distilled
fast one (tiny stand-ins here, with their real schedulers), chosen per
request with `model`, batched side by side."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import Server, add_tiny_onestep, make_tiny_weights, sse_events


def test_info_lists_both_models_with_their_own_defaults_and_limits(client):
    info = client.get("/info").json()
    assert info["default_model"] == "base" and set(info["models"]) == {"base", "fast"}
    fast, base = info["models"]["fast"], info["models"]["base"]
    assert fast["schedulers"] == ["tcd", "lcm"] and fast["limits"]["max_steps"] == {"tcd": 50, "lcm": 50}
    assert fast["defaults"]["scheduler"] == "tcd" and fast["defaults"]["num_inference_steps"] == 4
    assert fast["defaults"]["eta"] == 0.3
    assert base["schedulers"] == ["ddpm", "ddim", "dpm"] and base["limits"]["max_steps"]["dpm"] == 999
    assert info["defaults"] == base["defaults"]  # the top level describes the default model
    assert "/" not in str(info["model"])  # no filesystem paths in responses


def test_fast_model_generates_with_its_defaults(client):
    r = client.post("/generate", params={"label": 3, "model": "fast", "seed": 5})
    assert r.status_code == 200, r.text
    assert (r.headers["x-model"], r.headers["x-scheduler"], r.headers["x-steps"]) == ("fast", "tcd", "4")
    again = client.post("/generate", json={"label": 3, "model": "fast", "seed": 5})
    assert again.content == r.content
    lcm = client.post("/generate", params={"label": 3, "model": "fast", "seed": 5, "scheduler": "lcm"})
    assert lcm.status_code == 200 and lcm.headers["x-scheduler"] == "lcm" and lcm.content != r.content
    base = client.post("/generate", params={"label": 3, "seed": 5, "steps": 4})
    assert base.headers["x-model"] == "base" and base.content != r.content


@pytest.mark.parametrize("params, field, words", [
    ({"label": 1, "model": "fast", "scheduler": "dpm"}, "scheduler", "tcd, lcm"),
    ({"label": 1, "model": "fast", "steps": 51}, "steps", "1-50"),
    ({"label": 1, "model": "base", "scheduler": "lcm"}, "scheduler", "ddpm, ddim, dpm"),
    ({"label": 1, "model": "turbo"}, "model", "base, fast"),
    ({"label": 1, "model": "fast", "guidance_scale": 2}, "guidance_scale", "guidance 1.5 built in"),
])
def test_a_model_refuses_what_it_cannot_do(client, params, field, words):
    r = client.post("/generate", params=params)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["errors"][0]["loc"][-1] == field and words in body["detail"]


def test_fast_stream_and_gif(client):
    with client.stream("GET", "/generate/stream", params={"label": 4, "model": "fast", "seed": 2}) as r:
        events = list(sse_events(r.iter_lines()))
    assert [e for e, _, _ in events] == ["start", "step", "step", "step", "step", "done"]
    assert events[-1][2]["model"] == "fast" and events[-1][2]["scheduler"] == "tcd"
    gif = client.get("/generate.gif", params={"label": 4, "model": "fast", "seed": 2})
    assert gif.status_code == 200 and gif.headers["x-model"] == "fast"


def test_both_models_share_the_engine_and_keep_their_bits(tiny_weights, tmp_path):
    """Held until a base and a fast request are both in: they run in the same
    engine steps (one forward per model), and each gives the bytes it gives alone."""
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", engine="tiny")
    try:
        fast = {"label": 2, "model": "fast", "seed": 9, "steps": 8}
        base = {"label": 2, "model": "base", "seed": 9, "steps": 8, "scheduler": "ddim"}
        post = lambda p: httpx.post(srv.url + "/generate", params=p, timeout=60)  # noqa: E731
        alone = [post(fast).content, post(base).content]
        steps_before = srv.metric("digitgen_denoising_steps_total")
        srv.control("hold")
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(post, fast), pool.submit(post, base)]
            end = time.monotonic() + 30
            while srv.metric("digitgen_inflight_trajectories") + srv.metric("digitgen_queue_depth") < 2:
                assert time.monotonic() < end
                time.sleep(0.02)
            srv.control("run")
            crowd = [f.result() for f in futures]
        assert [r.status_code for r in crowd] == [200, 200]
        assert [r.content for r in crowd] == alone
        assert srv.metric("digitgen_denoising_steps_total") - steps_before == 16
    finally:
        srv.stop()


def test_without_a_fast_folder_only_base_is_served(tmp_path):
    weights = make_tiny_weights(tmp_path / "w", fast=False)
    srv = Server(weights, tmp_path / "uvicorn.log", default_model="")
    try:
        info = httpx.get(srv.url + "/info").json()
        assert info["default_model"] == "base" and list(info["models"]) == ["base"]
        r = httpx.post(srv.url + "/generate", params={"label": 1, "model": "fast"})
        assert r.status_code == 422 and "not loaded" in r.json()["detail"]
    finally:
        srv.stop()


def test_fast_is_the_default_when_it_is_there(tiny_weights, tmp_path):
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", default_model="")
    try:
        assert httpx.get(srv.url + "/info").json()["default_model"] == "fast"
        r = httpx.post(srv.url + "/generate", params={"label": 1, "steps": 2})
        assert r.headers["x-model"] == "fast" and r.headers["x-scheduler"] == "tcd"
    finally:
        srv.stop()


def test_a_onestep_folder_is_served_by_its_own_name_in_one_unet_row(tiny_weights, tmp_path):
    """weights/onestep (the one-step student: v-prediction, exported for LCM
    at 1 step) beside base and fast: its own name in /info, the generate
    API and the OpenAI adapter, and one step (one UNet row) a digit."""
    import shutil

    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    add_tiny_onestep(weights)
    srv = Server(weights, tmp_path / "uvicorn.log", default_model="")
    try:
        info = httpx.get(srv.url + "/info").json()
        assert list(info["models"]) == ["base", "fast", "onestep"] and info["default_model"] == "fast"
        one = info["models"]["onestep"]
        assert one["defaults"]["num_inference_steps"] == 1 and one["schedulers"] == ["lcm", "tcd"]
        steps = srv.metric("digitgen_denoising_steps_total")
        r = httpx.post(srv.url + "/generate", params={"label": 3, "model": "onestep", "seed": 1})
        assert r.status_code == 200 and (r.headers["x-model"], r.headers["x-steps"]) == ("onestep", "1")
        assert srv.metric("digitgen_denoising_steps_total") - steps == 1   # guidance built in: 1 step, 1 row
        two = httpx.post(srv.url + "/generate", params={"label": 3, "model": "onestep", "seed": 1, "steps": 2,
                                                        "scheduler": "tcd"})   # its eta: 0
        assert two.status_code == 200 and two.headers["x-scheduler"] == "tcd"
        ids = [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]]
        assert "digitgen-onestep" in ids
        img = httpx.post(srv.url + "/v1/images/generations", json={"prompt": "3", "model": "digitgen-onestep"})
        assert img.status_code == 200, img.text
    finally:
        srv.stop()
