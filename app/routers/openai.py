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

from .. import render
from ..dependencies import Given, read_json, resolve, service
from ..errors import OPENAI_PREFIX, Issue, Problem
from ..schemas import GenerateQuery

router = APIRouter(prefix=OPENAI_PREFIX.rstrip("/"), tags=["openai"])

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_DIGIT = re.compile(r"\b(?:(\d)|(" + "|".join(WORDS) + r"))\b", re.IGNORECASE)
MODELS = {"base": "base", "fast": "fast", "digitgen-base": "base", "digitgen-fast": "fast"}


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(max_length=1000, description='One digit: "7", "seven", "a handwritten 7".')
    n: int = Field(1, ge=LIMITS["n"][0], le=LIMITS["n"][1])
    size: str = Field("28x28", description="Square, 28x28 to 512x512, e.g. 256x256.")
    response_format: Literal["b64_json", "url"] = "b64_json"
    model: str | None = Field(None, description="base, fast (or digitgen-base, digitgen-fast); default: the "
                                                "server's default model.")
    user: str | None = Field(None, max_length=256)


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


# Not in this service's OpenAPI document: the OpenAI API's own describes it,
# and this one describes the native API (which the fuzz run holds to it).
@router.post("/images/generations", include_in_schema=False)
async def images_generations(request: Request):
    try:
        body = ImagesRequest.model_validate(read_json(await request.body()))
    except ValidationError as e:
        first = e.errors()[0]
        param = str(first["loc"][0]) if first.get("loc") else None
        raise bad(f"{param}: {first['msg']}" if param else first["msg"], param) from None
    except Problem as p:  # malformed JSON
        raise bad(p.detail, None) from None
    if body.response_format == "url":
        raise bad("response_format 'url' is not offered: this server keeps no files to link to; ask for b64_json",
                  "response_format", "unsupported_value")
    model = MODELS.get(body.model) if body.model is not None else None
    if body.model is not None and model is None:
        raise bad(f"model must be one of {', '.join(MODELS)}; got {body.model[:40]!r}", "model")
    svc = await service(request)
    params = GenerateQuery(label=parse_digit(body.prompt), n=body.n, size=parse_size(body.size), model=model)
    try:
        gen = resolve(svc, Given(params, {}))
    except Problem as p:  # a 422 of the native API: this API says 400
        raise bad(p.errors[0].msg if p.errors else p.detail, p.errors[0].field if p.errors else None) from None
    job = await svc.start(gen)
    events = await svc.collect(request, job)
    if events is None:
        return JSONResponse({}, status_code=499)
    finals = sorted((ev for ev in events if ev.result.done), key=lambda ev: ev.index)
    pngs = await render.off_loop(len(finals) * gen.size * gen.size,
                                 lambda: [render.b64(render.png(ev.result.sample, gen.size)) for ev in finals])
    words = f"a handwritten {gen.sampling.label}"
    return JSONResponse({"created": int(time.time()), "data": [{"b64_json": b, "revised_prompt": words} for b in pngs]},
                        headers={"X-Seed": str(gen.seed), "X-Model": gen.model})
