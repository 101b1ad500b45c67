"""POST /v1/images/generations through the official `openai` package, against
the real server (tiny weights, both models)."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

openai = pytest.importorskip("openai", reason="the openai package is in the test extras")


@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=60)


def png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


@pytest.mark.parametrize("prompt", ["7", "seven", "a handwritten 7", "The number Seven, please"])
def test_a_prompt_naming_a_digit_gives_images(sdk, prompt):
    res = sdk.images.generate(prompt=prompt, n=2, size="56x56", response_format="b64_json")
    assert res.created > 0 and len(res.data) == 2
    for item in res.data:
        assert png(item.b64_json).size == (56, 56) and item.revised_prompt == "a handwritten 7"


def test_the_fast_model_by_name(sdk):
    res = sdk.images.generate(prompt="3", model="digitgen-fast", size="28x28")
    assert png(res.data[0].b64_json).size == (28, 28)


@pytest.mark.parametrize("kwargs, param", [
    (dict(prompt="a cat"), "prompt"),
    (dict(prompt="7 or 8"), "prompt"),
    (dict(prompt="7", size="256x128"), "size"),
    (dict(prompt="7", size="1024x1024"), "size"),
    (dict(prompt="7", n=65), "n"),
    (dict(prompt="7", response_format="url"), "response_format"),
    (dict(prompt="7", model="dall-e-3"), "model"),
])
def test_what_it_cannot_do_is_a_400_in_the_apis_shape(sdk, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        sdk.images.generate(**kwargs)
    err = e.value.body
    assert e.value.status_code == 400 and err["param"] == param and err["type"] == "invalid_request_error"
    assert err["message"] and err["code"]
