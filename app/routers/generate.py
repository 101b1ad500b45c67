"""The generation endpoints: a PNG (or JSON), the denoising as Server-Sent
Events, and as a GIF. Each takes its request as one resolved Generation
(app/dependencies.py) and runs it through `Service.start`, the one
admission."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from engine.generation import Generation, parameters

from .. import render
# The routes call their parsing and resolution directly rather than through
# Depends: FastAPI's dependency solving was a third of a refused request's cost.
from ..dependencies import EVENT_ID, LAST_EVENT_ID_DOC, gif_generation, post_generation, service, stream_generation
from ..errors import Problem, problem_response, sse_error
from ..openapi import GENERATION_ERRORS, query_parameters
from ..schemas import BODY_EXAMPLES, GeneratedImage, GenerateQuery, GenerateResult, GifQuery, StreamQuery
from ..worker import FailedEvent, Job

GIF_ENCODES = asyncio.Semaphore(2)  # each holds every frame in memory
router = APIRouter(tags=["generate"])


def _timing(job: Job, t_done: float) -> tuple[float, float]:
    """(queue, generate) milliseconds of a job that has finished."""
    started = job.started or t_done
    return round((started - job.submitted) * 1e3, 1), round((t_done - started) * 1e3, 1)


def _headers(gen: Generation, job: Job, t_done: float) -> dict:
    queue_ms, gen_ms = _timing(job, t_done)
    return {"X-Seed": str(gen.seed), "X-Model": gen.model, "X-Steps": str(gen.sampling.steps),
            "X-Scheduler": gen.sampling.scheduler,
            "Server-Timing": f"queue;dur={queue_ms:.1f}, generate;dur={gen_ms:.1f}"}


def _meta(gen: Generation) -> dict:
    """What the responses say about how a generation was sampled."""
    sm = gen.sampling
    return {"model": gen.model, "seed": gen.seed, "label": sm.label, "steps": sm.steps, "scheduler": sm.scheduler,
            "guidance_scale": sm.guidance_scale, "eta": sm.eta, "strength": sm.strength, "size": gen.size}


# -- POST /generate -------------------------------------------------------------
@router.post(
    "/generate", response_class=Response, summary="Generate handwritten digits",
    responses={200: {"description": "The PNG (a grid for n > 1), or JSON with format=json. "
                                    "The X-Seed header holds the seed used.",
                     "content": {"image/png": {}, "application/json": {
                         "schema": {"$ref": "#/components/schemas/GenerateResult"}}}}, **GENERATION_ERRORS},
    # query and body are read (strictly: no duplicate keys) by the dependency; documented here
    openapi_extra={**query_parameters(GenerateQuery), "requestBody": {"required": False, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/GenerateBody"}, "examples": BODY_EXAMPLES},
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/GenerateBody"}}}}},
)
async def generate(request: Request):
    """Parameters come as query parameters, a JSON body, or both (e.g.
    `POST /generate?label=5` or `{"label": 5, "n": 4}`); a field given in both
    places with different values is a 422. Same seed + parameters = the same
    bytes."""
    svc = await service(request)
    gen = await post_generation(request, svc)
    job = await svc.admit(gen)
    if isinstance(job, Problem):
        return problem_response(job)
    events = await svc.collect(request, job)
    if events is None:
        return Response(status_code=499)  # client closed the request; nobody reads this
    t_done = job.clock()
    samples = [None] * gen.n
    for ev in events:
        if ev.result.done:
            samples[ev.index] = ev.result.sample
    headers, size = _headers(gen, job, t_done), gen.size
    if gen.format == "json":  # each image's PNG carries its own parameters (its own seed)
        pngs = await render.off_loop(gen.n * size * size, lambda: [
            render.b64(render.png(x, size, parameters(gen, seed))) for x, seed in zip(samples, gen.seeds)])
        queue_ms, gen_ms = _timing(job, t_done)
        result = GenerateResult(
            **_meta(gen), n=gen.n, queue_ms=queue_ms, generate_ms=gen_ms,
            images=[GeneratedImage(index=i, seed=s, png_base64=b) for i, (s, b) in enumerate(zip(gen.seeds, pngs))])
        return JSONResponse(result.model_dump(), headers=headers)
    data = await render.off_loop(gen.n * size * size, render.png if gen.n == 1 else render.grid_png,
                                 samples[0] if gen.n == 1 else samples, size, parameters(gen, grid=True))
    name = f"digit-{gen.sampling.label}-seed-{gen.seed}{'' if gen.n == 1 else f'-x{gen.n}'}.png"
    return Response(data, media_type="image/png",
                    headers={**headers, "Content-Disposition": f'inline; filename="{name}"'})


# -- GET /generate/stream (SSE) ------------------------------------------------
async def admitted_stream(request: Request):
    """Admission happens here, before the stream starts, so a full queue is a
    real 503 (with Retry-After) and not an event inside a 200."""
    svc = await service(request)
    req = await stream_generation(request, svc)
    job = await svc.start(req.gen)
    try:
        yield req, job
    finally:
        job.cancel("disconnect")  # the stream ended early, or never started


async def next_event_or_error(job: Job):
    """The job's next ImageStep, or the `event: error` that ends its stream
    (the job refused or ended by a deadline, shutdown or failure)."""
    try:
        ev = await job.next_event()
    except Problem as p:
        return sse_error(p)
    return sse_error(ev.error) if isinstance(ev, FailedEvent) else ev


STREAM_DOC = dict(
    response_class=EventSourceResponse, summary="Watch one digit being denoised (Server-Sent Events)",
    responses={200: {"description": (
        "`event: start` {seed, total, ..., x_t}: the starting sample; then `event: step` "
        "{step, total, timestep, x_t, x0[, probs]} every k-th step (x_t: the noisy sample, x0: the model's estimate "
        "of the final digit, both base64 PNG; probs: p(digit | x0), ten numbers, with probs=true), ids "
        "`<seed>-<step>`; then `event: done` {image, seed, ...}. On failure `event: error` with the problem body "
        "(status, code, detail).")},
        204: {"description": "Last-Event-ID says the client already has the image: nothing to send."},
        **GENERATION_ERRORS})
LAST_EVENT_ID = {"name": "last-event-id", "in": "header", "required": False, "description": LAST_EVENT_ID_DOC,
                 "schema": {"type": "string", "pattern": EVENT_ID}}


def with_body(schema: str, query: dict) -> dict:
    """`openapi_extra` of a POST variant: its query and its body (JSON or multipart/form-data with files)."""
    return {**query, "requestBody": {"required": False, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}},
        "multipart/form-data": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}}


@router.post("/generate/stream", **STREAM_DOC, openapi_extra=with_body("StreamBody", query_parameters(StreamQuery, LAST_EVENT_ID)))
@router.get("/generate/stream", **STREAM_DOC, openapi_extra=query_parameters(StreamQuery, LAST_EVENT_ID))
async def generate_stream(started: Annotated[tuple, Depends(admitted_stream)]) -> AsyncIterable[ServerSentEvent]:
    req, job = started
    gen, size = req.gen, req.gen.size
    meta = _meta(gen)
    if req.skip == 0:
        noise = await render.off_loop(size * size, render.png, job.x_T, size)
        yield ServerSentEvent(event="start", id=f"{gen.seed}-0", retry=3000,
                              data={**meta, "total": gen.sampling.steps, "x_t": render.b64(noise)})
    while True:
        ev = await next_event_or_error(job)
        if isinstance(ev, ServerSentEvent):
            yield ev
            return
        r = ev.result
        if r.step > req.skip:
            x_t, x0 = await render.off_loop(2 * size * size, render.frame_pair, r.sample, r.pred_original, size)
            step = {"step": r.step, "total": r.total, "timestep": r.timestep, "x_t": x_t, "x0": x0}
            if ev.probs is not None:
                step["probs"] = list(ev.probs)
            yield ServerSentEvent(event="step", id=f"{gen.seed}-{r.step}", data=step)
        if r.done:
            t_done = job.clock()
            image = await render.off_loop(size * size, render.png, r.sample, size, parameters(gen))
            queue_ms, gen_ms = _timing(job, t_done)
            yield ServerSentEvent(event="done", id=f"{gen.seed}-done", data={
                **meta, "image": render.b64(image), "queue_ms": queue_ms, "generate_ms": gen_ms})
            return


# -- GET /generate.gif -----------------------------------------------------------
GIF_DOC = dict(
    response_class=Response, summary="The denoising of one digit as an animated GIF",
    responses={200: {"content": {"image/gif": {}},
                     "description": "frames=x0 (default): the model's estimate of the digit after every kept step; "
                                    "frames=xt: the starting sample, then x_t after every kept step. The last frame "
                                    "(the digit) is held. X-Seed: the seed."},
               **GENERATION_ERRORS})


@router.post("/generate.gif", **GIF_DOC, openapi_extra=with_body("GifBody", query_parameters(GifQuery)))
@router.get("/generate.gif", **GIF_DOC, openapi_extra=query_parameters(GifQuery))
async def generate_gif(request: Request):
    svc = await service(request)
    gen = await gif_generation(request, svc)
    job = await svc.admit(gen)
    if isinstance(job, Problem):
        return problem_response(job)
    x_T = job.x_T
    events = await svc.collect(request, job)
    if events is None:
        return Response(status_code=499)
    t_done = job.clock()
    steps = [ev.result for ev in events]
    # x0 by default: the model's estimate shows the digit forming; x_t is mostly noise until the last steps
    pictures = [r.pred_original for r in steps] if gen.frames == "x0" else [x_T] + [r.sample for r in steps]
    async with GIF_ENCODES:
        data = await render.off_loop(len(pictures) * gen.size * gen.size, render.gif, pictures, gen.size)
    return Response(data, media_type="image/gif", headers={
        **_headers(gen, job, t_done),
        "Content-Disposition": f'inline; filename="digit-{gen.sampling.label}-seed-{gen.seed}.gif"'})

