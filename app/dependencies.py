"""FastAPI dependencies: the service, and each generation endpoint's request
turned into ONE resolved `Generation` (engine/generation.py).

The path of every generation request is the same: the query string (and
for POST /generate the JSON body) is parsed by its model in app/schemas.py,
the two are merged into one typed set of parameters (a field given in both
with different values is a 422), and `resolve` fills in the model's
defaults, checks its limits and computes the cost. Whatever is wrong is a
`Problem` naming the field and where it came from.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
from typing import Annotated

from fastapi import Depends, Request
import numpy as np
from pydantic import BaseModel, ValidationError

from engine import generation
from engine.generation import Generation
from engine.io.images import ImageError, image_size, read_digit
from engine.pipeline import InvalidParameter

from .edge import QUERY
from .errors import Issue, Problem, issues_from_pydantic
from .schemas import (ALIASES, ALLOWED, KNOWN, GenerateBody, GenerateQuery, GifBody, GifQuery, SampleFields,
                      StreamBody, StreamQuery)
from .service import Service


async def service(request: Request) -> Service:
    # async: FastAPI runs a sync dependency in the thread pool, a thread hop
    # (and a wait for the GIL beside the engine) on every request, refusals included
    svc: Service | None = getattr(request.app.state, "service", None)
    if svc is None or not svc.ready:
        raise Problem.not_ready()
    return svc


ServiceDep = Annotated[Service, Depends(service)]


# -- the JSON body ---------------------------------------------------------------------
class _Duplicate(ValueError):
    def __init__(self, key: str):
        self.key = key


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _Duplicate(key)
        obj[key] = value
    return obj


def read_json(raw: bytes):
    """The body as JSON, read strictly: UTF-8, no key given twice (json.loads
    would keep the last silently), bounded nesting and number sizes. Raises
    the 422 that says what was wrong."""
    def bad(msg: str, loc=("body",)) -> Problem:
        return Problem.invalid([Issue(loc, msg, "json_invalid")])

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("the body could not be decoded: send JSON in UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        raise bad(f"{e.key[:40]!r} is given twice in the JSON body; give it once", ("body", e.key[:40])) from None
    except json.JSONDecodeError as e:
        raise bad(f"malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise bad("malformed JSON (nested too deeply: the body is one flat object)") from None
    except ValueError as e:  # int() of a number with thousands of digits
        raise bad(f"a number in the body is too long to read ({str(e)[:80]})") from None


def validation_problem(e: ValidationError, prefix: tuple[str, ...]) -> Problem:
    issues = issues_from_pydantic([{**err, "loc": (*prefix, *err["loc"])} for err in e.errors()], ALLOWED, KNOWN,
                                  ALIASES)
    return Problem.invalid(issues)


def query_params(request: Request, model: type[SampleFields]) -> SampleFields:
    """The query string as `model`. Read here, not by FastAPI's query-model
    machinery, which cost about 0.2 ms of every request's 0.5 (a refusal's
    included: bench/burst_floor.py); the edge has refused a parameter given
    twice with different values. Documented from the model (app/openapi.py)."""
    pairs = request.scope.get(QUERY)
    try:
        return model.model_validate(dict(request.query_params if pairs is None else pairs))
    except ValidationError as e:
        raise validation_problem(e, ("query",)) from None


IMAGE_FIELDS = ("image", "mask_image")


@dataclasses.dataclass(frozen=True)
class Body:
    """A request's body: its parameters as `model`, and the PNG bytes of its images."""
    params: BaseModel
    images: dict[str, bytes]
    source: str  # "body" (JSON) or "form" (multipart/form-data)


