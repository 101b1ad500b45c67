"""HTTP routes: generation (PNG/JSON, SSE stream, GIF), the page, probes and
metrics. Parameters are declared once in app/schemas.py."""

import math
import re
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from . import render
from .metrics import CONTENT_TYPE
from .schemas import (ALLOWED, BODY_EXAMPLES, DOCS, GenerateBody, GenerateResult, GeneratedImage, Info, Problem,
                      query)
from .service import Service, Spec, status_of
from .worker import EngineFailure, FailedEvent, FinalEvent, StepEvent

STATIC = Path(__file__).parent / "static"
router = APIRouter()

ERRORS = {
    422: {"model": Problem, "description": "A parameter is out of range; `message` names it and its range."},
    503: {"model": Problem, "description": "Not ready, shutting down, or the queue is full (see Retry-After)."},
    504: {"model": Problem, "description": "The request did not finish within the server's deadline."},
}


def service(request: Request) -> Service:
    svc: Service | None = getattr(request.app.state, "service", None)
    if svc is None or not svc.ready:
        raise HTTPException(503, "not ready: the model is not loaded", headers={"Retry-After": "5"})
    return svc


ServiceDep = Annotated[Service, Depends(service)]


def _timing_headers(spec: Spec, job, t_done: float) -> dict:
    queue_ms = ((job.started or t_done) - job.submitted) * 1e3
    gen_ms = (t_done - (job.started or t_done)) * 1e3
    return {"X-Seed": str(spec.seed), "X-Steps": str(spec.steps), "X-Scheduler": spec.scheduler,
            "Server-Timing": f"queue;dur={queue_ms:.1f}, generate;dur={gen_ms:.1f}"}


# -- POST /generate -------------------------------------------------------------
@router.post(
    "/generate", tags=["generate"], response_class=Response,
    summary="Generate handwritten digits",
    responses={200: {"description": "The PNG (a grid for n > 1), or JSON with format=json. "
                                    "The X-Seed header holds the seed used.",
                     "content": {"image/png": {}, "application/json": {
                         "schema": {"$ref": "#/components/schemas/GenerateResult"}}}}, **ERRORS},
)
async def generate(
    request: Request, svc: ServiceDep,
    label: query("label") = None, steps: query("steps") = None, scheduler: query("scheduler") = None,
    guidance_scale: query("guidance_scale") = None, seed: query("seed") = None, n: query("n") = None,
    size: query("size") = None, format: query("format") = None,  # noqa: A002 - the public parameter name
    body: Annotated[GenerateBody | None, Body(openapi_examples=BODY_EXAMPLES)] = None,
) -> Response:
    """Parameters come as query parameters, a JSON body, or both (e.g.
    `POST /generate?label=5` or `{"label": 5, "n": 4}`); a field given in both
    places with different values is a 422. Same seed + parameters = the same
    bytes."""
    p, where = _merge(dict(label=label, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale, seed=seed,
                           n=n, size=size, format=format), body)
    size, fmt = p.get("size", 28), p.get("format", "png")
    spec, trajs = await svc.trajectories(p["label"], p.get("seed"), p.get("n", 1), p.get("steps"),
                                         p.get("scheduler"), p.get("guidance_scale"), where)
    job = svc.submit(trajs)
    events = await svc.collect(request, job)
    if events is None:
        return Response(status_code=499)  # client closed the request; nobody reads this
    t_done = job.clock()
    samples = [None] * spec.n
    for ev in events:
        samples[ev.index] = ev.sample
    headers = _timing_headers(spec, job, t_done)
    if fmt == "json":
        pngs = await run_in_threadpool(lambda: [render.b64(render.png(s, size)) for s in samples])
        result = GenerateResult(
            label=spec.label, seed=spec.seed, n=spec.n, steps=spec.steps, scheduler=spec.scheduler,
            guidance_scale=spec.guidance_scale, size=size,
            images=[GeneratedImage(index=i, seed=s, png_base64=b) for i, (s, b) in enumerate(zip(spec.seeds, pngs))],
            queue_ms=round(((job.started or t_done) - job.submitted) * 1e3, 1),
            generate_ms=round((t_done - (job.started or t_done)) * 1e3, 1))
        return JSONResponse(result.model_dump(), headers=headers)
    data = await run_in_threadpool(render.png if spec.n == 1 else render.grid_png,
                                   samples[0] if spec.n == 1 else samples, size)
    name = f"digit-{spec.label}-seed-{spec.seed}{'' if spec.n == 1 else f'-x{spec.n}'}.png"
    return Response(data, media_type="image/png",
                    headers={**headers, "Content-Disposition": f'inline; filename="{name}"'})


