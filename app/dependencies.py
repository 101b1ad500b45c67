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

import dataclasses
import json
import math
import re
from typing import Annotated

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from engine import generation
from engine.generation import Generation
from engine.pipeline import InvalidParameter

from .edge import QUERY
from .errors import Issue, Problem, issues_from_pydantic
from .schemas import ALIASES, ALLOWED, KNOWN, GenerateBody, GenerateQuery, GifQuery, SampleFields, StreamQuery
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


async def body_params(request: Request, model: type[BaseModel]) -> BaseModel | None:
    """The JSON body as `model`, or None when there is none."""
    raw = await request.body()
    if not raw.strip():
        return None
    obj = read_json(raw)
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise validation_problem(e, ("body",)) from None


# -- merging and resolving -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Given:
    """The parameters as given, typed, and where each came from."""
    params: SampleFields
    source: dict[str, str]

    def issue(self, field: str, msg: str, kind: str = "value_error") -> Problem:
        return Problem.invalid_field(self.source.get(field, "query"), field, msg,
                                     getattr(self.params, field, None), kind)


def merge(query: GenerateQuery, body: GenerateBody | None) -> Given:
    """The query string and the JSON body as one set of parameters."""
    source = {f: "query" for f in query.model_fields_set}
    if body is None:
        return Given(query, source)
    both = sorted(query.model_fields_set & body.model_fields_set)
    conflicts = [Issue(("body", f), f"{f} is given in both the query string ({getattr(query, f)!r}) and the JSON "
                                    f"body ({getattr(body, f)!r}) with different values; give it once",
                       input=getattr(body, f)) for f in both if getattr(query, f) != getattr(body, f)]
    if conflicts:
        raise Problem.invalid(conflicts)
    source |= {f: "body" for f in body.model_fields_set}
    values = {f: getattr(body if src == "body" else query, f) for f, src in source.items()}
    return Given(GenerateQuery.model_construct(_fields_set=set(values), **values), source)


def resolve(svc: Service, given: Given, every: int = 0) -> Generation:
    """The one resolution of a request against the loaded models."""
    p = given.params
    try:
        return generation.resolve(
            svc.pipes, svc.default_model, model=p.model, label=p.label, steps=p.steps, scheduler=p.scheduler,
            guidance_scale=p.guidance_scale, eta=p.eta, seed=p.seed, n=getattr(p, "n", None), size=p.size,
            format=getattr(p, "format", None), frames=getattr(p, "frames", None), every=every,
            max_rows=svc.settings.max_request_rows)
    except InvalidParameter as e:
        missing = e.field == "label" and p.label is None
        raise given.issue(e.field, str(e), "missing" if missing else "value_error") from None


# -- one dependency per generation endpoint ------------------------------------------------
async def post_generation(request: Request, svc: ServiceDep) -> Generation:
    return resolve(svc, merge(query_params(request, GenerateQuery), await body_params(request, GenerateBody)))


# Last-Event-ID as the stream sends it: <seed>-<step> or <seed>-done
EVENT_ID = r"^(0|[1-9][0-9]{0,9})-(0|[1-9][0-9]{0,5}|done)$"
_EVENT_ID = re.compile(EVENT_ID)


@dataclasses.dataclass(frozen=True)
class StreamRequest:
    gen: Generation
    skip: int  # steps the client already has (EventSource reconnecting with Last-Event-ID)


LAST_EVENT_ID_DOC = "Sent by EventSource when it reconnects: the stream resumes after that step (same seed)."


async def stream_generation(request: Request, svc: ServiceDep) -> StreamRequest:
    query = query_params(request, StreamQuery)
    last_event_id = request.headers.get("last-event-id")
    given = Given(query, {f: "query" for f in query.model_fields_set})
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
            given = Given(query.model_copy(update={"seed": seed}), {**given.source, "seed": "header"})
            skip = int(m[2])
    gen = resolve(svc, given, every=query.every)
    if skip > gen.sampling.steps:
        raise Problem.invalid_field("header", "last-event-id",
                                    f"Last-Event-ID names step {skip} of a {gen.sampling.steps}-step run", last_event_id)
    return StreamRequest(gen, skip)


GIF_FRAMES = 50  # a GIF keeps about this many steps unless `every` says otherwise


async def gif_generation(request: Request, svc: ServiceDep) -> Generation:
    query = query_params(request, GifQuery)
    given = Given(query, {f: "query" for f in query.model_fields_set})
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