async def body_params(request: Request, model: type[BaseModel], form_model: type[BaseModel]) -> Body | None:
    """The body, or None when there is none: JSON as `model` (strict, the
    images base64), or multipart/form-data with the images as file parts and
    the other fields as text, read as the query string is (`form_model`)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _form(request, form_model)
    raw = await request.body()
    if not raw.strip():
        return None
    obj = read_json(raw)
    try:
        params = model.model_validate(obj)
    except ValidationError as e:
        raise validation_problem(e, ("body",)) from None
    images = {}
    for name in IMAGE_FIELDS:
        value = getattr(params, name, None)
        if value is not None:
            try:
                images[name] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise Problem.invalid_field("body", name, f"{name} must be a PNG in base64", value) from None
    return Body(params, images, "body")


async def _form(request: Request, model: type[BaseModel]) -> Body:
    try:
        form = await request.form(max_files=len(IMAGE_FIELDS), max_fields=32)
    except Exception as e:  # python-multipart's errors: a malformed body, too many parts
        raise Problem.invalid([Issue(("form",), f"the multipart body cannot be read ({str(e)[:80]})",
                                     "form_invalid")]) from None
    text, images = {}, {}
    for name, value in form.multi_items():
        if not isinstance(value, str):  # an uploaded file
            if name not in IMAGE_FIELDS:
                raise Problem.invalid_field("form", name, f"only {' and '.join(IMAGE_FIELDS)} may be files")
            images[name] = await value.read()
        elif name in text and text[name] != value:
            raise Problem.invalid_field("form", name, f"{name} is given twice with different values", value)
        else:
            text[name] = value
    try:  # text fields are read as a query string is (the strict JSON model would refuse "5")
        params = model.model_validate(text)
    except ValidationError as e:
        raise validation_problem(e, ("form",)) from None
    return Body(params, images, "form")


# -- merging and resolving -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Given:
    """The parameters as given, typed, where each came from, and the images' bytes."""
    params: SampleFields
    source: dict[str, str]
    images: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def issue(self, field: str, msg: str, kind: str = "value_error") -> Problem:
        return Problem.invalid_field(self.source.get(field, "query"), field, msg,
                                     getattr(self.params, field, None), kind)


def merge(query: SampleFields, body: Body | None) -> Given:
    """The query string and the body as one set of parameters (of the query's model)."""
    source = {f: "query" for f in query.model_fields_set}
    if body is None:
        return Given(query, source)
    given = body.params.model_fields_set - set(IMAGE_FIELDS)
    both = sorted(query.model_fields_set & given)
    conflicts = [Issue((body.source, f), f"{f} is given in both the query string ({getattr(query, f)!r}) and the "
                                         f"body ({getattr(body.params, f)!r}) with different values; give it once",
                       input=getattr(body.params, f)) for f in both if getattr(query, f) != getattr(body.params, f)]
    if conflicts:
        raise Problem.invalid(conflicts)
    source |= {f: body.source for f in given} | {f: body.source for f in body.images}
    values = {f: getattr(body.params if src == body.source else query, f) for f, src in source.items()
              if f not in IMAGE_FIELDS}
    return Given(type(query).model_construct(_fields_set=set(values), **values), source, body.images)