def _merge(given: dict, body: GenerateBody | None) -> tuple[dict, dict]:
    """Query and body parameters into one dict; where each came from."""
    q = {k: v for k, v in given.items() if v is not None}
    b = body.model_dump(exclude_none=True) if body is not None else {}
    errors = [{"type": "value_error", "loc": ("body", k), "input": b[k],
               "msg": f"{k} is given in both the query string ({q[k]!r}) and the JSON body ({b[k]!r}) "
                      f"with different values; give it once"}
              for k in q.keys() & b.keys() if q[k] != b[k]]
    merged = q | b
    if "label" not in merged:
        errors.append({"type": "missing", "loc": ("query", "label"), "input": None,
                       "msg": "Field required: give label (0-9) in the query string or the JSON body"})
    if errors:
        raise RequestValidationError(errors)
    return merged, {k: "body" if k in b else "query" for k in merged}


# -- GET /generate/stream (SSE) ------------------------------------------------
_EVENT_ID = re.compile(r"^(\d+)-(\d+|done)$")


class StreamPlan:
    def __init__(self, spec, job, size, skip, x_T):
        self.spec, self.job, self.size, self.skip, self.x_T = spec, job, size, skip, x_T


async def stream_plan(
    svc: ServiceDep,
    label: query("label", required=True), steps: query("steps") = None, scheduler: query("scheduler") = None,
    guidance_scale: query("guidance_scale") = None, seed: query("seed") = None,
    every: query("every") = None, size: query("size") = None,
    last_event_id: Annotated[str | None, Header(description="Sent by EventSource when it reconnects: the "
                                                "stream resumes after that step (same seed).")] = None,
):
    """Admission happens here, before the stream starts, so a full queue is a
    real 503 (with Retry-After) and not an event inside a 200."""
    skip = 0
    m = _EVENT_ID.match(last_event_id or "")
    if m and (seed is None or seed == int(m[1])):
        if m[2] == "done":  # the client already has the image: 204 stops EventSource reconnecting
            raise HTTPException(204)
        seed, skip = int(m[1]), int(m[2])
    spec, trajs = await svc.trajectories(label, seed, 1, steps, scheduler, guidance_scale)
    x_T = trajs[0].sample[0].copy()
    job = svc.submit(trajs, every=every or 1)
    try:
        yield StreamPlan(spec, job, size or 28, skip, x_T)
    finally:
        job.cancel("disconnect")  # the stream ended early, or never started


@router.get("/generate/stream", tags=["generate"], response_class=EventSourceResponse,
            summary="Watch one digit being denoised (Server-Sent Events)",
            responses={200: {"description": (
                "`event: start` {seed, total, ..., x_t}: the initial noise; then `event: step` "
                "{step, total, timestep, x_t, x0} every k-th step (x_t: the noisy sample, x0: the model's estimate "
                "of the final digit, both base64 PNG), ids `<seed>-<step>`; then `event: done` {image, seed, ...}. "
                "On failure `event: error` {status, detail}.")}, **ERRORS})
