"""Never a 500 on any input: arbitrary JSON text (and text that is almost
JSON) on every route that reads a JSON body, against the real server. Every
answer is a success or a 4xx in the route's own error shape.

Set DIGITGEN_PROPERTY_EXAMPLES to run more examples than CI's default."""
from __future__ import annotations

import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("DIGITGEN_PROPERTY_EXAMPLES", "150"))
FIELDS = ["model", "label", "steps", "scheduler", "guidance_scale", "eta", "seed", "n", "size", "format",
          "prompt", "response_format", "user"]

# any code point, lone surrogates included (st.text leaves those out by default)
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True) \
    | any_text | st.sampled_from(["7", "ddim", "fast", "base", "256x256", "b64_json", "png", "json"])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                      st.dictionaries(any_text | st.sampled_from(FIELDS), inner, max_size=4), max_leaves=12)
# mostly objects with the routes' own field names, so validation goes deep
objects = st.dictionaries(st.sampled_from(FIELDS) | any_text, values, max_size=6)


def as_text(value) -> bytes:
    """JSON as a client might write it: escaped (surrogates as \\uXXXX) and with NaN allowed."""
    return json.dumps(value, allow_nan=True).encode()


bodies = st.one_of(objects.map(as_text), values.map(as_text),
                   st.binary(max_size=60),                               # not JSON at all
                   objects.map(as_text).map(lambda b: b[:-1]),           # cut short
                   st.tuples(objects, objects).map(lambda t: as_text(t[0])[:-1] + b"," + as_text(t[1])[1:]))
ROUTES = {"/generate": "problem", "/v1/images/generations": "openai"}


@pytest.mark.parametrize("path", ROUTES)
def test_no_json_body_gets_a_500(server, path):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(body=bodies)
        def check(body: bytes):
            r = c.post(path, content=body, headers={"content-type": "application/json"},
                       params={"steps": 1} if path == "/generate" else None)
            assert r.status_code < 500, (body, r.status_code, r.text)
            if r.status_code >= 400:
                err = r.json()
                if ROUTES[path] == "problem":
                    assert err["status"] == r.status_code and err["detail"] and "code" in err, err
                else:
                    assert set(err) == {"error"} and err["error"]["message"], err
        check()
