"""One error vocabulary: every error the service answers is the same problem
body (RFC 9457 members plus `code` and `errors`), whatever refused it (the
edge, FastAPI's routing, a parameter, the engine); the OpenAI routes answer
the same errors in the OpenAI API's shape; a parameter the model cannot
take says which loaded model would (real servers on loopback)."""
from __future__ import annotations

import json

import httpx
import pytest

from conftest import Server

PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code", "errors"}


def assert_problem(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body = r.json()
    assert set(body) == PROBLEM_MEMBERS, body
    assert body["status"] == status and isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["errors"], list) and (code is None or body["code"] == code), body
    for issue in body["errors"]:
        assert set(issue) == {"loc", "type", "msg", "input"}, issue
    return body


@pytest.fixture(scope="module")
def guarded(tiny_weights, tmp_path_factory):
    """Keys on, a rate limit of one request now and then one per 100 s per key, a small body cap."""
    srv = Server(tiny_weights, tmp_path_factory.mktemp("guarded") / "uvicorn.log", api_keys="k1,k2,k3",
                 rate_limit=0.01, rate_burst=1, max_body_bytes=2048)
    yield srv
    srv.stop()


def test_every_refusal_has_the_one_problem_shape(client, guarded):
    cases = [
        (client.post("/generate", params={"label": 1, "steps": 9999}), 422, "invalid_parameter"),
        (client.post("/generate", content=b"{nope", headers={"content-type": "application/json"}), 422, None),
        (client.get("/no/such/route"), 404, "not_found"),
        (client.get("/generate"), 405, "method_not_allowed"),
        (client.get("/info", headers={"Origin": "http://evil.example"}), 403, "forbidden_origin"),
        (client.get("/info", headers={"Host": "evil.example"}), 400, "bad_host"),
        (client.post("/generate", params={"label": 1}, content=b"x",
                     headers={"content-encoding": "gzip"}), 415, "unsupported_media_type"),
        (httpx.post(guarded.url + "/generate", params={"label": 1}), 401, "unauthorized"),
        (httpx.post(guarded.url + "/generate", params={"label": 1}, content=b"{}" + b" " * 4096,
                    headers={"authorization": "Bearer k1"}), 413, "body_too_large"),
    ]
    for r, status, code in cases:
        assert_problem(r, status, code)
    key = {"authorization": "Bearer k2"}
    assert httpx.get(guarded.url + "/info", headers=key).status_code == 200
    limited = httpx.get(guarded.url + "/info", headers=key)
    assert_problem(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1


def test_a_parameter_issue_says_where_it_was_and_what_was_given(client):
    body = assert_problem(client.post("/generate", params={"label": 1}, json={"steps": 0}), 422, "invalid_parameter")
    (issue,) = body["errors"]
    assert issue["loc"] == ["body", "steps"] and issue["input"] == 0 and "steps" in body["detail"]


def test_a_misspelt_query_parameter_is_a_422_that_suggests_the_name(client):
    """It was silently ignored: `step=50` ran the default number of steps."""
    body = assert_problem(client.post("/generate?label=5&step=50&sampler=ddim"), 422, "invalid_parameter")
    lines = {tuple(i["loc"]): i["msg"] for i in body["errors"]}
    assert "did you mean 'steps'?" in lines[("query", "step")]
    assert "did you mean 'scheduler'?" in lines[("query", "sampler")]
    body = assert_problem(client.post("/generate", json={"label": 5, "stesp": 3}), 422)
    assert body["errors"][0]["loc"] == ["body", "stesp"] and "did you mean 'steps'?" in body["detail"]
    for path in ("/generate/stream", "/generate.gif"):  # every generation endpoint alike
        body = assert_problem(client.get(path, params={"label": 5, "lable": 3}), 422)
        assert "did you mean 'label'?" in body["detail"]


def test_the_default_model_names_the_model_that_would_take_the_value(tiny_weights, tmp_path):
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", default_model="fast")
    try:
        for params, field, taker in [({"label": 1, "scheduler": "ddim"}, "scheduler", "model=base"),
                                     ({"label": 1, "guidance_scale": 2}, "guidance_scale", "model=base")]:
            body = assert_problem(httpx.post(srv.url + "/generate", params=params), 422)
            assert body["errors"][0]["loc"] == ["query", field] and taker in body["detail"], body
            assert "the default model is fast" in body["detail"]
            assert httpx.post(srv.url + "/generate", params={**params, "model": "base", "steps": 2}).status_code == 200
        # a model asked for by name does not point elsewhere: the client chose it
        body = assert_problem(httpx.post(srv.url + "/generate", params={"label": 1, "scheduler": "ddim",
                                                                        "model": "fast"}), 422)
        assert "model=base" not in body["detail"]
    finally:
        srv.stop()


def test_eta_is_a_request_parameter_of_the_samplers_that_take_it(client):
    def png(**params):
        r = client.post("/generate", params={"label": 4, "seed": 7, "steps": 4, **params})
        assert r.status_code == 200, r.text
        return r.content
    assert png(scheduler="ddim") == png(scheduler="ddim", eta=0)       # ddim's default: deterministic
    assert png(scheduler="ddim", eta=0.8) != png(scheduler="ddim")
    assert png(model="fast", eta=0.3) == png(model="fast")             # the tiny fast model's own eta
    assert png(model="fast", eta=0) != png(model="fast", eta=1)
    body = assert_problem(client.post("/generate", params={"label": 4, "eta": 0.5}), 422)  # dpm takes none
    assert body["errors"][0]["loc"] == ["query", "eta"] and "ddim and tcd" in body["detail"]
    meta = client.post("/generate", params={"label": 4, "seed": 7, "steps": 2, "scheduler": "ddim", "eta": 0.25,
                                            "format": "json"}).json()
    assert meta["eta"] == 0.25


def test_duplicate_json_keys_and_odd_bodies_get_clear_messages(client):
    json_ = {"content-type": "application/json"}
    for raw, words in [(b'{"label": 1, "label": 2}', "'label' is given twice in the JSON body"),
                       (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
                       (b'{"label": ' + b"9" * 4301 + b"}", "too long to read"),
                       (b'{"label": 1}\xff', "send JSON in UTF-8")]:
        body = assert_problem(client.post("/generate", content=raw, headers=json_), 422, "invalid_parameter")
        assert words in body["detail"], body["detail"]
    body = assert_problem(client.post("/generate", content=b"\x1f\x8b...", headers={**json_, "content-encoding": "gzip"}),
                          415, "unsupported_media_type")
    assert "uncompressed" in body["detail"]


@pytest.mark.parametrize("raw", [
    '{"label": 1, "scheduler": "\\ud800"}',        # a lone surrogate escape: valid JSON, not encodable as UTF-8
    '{"\\udfff": 1, "label": 1}',
    '["\\ud800"]',
    '{"label": "\\ud83d"}',
    '{"label": 1, "model": "\\udc00\\ud800"}',
])
def test_an_input_that_cannot_be_encoded_is_echoed_escaped_never_a_500(client, raw):
    r = client.post("/generate", content=raw.encode(), headers={"content-type": "application/json"})
    body = assert_problem(r, 422)
    json.dumps(body)  # it parsed, so every echo was written escaped


def test_the_openai_routes_answer_every_error_in_their_own_shape(server, guarded):
    """401, 413, 429 come from the edge, before the route: still this API's shape."""
    def openai_error(r: httpx.Response, status: int) -> dict:
        assert r.status_code == status, r.text
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        return body["error"]

    url = guarded.url + "/v1/images/generations"
    assert openai_error(httpx.post(url, json={"prompt": "7"}), 401)["code"] == "unauthorized"
    big = httpx.post(url, content=b'{"prompt": "7"}' + b" " * 4096, headers={"authorization": "Bearer k3",
                                                                          "content-type": "application/json"})
    assert openai_error(big, 413)["code"] == "body_too_large"
    ok = httpx.post(url, json={"prompt": "7"}, headers={"authorization": "Bearer k2"}, timeout=30)
    assert ok.status_code in (200, 429)  # k2 may have spent its one token in another test
    limited = httpx.post(url, json={"prompt": "7"}, headers={"authorization": "Bearer k2"})
    assert openai_error(limited, 429)["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    bad = httpx.post(server.url + "/v1/images/generations", content=b'{"prompt": "7", "prompt": "8"}',
                     headers={"content-type": "application/json"})
    assert openai_error(bad, 400)["type"] == "invalid_request_error"
    assert openai_error(httpx.get(server.url + "/v1/images/generations"), 405)["code"] == "method_not_allowed"
