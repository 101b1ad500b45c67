"""POST /v1/images/generations: the OpenAI Images API, for clients that
already speak it (the official SDKs, tools built on them). The native API
(POST /generate) stays the primary one; this maps onto the same request
model, admission and engine.

A prompt names one digit: "7", "seven", "a handwritten 7", "the number
seven". Errors come in that API's shape, {"error": {message, type, param,
code}}, with status 400 (or the service's own 401/429/503/504).
"""
from __future__ import annotations

import re
import time
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import render
from .request import Given, resolve
from .schemas import GenerateParams

router = APIRouter(prefix="/v1", tags=["openai"])

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_DIGIT = re.compile(r"\b(?:(\d)|(" + "|".join(WORDS) + r"))\b", re.IGNORECASE)
MODELS = {"base": "base", "fast": "fast", "digitgen-base": "base", "digitgen-fast": "fast"}


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(max_length=1000, description='One digit: "7", "seven", "a handwritten 7".')
    n: int = Field(1, ge=1, le=64)
    size: str = Field("28x28", description="Square, 28x28 to 512x512, e.g. 256x256.")
    response_format: Literal["b64_json", "url"] = "b64_json"
    model: str | None = Field(None, description="base, fast (or digitgen-base, digitgen-fast); default: the "
                                                "server's default model.")
    user: str | None = Field(None, max_length=256)


class OpenAIError(Exception):
    def __init__(self, message: str, param: str | None, code: str = "invalid_value", status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def error_response(e: OpenAIError) -> JSONResponse:
    kind = "invalid_request_error" if e.status < 500 else "server_error"
    return JSONResponse({"error": {"message": e.message, "type": kind, "param": e.param, "code": e.code}},
                        status_code=e.status)


def parse_digit(prompt: str) -> int:
    found = {int(m[1]) if m[1] is not None else WORDS.index(m[2].lower()) for m in _DIGIT.finditer(prompt)}
    if len(found) != 1:
        raise OpenAIError(f"the prompt must name exactly one digit 0-9, like '7', 'seven' or 'a handwritten 7'; "
                          f"got {prompt[:80]!r}", "prompt")
    return found.pop()


def parse_size(size: str) -> int:
    m = re.fullmatch(r"([1-9][0-9]{1,2})x([1-9][0-9]{1,2})", size)
    if not m or m[1] != m[2] or not 28 <= int(m[1]) <= 512:
        raise OpenAIError(f"size must be square, from 28x28 to 512x512 (e.g. 256x256); got {size[:40]!r}", "size")
    return int(m[1])


# Not in this service's OpenAPI document: the OpenAI API's own describes it,
# and this one describes the native API (which the fuzz run holds to it).
@router.post("/images/generations", include_in_schema=False)
async def images_generations(request: Request):
    from .routes import service  # the same readiness check as the native routes

    try:
        try:
            body = ImagesRequest.model_validate_json(await request.body())
        except ValidationError as e:
            first = e.errors()[0]
            param = str(first["loc"][0]) if first.get("loc") else None
            raise OpenAIError(f"{param}: {first['msg']}" if param else first["msg"], param) from None
        if body.response_format == "url":
            raise OpenAIError("response_format 'url' is not offered: this server keeps no files to link to; "
                              "ask for b64_json", "response_format", "unsupported_value")
        model = MODELS.get(body.model) if body.model is not None else None
        if body.model is not None and model is None:
            raise OpenAIError(f"model must be one of {', '.join(MODELS)}; got {body.model[:40]!r}", "model")
        params = {"label": parse_digit(body.prompt), "n": body.n, "size": parse_size(body.size)}
        if model:
            params["model"] = model
        try:
            svc = await service(request)
        except HTTPException as e:
            raise OpenAIError(str(e.detail), None, "service_unavailable", e.status_code) from None
        given = Given(GenerateParams(**params))
        try:
            gen = resolve(svc.pipes, svc.default_model, given, n=body.n, max_rows=svc.settings.max_request_rows)
        except Exception as e:  # a RequestValidationError: in this API's words
            issue = e.errors()[0] if hasattr(e, "errors") else {"loc": (None,), "msg": str(e)}
            raise OpenAIError(issue["msg"], str(issue["loc"][-1])) from None
        try:
            job = await svc.start(gen)
            events = await svc.collect(request, job)
        except HTTPException as e:  # 503 (busy, shutting down), 504 (deadline): in this API's shape
            raise OpenAIError(str(e.detail), None, "server_busy" if e.status_code == 503 else "timeout",
                              e.status_code) from None
    except OpenAIError as e:
        return error_response(e)
    if events is None:
        return JSONResponse({}, status_code=499)
    finals = sorted((ev for ev in events if ev.result.done), key=lambda ev: ev.index)
    size = params["size"]
    pngs = await render.off_loop(len(finals) * size * size,
                                 lambda: [render.b64(render.png(ev.result.sample, size)) for ev in finals])
    words = f"a handwritten {params['label']}"
    return JSONResponse({"created": int(time.time()),
                         "data": [{"b64_json": b, "revised_prompt": words} for b in pngs]},
                        headers={"X-Seed": str(gen.seed), "X-Model": gen.model})
