"""HTTP routes: generation (PNG/JSON, SSE stream, GIF), the page, probes and
metrics. Parameters are declared once in app/schemas.py."""

import asyncio
import math
import re
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from . import render
from .metrics import CONTENT_TYPE
from .openapi import GENERATION_ERRORS, SERVICE_ERRORS
from .request import Generation, Given, resolve
from .schemas import (ALLOWED, BODY_EXAMPLES, GenerateBody, GenerateParams, GeneratedImage, GenerateResult, GifParams,
                      Info, ModelInfo, StreamParams)
from .service import Service, status_of
from .worker import EngineFailure, FailedEvent

STATIC = Path(__file__).parent / "static"
GIF_ENCODES = asyncio.Semaphore(2)
router = APIRouter()


async def service(request: Request) -> Service:
    # async: FastAPI runs a sync dependency in the thread pool, a thread hop
    # (and a wait for the GIL beside the engine) on every request, 503s included
    svc: Service | None = getattr(request.app.state, "service", None)
    if svc is None or not svc.ready:
        raise HTTPException(503, "not ready: the model is not loaded", headers={"Retry-After": "5"})
    return svc


ServiceDep = Annotated[Service, Depends(service)]


def _timing(job, t_done: float) -> tuple[float, float]:
    """(queue, generate) milliseconds of a job that has finished."""
    started = job.started or t_done
    return round((started - job.submitted) * 1e3, 1), round((t_done - started) * 1e3, 1)


def _headers(gen: Generation, job, t_done: float) -> dict:
    queue_ms, gen_ms = _timing(job, t_done)
    return {"X-Seed": str(gen.seed), "X-Model": gen.model, "X-Steps": str(gen.sampling.steps),
            "X-Scheduler": gen.sampling.scheduler,
            "Server-Timing": f"queue;dur={queue_ms:.1f}, generate;dur={gen_ms:.1f}"}


# -- POST /generate -------------------------------------------------------------
@router.post(
    "/generate", tags=["generate"], response_class=Response,
    summary="Generate handwritten digits",
    responses={200: {"description": "The PNG (a grid for n > 1), or JSON with format=json. "
                                    "The X-Seed header holds the seed used.",
                     "content": {"image/png": {}, "application/json": {
                         "schema": {"$ref": "#/components/schemas/GenerateResult"}}}}, **GENERATION_ERRORS},
)
async def generate(
    request: Request, svc: ServiceDep, query: Annotated[GenerateParams, Query()],
    body: Annotated[GenerateBody | None, Body(openapi_examples=BODY_EXAMPLES)] = None,
) -> Response:
    """Parameters come as query parameters, a JSON body, or both (e.g.
    `POST /generate?label=5` or `{"label": 5, "n": 4}`); a field given in both
    places with different values is a 422. Same seed + parameters = the same
    bytes."""
    given = Given(query, body)
    gen = resolve(svc.pipes, svc.default_model, given, n=given.get("n", 1), max_rows=svc.settings.max_request_rows)
    size, fmt = given.get("size", 28), given.get("format", "png")
    job = await svc.start(gen)
    events = await svc.collect(request, job)
    if events is None:
        return Response(status_code=499)  # client closed the request; nobody reads this
    t_done = job.clock()
    samples = [None] * gen.n
    for ev in events:
        if ev.result.done:
            samples[ev.index] = ev.result.sample
    headers = _headers(gen, job, t_done)
    if fmt == "json":
        pngs = await render.off_loop(gen.n * size * size, lambda: [render.b64(render.png(s, size)) for s in samples])
        queue_ms, gen_ms = _timing(job, t_done)
        sm = gen.sampling
        result = GenerateResult(
            model=gen.model, label=sm.label, seed=gen.seed, n=gen.n, steps=sm.steps, scheduler=sm.scheduler,
            guidance_scale=sm.guidance_scale, size=size,
            images=[GeneratedImage(index=i, seed=s, png_base64=b) for i, (s, b) in enumerate(zip(gen.seeds, pngs))],
            queue_ms=queue_ms, generate_ms=gen_ms)
        return JSONResponse(result.model_dump(), headers=headers)
    data = await render.off_loop(gen.n * size * size, render.png if gen.n == 1 else render.grid_png,
                                 samples[0] if gen.n == 1 else samples, size)
    name = f"digit-{gen.sampling.label}-seed-{gen.seed}{'' if gen.n == 1 else f'-x{gen.n}'}.png"
    return Response(data, media_type="image/png",
                    headers={**headers, "Content-Disposition": f'inline; filename="{name}"'})


# -- GET /generate/stream (SSE) ------------------------------------------------
# <seed>-<step> or <seed>-done as the stream sends them: a seed 0..2^32-1, a step 0..1000
_SEED = (r"(0|[1-9][0-9]{0,8}|[1-3][0-9]{9}|4[01][0-9]{8}|42[0-8][0-9]{7}|429[0-3][0-9]{6}|4294[0-8][0-9]{5}"
         r"|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}|4294967[01][0-9]{2}|42949672[0-8][0-9]|429496729[0-5])")