def read_images(given: Given) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The image and mask the request sent, as the engine takes them (engine/io/images.py says how)."""
    out = {}
    sizes = {}
    for name in IMAGE_FIELDS:
        data = given.images.get(name)
        if data is None:
            out[name] = None
            continue
        try:
            sizes[name] = image_size(data)
            out[name] = read_digit(data, mask=name == "mask_image")
        except ImageError as e:
            raise Problem.invalid_field(given.source.get(name, "body"), name, str(e), f"<{len(data)} bytes>") \
                from None
    if len(sizes) == 2 and sizes["image"] != sizes["mask_image"]:
        (iw, ih), (mw, mh) = sizes["image"], sizes["mask_image"]
        raise given.issue("mask_image", f"mask_image is {mw} x {mh} pixels and image {iw} x {ih}: they must be "
                                        f"the same size")
    return out["image"], out["mask_image"]


SAMPLING_FIELDS = ("model", "label", "steps", "scheduler", "guidance_scale", "eta", "seed", "size", "strength",
                   "jump_length", "jump_n_sample", "seed_b", "label_b", "alpha")


def sampling_arguments(p, **overrides) -> dict:
    """generation.resolve's keyword arguments from a request model: every
    sampling field it has (a morph has no image fields), then `overrides`.
    The one place a new sampling field is passed on."""
    return {name: getattr(p, name, None) for name in SAMPLING_FIELDS} | overrides


def resolve(svc: Service, given: Given, every: int = 0) -> Generation:
    """The one resolution of a request against the loaded models."""
    p = given.params
    image, mask = read_images(given)
    probs = getattr(p, "probs", False)
    if probs and svc.classifier is None:
        raise given.issue("probs", "this server has no classifier (weights/classifier) to read the digit with")
    try:
        return generation.resolve(
            svc.pipes, svc.default_model, **sampling_arguments(p), n=getattr(p, "n", None),
            format=getattr(p, "format", None), frames=getattr(p, "frames", None), every=every, image=image,
            mask=mask, probs=probs, max_rows=svc.settings.max_request_rows)
    except InvalidParameter as e:
        missing = e.field == "label" and p.label is None
        raise given.issue(e.field, str(e), "missing" if missing else "value_error") from None


# -- one dependency per generation endpoint ------------------------------------------------
async def given_params(request: Request, query_model: type[SampleFields], body_model: type[BaseModel]) -> Given:
    """Query and (for a POST) body, merged."""
    body = await body_params(request, body_model, query_model) if request.method == "POST" else None
    return merge(query_params(request, query_model), body)


async def post_generation(request: Request, svc: ServiceDep) -> Generation:
    return resolve(svc, await given_params(request, GenerateQuery, GenerateBody))


# Last-Event-ID as the stream sends it: <seed>-<step> or <seed>-done
EVENT_ID = r"^(0|[1-9][0-9]{0,9})-(0|[1-9][0-9]{0,5}|done)$"
_EVENT_ID = re.compile(EVENT_ID)


@dataclasses.dataclass(frozen=True)
class StreamRequest:
    gen: Generation
    skip: int  # steps the client already has (EventSource reconnecting with Last-Event-ID)


LAST_EVENT_ID_DOC = "Sent by EventSource when it reconnects: the stream resumes after that step (same seed)."


async def stream_generation(request: Request, svc: ServiceDep) -> StreamRequest:
    given = await given_params(request, StreamQuery, StreamBody)
    query = given.params
    last_event_id = request.headers.get("last-event-id")
    skip = 0
    if last_event_id is not None:  # EventSource reconnecting: <seed>-<step> or <seed>-done, as we sent them
        m = _EVENT_ID.fullmatch(last_event_id)
        if m is None:
            raise Problem.invalid_field("header", "last-event-id", "Last-Event-ID must be an id this stream sent: "
                                        "<seed>-<step> or <seed>-done", last_event_id)
        seed = int(m[1])
        if query.seed is None or query.seed == seed:
            if m[2] == "done":  # the client already has the image: 204 stops EventSource reconnecting
                raise Problem(204, "done", "the client has the whole stream")
            if seed > generation.LIMITS["seed"][1]:
                raise Problem.invalid_field("header", "last-event-id", f"its seed {seed} is not a seed (0-"
                                            f"{generation.LIMITS['seed'][1]})", last_event_id)
            given = Given(query.model_copy(update={"seed": seed}), {**given.source, "seed": "header"}, given.images)
            skip = int(m[2])
    gen = resolve(svc, given, every=query.every)
    if skip > gen.sampling.steps:
        raise Problem.invalid_field("header", "last-event-id",
                                    f"Last-Event-ID names step {skip} of a {gen.sampling.steps}-step run", last_event_id)
    return StreamRequest(gen, skip)


GIF_FRAMES = 50  # a GIF keeps about this many steps unless `every` says otherwise


async def gif_generation(request: Request, svc: ServiceDep) -> Generation:
    given = await given_params(request, GifQuery, GifBody)
    query = given.params
    gen = resolve(svc, given, every=query.every or 0)
    if query.every is None:
        gen = dataclasses.replace(gen, every=max(1, math.ceil(gen.sampling.steps / GIF_FRAMES)))
    pixels = gen.frame_count * gen.size * gen.size
    if pixels > svc.settings.max_gif_pixels:  # encoding time and memory grow with both
        raise given.issue("every" if query.every is not None else "size", (
            f"this GIF would have {gen.frame_count} frames of {gen.size}x{gen.size} ({pixels:,} pixels); "
            f"this server makes at most {svc.settings.max_gif_pixels:,}: keep fewer steps (every) or ask a "
            f"smaller size"))
    return gen
