"""POST /v1/images/generations: the OpenAI Images API, for clients that
already speak it (the official SDKs, tools built on them). The native API
(POST /generate) stays the primary one; this maps onto the same resolver,
admission and engine.

A prompt names one digit: "7", "seven", "a handwritten 7", "the number
seven". Every error, the edge's included (401, 413, 429, 503), comes in that
API's shape, {"error": {message, type, param, code}} (app/errors.py picks
the shape by path).
"""
from __future__ import annotations

import re
import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.generation import LIMITS
from engine.paths import MODEL_FOLDERS

from engine import generation
from engine.generation import parameters
from engine.io.images import ImageError, image_size, read_alpha_mask, read_digit
from engine.models.classifier import predict
from engine.pipeline import InvalidParameter

from .. import render
from ..dependencies import read_json, service
from ..errors import OPENAI_PREFIX, Issue, Problem

router = APIRouter(prefix=OPENAI_PREFIX.rstrip("/"), tags=["openai"])

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_DIGIT = re.compile(r"\b(?:(\d)|(" + "|".join(WORDS) + r"))\b", re.IGNORECASE)
MODELS = {**{name: name for name in MODEL_FOLDERS}, **{f"digitgen-{name}": name for name in MODEL_FOLDERS}}


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(max_length=1000, description='One digit: "7", "seven", "a handwritten 7".')
    n: int = Field(1, ge=LIMITS["n"][0], le=LIMITS["n"][1])
    size: str = Field("28x28", description="Square, 28x28 to 512x512, e.g. 256x256.")
    response_format: Literal["b64_json", "url"] = "b64_json"
    model: str | None = Field(None, description=", ".join(MODELS) + "; default: the server's default model.")
    user: str | None = Field(None, max_length=256)
    # an extension of this server (the OpenAI API has none): the same seed gives the same images
    seed: int | None = Field(None, ge=LIMITS["seed"][0], le=LIMITS["seed"][1])


class EditFields(ImagesRequest):
    """/v1/images/edits' text fields (multipart/form-data, as the SDK sends them)."""
    prompt: str = Field(max_length=1000)
    n: int = Field(1, ge=LIMITS["n"][0], le=LIMITS["n"][1])


class VariationFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(1, ge=LIMITS["n"][0], le=LIMITS["n"][1])
    size: str = "28x28"
    response_format: Literal["b64_json", "url"] = "b64_json"
    model: str | None = None
    user: str | None = Field(None, max_length=256)
    seed: int | None = Field(None, ge=LIMITS["seed"][0], le=LIMITS["seed"][1])


VARIATION_STRENGTH = 0.6  # a variation keeps the image's digit and its shape, redraws the strokes


def bad(message: str, param: str | None, code: str = "invalid_value") -> Problem:
    """This API's 400 (it has no 422)."""
    return Problem(400, code, message, errors=[Issue(("body", param), message)] if param else ())


def parse_digit(prompt: str) -> int:
    found = {int(m[1]) if m[1] is not None else WORDS.index(m[2].lower()) for m in _DIGIT.finditer(prompt)}
    if len(found) != 1:
        raise bad(f"the prompt must name exactly one digit 0-9, like '7', 'seven' or 'a handwritten 7'; "
                  f"got {prompt[:80]!r}", "prompt")
    return found.pop()


def parse_size(size: str) -> int:
    low, high = LIMITS["size"]
    m = re.fullmatch(r"([1-9][0-9]{1,2})x([1-9][0-9]{1,2})", size)
    if not m or m[1] != m[2] or not low <= int(m[1]) <= high:
        raise bad(f"size must be square, from {low}x{low} to {high}x{high} (e.g. 256x256); got {size[:40]!r}", "size")
    return int(m[1])


def _common(body, model_name: str | None) -> tuple[str | None, int]:
    """(the native model name, the output size) of a request, or this API's 400."""
    if body.response_format == "url":
        raise bad("response_format 'url' is not offered: this server keeps no files to link to; ask for b64_json",
                  "response_format", "unsupported_value")
    model = MODELS.get(model_name) if model_name is not None else None
    if model_name is not None and model is None:
        raise bad(f"model must be one of {', '.join(MODELS)}; got {model_name[:40]!r}", "model")
    return model, parse_size(body.size)


def _fields(model, values: dict):
    try:
        return model.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        param = str(first["loc"][0]) if first.get("loc") else None
        raise bad(f"{param}: {first['msg']}" if param else first["msg"], param) from None