async def generate_stream(plan: Annotated[StreamPlan, Depends(stream_plan)]) -> AsyncIterable[ServerSentEvent]:
    spec, job, size = plan.spec, plan.job, plan.size
    meta = {"seed": spec.seed, "label": spec.label, "steps": spec.steps, "scheduler": spec.scheduler,
            "guidance_scale": spec.guidance_scale, "size": size}
    try:
        if plan.skip == 0:
            noise = await run_in_threadpool(render.png, plan.x_T, size)
            yield ServerSentEvent(event="start", id=f"{spec.seed}-0", retry=3000,
                                  data={**meta, "total": spec.steps, "x_t": render.b64(noise)})
        while True:
            ev = await job.next_event()
            if isinstance(ev, StepEvent):
                if ev.step <= plan.skip:
                    continue
                x_t, x0 = await run_in_threadpool(render.frame_pair, ev.sample, ev.pred_original, size)
                yield ServerSentEvent(event="step", id=f"{spec.seed}-{ev.step}", data={
                    "step": ev.step, "total": ev.total, "timestep": ev.timestep, "x_t": x_t, "x0": x0})
            elif isinstance(ev, FinalEvent):
                t_done = job.clock()
                image = await run_in_threadpool(render.png, ev.sample, size)
                yield ServerSentEvent(event="done", id=f"{spec.seed}-done", data={
                    **meta, "image": render.b64(image),
                    "queue_ms": round(((job.started or t_done) - job.submitted) * 1e3, 1),
                    "generate_ms": round((t_done - (job.started or t_done)) * 1e3, 1)})
                return
            elif isinstance(ev, FailedEvent):
                yield ServerSentEvent(event="error", data={"status": status_of(ev.error), "detail": str(ev.error)})
                return
    except EngineFailure as e:
        yield ServerSentEvent(event="error", data={"status": 500, "detail": str(e)})
    finally:
        job.cancel("disconnect")


# -- GET /generate.gif -----------------------------------------------------------
@router.get("/generate.gif", tags=["generate"], response_class=Response,
            summary="The denoising of one digit as an animated GIF",
            responses={200: {"content": {"image/gif": {}},
                             "description": "frames=xt (default): the initial noise, then x_t after every kept "
                                            "step; frames=x0: the model's estimate of the digit after every kept "
                                            "step. The last frame (the digit) is held. X-Seed: the seed."},
                       **ERRORS})
async def generate_gif(
    request: Request, svc: ServiceDep,
    label: query("label", required=True), steps: query("steps") = None, scheduler: query("scheduler") = None,
    guidance_scale: query("guidance_scale") = None, seed: query("seed") = None, size: query("size") = None,
    frames: query("frames") = None, every: query("every", doc=DOCS["gif_every"]) = None,
) -> Response:
    spec, trajs = await svc.trajectories(label, seed, 1, steps, scheduler, guidance_scale)
    x_T = trajs[0].sample[0].copy()
    job = svc.submit(trajs, every=every or max(1, math.ceil(spec.steps / 50)))
    events = await svc.collect(request, job)
    if events is None:
        return Response(status_code=499)
    t_done = job.clock()
    steps_ = [ev for ev in events if isinstance(ev, StepEvent)]
    pictures = ([ev.pred_original for ev in steps_] if frames == "x0"
                else [x_T] + [ev.sample for ev in steps_])
    data = await run_in_threadpool(render.gif, pictures, size or 28)
    return Response(data, media_type="image/gif", headers={
        **_timing_headers(spec, job, t_done),
        "Content-Disposition": f'inline; filename="digit-{spec.label}-seed-{spec.seed}.gif"'})


# -- page, info, probes, metrics -------------------------------------------------
@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/info", tags=["service"], response_model=Info, summary="Model, sampling defaults and limits")
async def info(svc: ServiceDep) -> Info:
    pipe, s = svc.pipe, svc.settings
    return Info(
        model={"weights": str(s.weights), "num_labels": pipe.num_labels, "sample_shape": list(pipe.sample_shape),
               "parameters": pipe.unet.num_parameters()},
        defaults=vars(pipe.defaults),
        limits={**ALLOWED, "max_batch": s.max_batch, "max_queue": s.max_queue, "deadline_s": s.deadline_s},
        schedulers=["ddpm", "ddim", "dpm"])


@router.get("/healthz", tags=["service"], summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["service"], summary="Readiness: weights loaded and the engine worker running",
            responses={503: {"model": Problem}})
async def readyz(request: Request):
    svc: Service | None = getattr(request.app.state, "service", None)
    if svc is None or not svc.ready:
        return JSONResponse({"status": "not ready", "detail": "the model is not loaded or the engine is stopping"},
                            status_code=503, headers={"Retry-After": "5"})
    return {"status": "ready", "weights": str(svc.settings.weights)}


@router.get("/metrics", tags=["service"], summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