EVENT_ID = f"^{_SEED}-(0|[1-9][0-9]{{0,2}}|1000|done)$"
_EVENT_ID = re.compile(EVENT_ID)


class StreamPlan:
    def __init__(self, gen: Generation, job, size: int, skip: int, x_T):
        self.gen, self.job, self.size, self.skip, self.x_T = gen, job, size, skip, x_T


async def stream_plan(
    svc: ServiceDep, query: Annotated[StreamParams, Query()],
    last_event_id: Annotated[str | None, Header(description="Sent by EventSource when it reconnects: the "
                                                "stream resumes after that step (same seed).",
                                                pattern=EVENT_ID)] = None,
):
    """Admission happens here, before the stream starts, so a full queue is a
    real 503 (with Retry-After) and not an event inside a 200."""
    skip = 0
    if last_event_id is not None:  # EventSource reconnecting: <seed>-<step> or <seed>-done, as we sent them
        m = _EVENT_ID.fullmatch(last_event_id)
        if m is None:
            raise RequestValidationError([{"type": "value_error", "loc": ("header", "last-event-id"),
                                           "input": last_event_id, "msg": "Last-Event-ID must be an id this "
                                           "stream sent: <seed>-<step> or <seed>-done"}])
        seed = int(m[1])
        if query.seed is None or query.seed == seed:
            if m[2] == "done":  # the client already has the image: 204 stops EventSource reconnecting
                raise HTTPException(204)
            try:  # the seed is checked like a seed given in the query
                query = StreamParams.model_validate({**query.model_dump(exclude_none=True), "seed": seed})
            except ValidationError as e:
                raise RequestValidationError([{**err, "loc": ("header", "last-event-id"),
                                               "msg": f"its seed: {err['msg']}"} for err in e.errors()]) from None
            skip = int(m[2])
    given = Given(query)
    gen = resolve(svc.pipes, svc.default_model, given, max_rows=svc.settings.max_request_rows)
    if skip > gen.sampling.steps:
        raise RequestValidationError([{"type": "value_error", "loc": ("header", "last-event-id"), "input": last_event_id,
                                       "msg": f"Last-Event-ID names step {skip} of a {gen.sampling.steps}-step run"}])
    job = await svc.start(gen, every=given.get("every", 1))
    x_T = job.x_T
    try:
        yield StreamPlan(gen, job, given.get("size", 28), skip, x_T)
    finally:
        job.cancel("disconnect")  # the stream ended early, or never started


@router.get("/generate/stream", tags=["generate"], response_class=EventSourceResponse,
            summary="Watch one digit being denoised (Server-Sent Events)",
            responses={200: {"description": (
                "`event: start` {seed, total, ..., x_t}: the initial noise; then `event: step` "
                "{step, total, timestep, x_t, x0} every k-th step (x_t: the noisy sample, x0: the model's estimate "
                "of the final digit, both base64 PNG), ids `<seed>-<step>`; then `event: done` {image, seed, ...}. "
                "On failure `event: error` {status, detail}.")},
                       204: {"description": "Last-Event-ID says the client already has the image: nothing to send."},
                       **GENERATION_ERRORS})
async def generate_stream(plan: Annotated[StreamPlan, Depends(stream_plan)]) -> AsyncIterable[ServerSentEvent]:
    gen, job, size = plan.gen, plan.job, plan.size
    sm = gen.sampling
    meta = {"model": gen.model, "seed": gen.seed, "label": sm.label, "steps": sm.steps, "scheduler": sm.scheduler,
            "guidance_scale": sm.guidance_scale, "size": size}
    try:
        if plan.skip == 0:
            noise = await render.off_loop(size * size, render.png, plan.x_T, size)
            yield ServerSentEvent(event="start", id=f"{gen.seed}-0", retry=3000,
                                  data={**meta, "total": sm.steps, "x_t": render.b64(noise)})
        while True:
            ev = await job.next_event()
            if isinstance(ev, FailedEvent):
                yield ServerSentEvent(event="error", data={"status": status_of(ev.error), "detail": str(ev.error)})
                return
            r = ev.result
            if r.step > plan.skip:
                x_t, x0 = await render.off_loop(2 * size * size, render.frame_pair, r.sample, r.pred_original, size)
                yield ServerSentEvent(event="step", id=f"{gen.seed}-{r.step}", data={
                    "step": r.step, "total": r.total, "timestep": r.timestep, "x_t": x_t, "x0": x0})
            if r.done:
                t_done = job.clock()
                image = await render.off_loop(size * size, render.png, r.sample, size)
                queue_ms, gen_ms = _timing(job, t_done)
                yield ServerSentEvent(event="done", id=f"{gen.seed}-done", data={
                    **meta, "image": render.b64(image), "queue_ms": queue_ms, "generate_ms": gen_ms})
                return
    except EngineFailure as e:
        yield ServerSentEvent(event="error", data={"status": 500, "detail": str(e)})
    finally:
        job.cancel("disconnect")