async def _form(request: Request) -> tuple[dict, dict]:
    """(text fields, files' bytes) of a multipart/form-data body, in this API's errors."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad("this endpoint takes multipart/form-data (the image as a file)", None, "invalid_content_type")
    try:
        form = await request.form(max_files=2, max_fields=16)
    except Exception as e:
        raise bad(f"the multipart body cannot be read ({str(e)[:80]})", None) from None
    text, files = {}, {}
    for name, value in form.multi_items():
        if isinstance(value, str):
            text[name] = value
        else:
            files[name] = await value.read()
    return text, files


async def _answer(request: Request, gen) -> JSONResponse:
    svc = await service(request)
    job = await svc.start(gen)
    events = await svc.collect(request, job)
    if events is None:
        return JSONResponse({}, status_code=499)
    finals = sorted((ev for ev in events if ev.result.done), key=lambda ev: ev.index)
    pngs = await render.off_loop(len(finals) * gen.size * gen.size, lambda: [
        render.b64(render.png(ev.result.sample, gen.size, parameters(gen, seed))) for ev, seed in zip(finals, gen.seeds)])
    words = f"a handwritten {gen.sampling.label}"
    return JSONResponse({"created": int(time.time()), "data": [{"b64_json": b, "revised_prompt": words} for b in pngs]},
                        headers={"X-Seed": str(gen.seed), "X-Model": gen.model})


async def _resolve(request: Request, **kwargs):
    svc = await service(request)
    try:
        return generation.resolve(svc.pipes, svc.default_model, max_rows=svc.settings.max_request_rows, **kwargs)
    except InvalidParameter as e:  # a 422 of the native API: this API says 400
        raise bad(str(e), e.field) from None


def _image(data: bytes | None, name: str, mask: bool = False):
    if data is None:
        raise bad(f"{name} is required (a PNG file)", name)
    try:
        return read_alpha_mask(data) if mask else read_digit(data)
    except ImageError as e:
        raise bad(f"{name}: {e}", name) from None


# Not in this service's OpenAPI document: the OpenAI API's own describes it,
# and this one describes the native API (which the fuzz run holds to it).
@router.post("/images/generations", include_in_schema=False)
async def images_generations(request: Request):
    try:
        raw = read_json(await request.body())
    except Problem as p:  # malformed JSON
        raise bad(p.detail, None) from None
    body = _fields(ImagesRequest, raw)
    model, size = _common(body, body.model)
    gen = await _resolve(request, model=model, label=parse_digit(body.prompt), n=body.n, size=size, seed=body.seed)
    return await _answer(request, gen)


@router.post("/images/edits", include_in_schema=False)
async def images_edits(request: Request):
    """image + mask (transparent where the model draws, as in OpenAI's API)
    + a prompt naming the digit: inpainting; without a mask, image-to-image."""
    text, files = await _form(request)
    body = _fields(EditFields, text)
    model, size = _common(body, body.model)
    image = _image(files.get("image"), "image")
    mask = _image(files["mask"], "mask", mask=True) if "mask" in files else None
    if mask is not None and image_size(files["mask"]) != image_size(files["image"]):
        raise bad("mask must be the same size as image", "mask")
    gen = await _resolve(request, model=model, label=parse_digit(body.prompt), n=body.n, size=size, seed=body.seed,
                         image=image, mask=mask)
    return await _answer(request, gen)


@router.post("/images/variations", include_in_schema=False)
async def images_variations(request: Request):
    """Variations of a digit: the classifier reads which digit the image is,
    then image-to-image at strength 0.6, a seed each."""
    text, files = await _form(request)
    body = _fields(VariationFields, text)
    model, size = _common(body, body.model)
    image = _image(files.get("image"), "image")
    svc = await service(request)
    if svc.classifier is None:
        raise bad("this server has no classifier to read the image's digit with", "image")
    probs, _ = predict(svc.classifier, image[None])
    gen = await _resolve(request, model=model, label=int(probs[0].argmax()), n=body.n, size=size, seed=body.seed,
                         image=image, strength=VARIATION_STRENGTH)
    return await _answer(request, gen)


@router.get("/models", include_in_schema=False)
async def models(request: Request):
    svc = await service(request)
    return {"object": "list", "data": [{"id": f"digitgen-{name}", "object": "model", "created": 0,
                                        "owned_by": "digitgen"} for name in sorted(svc.pipes)]}