# -- GET /generate.gif -----------------------------------------------------------
@router.get("/generate.gif", tags=["generate"], response_class=Response,
            summary="The denoising of one digit as an animated GIF",
            responses={200: {"content": {"image/gif": {}},
                             "description": "frames=x0 (default): the model's estimate of the digit after every "
                                            "kept step; frames=xt: the initial noise, then x_t after every kept "
                                            "step. The last frame (the digit) is held. X-Seed: the seed."},
                       **GENERATION_ERRORS})
async def generate_gif(request: Request, svc: ServiceDep, query: Annotated[GifParams, Query()]) -> Response:
    given = Given(query)
    gen = resolve(svc.pipes, svc.default_model, given, max_rows=svc.settings.max_request_rows)
    every, size = given.get("every", max(1, math.ceil(gen.sampling.steps / 50))), given.get("size", 28)
    frames = math.ceil(gen.sampling.steps / every) + 1
    if frames * size * size > svc.settings.max_gif_pixels:  # encoding time and memory grow with both
        raise given.error("every" if "every" in given.values else "size",
                          f"this GIF would have {frames} frames of {size}x{size} ({frames * size * size:,} pixels); "
                          f"this server makes at most {svc.settings.max_gif_pixels:,}: keep fewer steps (every) "
                          f"or ask a smaller size")
    job = await svc.start(gen, every=every)
    x_T = job.x_T
    events = await svc.collect(request, job)
    if events is None:
        return Response(status_code=499)
    t_done = job.clock()
    steps = [ev.result for ev in events]
    # x0 by default: the model's estimate shows the digit forming; x_t is mostly noise until the last steps
    pictures = ([r.pred_original for r in steps] if given.get("frames", "x0") == "x0"
                else [x_T] + [r.sample for r in steps])
    async with GIF_ENCODES:  # a bounded number at once: each holds every frame in memory
        data = await run_in_threadpool(render.gif, pictures, size)
    return Response(data, media_type="image/gif", headers={
        **_headers(gen, job, t_done),
        "Content-Disposition": f'inline; filename="digit-{gen.sampling.label}-seed-{gen.seed}.gif"'})


# -- page, info, probes, metrics -------------------------------------------------
@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/info", tags=["service"], response_model=Info, summary="Models, sampling defaults and limits",
            responses=SERVICE_ERRORS)
async def info(svc: ServiceDep) -> Info:
    s = svc.settings

    def describe(pipe) -> ModelInfo:
        return ModelInfo(
            model={"num_labels": pipe.num_labels, "sample_shape": list(pipe.sample_shape),
                   "parameters": pipe.unet.num_parameters(), "scheduler_class": pipe.scheduler_class},
            defaults=vars(pipe.defaults),
            limits={**ALLOWED, "max_steps": pipe.max_steps, "max_request_rows": s.max_request_rows,
                    "max_gif_pixels": s.max_gif_pixels, "max_batch": s.max_batch, "max_queue": s.max_queue,
                    "max_backlog_rows": s.max_backlog_rows, "deadline_s": s.deadline_s},
            schedulers=list(pipe.samplers))
    models = {name: describe(pipe) for name, pipe in svc.pipes.items()}
    return Info(**models[svc.default_model].model_dump(), default_model=svc.default_model, models=models)


@router.get("/healthz", tags=["service"], summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["service"], summary="Readiness: weights loaded and the engine worker running",
            responses={503: {"description": "Not ready (yet, or any more).", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Problem"}}}}})
async def readyz(request: Request):
    svc: Service | None = getattr(request.app.state, "service", None)
    if svc is None or not svc.ready:
        return JSONResponse({"status": "not ready", "detail": "the model is not loaded or the engine is stopping"},
                            status_code=503, headers={"Retry-After": "5"})
    return {"status": "ready", "models": sorted(svc.pipes)}


@router.get("/metrics", tags=["service"], summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


# HEAD on the GET endpoints that do no generation (uvicorn sends the headers
# without the body); left out of the OpenAPI document, where it would only
# repeat the GET. The generating GETs (stream, GIF) do not take HEAD: it would
# cost a whole generation to answer.
for _route in list(router.routes):
    if getattr(_route, "path", None) in ("/", "/info", "/healthz", "/readyz", "/metrics"):
        router.add_api_route(_route.path, _route.endpoint, methods=["HEAD"], include_in_schema=False,
                             response_class=_route.response_class, name=f"{_route.name}_head")
