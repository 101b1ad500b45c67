"""Exploring beyond one digit: a morph between two generations, a grid that
sweeps one or two parameters, and reading back the parameters a PNG
carries. Each is several generations run as ONE job (admitted together, in
the same batches), each cell or frame exactly what it would be asked alone."""
from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError

from engine import generation
from engine.generation import Generation, parameters
from engine.io.images import ImageError, grid, gif_bytes, labelled_grid, png_bytes, png_parameters, to_image
from engine.pipeline import InvalidParameter

from .. import render
from ..dependencies import (Given, body_params, given_params, read_images, sampling_arguments, service,
                            validation_problem)
from ..errors import Problem, problem_response
from ..openapi import GENERATION_ERRORS, errors, query_parameters
from ..schemas import GRID_CELLS, GenerateQuery, GridBody, MorphBody, MorphQuery
from ..worker import Job
from .generate import next_event_or_error

router = APIRouter(tags=["explore"])


# -- several generations as one job ------------------------------------------------------
async def run_all(request: Request, gens: list[Generation]):
    """(job, the final sample of every generation, in order), or a Response to answer (refused, client gone)."""
    svc = await service(request)
    job = await svc.admit(gens)
    if isinstance(job, Problem):
        return problem_response(job), None
    events = await svc.collect(request, job)
    if events is None:
        return Response(status_code=499), None
    finals = [None] * len(job.trajectories)
    for ev in events:
        if ev.result.done:
            finals[ev.index] = ev.result.sample
    return job, finals


async def stream_all(request: Request, gens: list[Generation], labels: list[dict]):
    """The event stream of several generations: `start` {cells}, then for
    each cell's kept steps `step` {cell, step, total, timestep, x_t, x0[,
    probs]} (each frame the same bytes as that cell's own /generate/stream
    would send), `cell` {cell, image} as each finishes, then `done`."""
    svc = await service(request)
    gens = [dataclasses.replace(g, every=g.every or 1) for g in gens]  # a stream sends every step
    job = await svc.start(gens)
    return job, _events(job, gens, labels)


async def _events(job: Job, gens: list[Generation], labels: list[dict]) -> AsyncIterable[ServerSentEvent]:
    try:
        yield ServerSentEvent(event="start", data={"cells": [{"cell": i, **meta, "total": g.sampling.model_steps}
                                                             for i, (g, meta) in enumerate(zip(gens, labels))]})
        left = len(gens)
        while left:
            ev = await next_event_or_error(job)
            if isinstance(ev, ServerSentEvent):
                yield ev
                return
            r, gen, size = ev.result, gens[ev.index], gens[ev.index].size
            x_t, x0 = await render.off_loop(2 * size * size, render.frame_pair, r.sample, r.pred_original, size)
            step = {"cell": ev.index, "step": r.step, "total": r.total, "timestep": r.timestep, "x_t": x_t, "x0": x0}
            if ev.probs is not None:
                step["probs"] = list(ev.probs)
            yield ServerSentEvent(event="step", data=step)
            if r.done:
                left -= 1
                image = await render.off_loop(size * size, render.png, r.sample, size, parameters(gen))
                yield ServerSentEvent(event="cell", data={"cell": ev.index, "image": render.b64(image)})
        yield ServerSentEvent(event="done", data={"cells": len(gens)})
    finally:
        job.cancel("disconnect")


def _check_cost(svc, gens: list[Generation], field: str, given: Given) -> None:
    rows = sum(g.rows for g in gens)
    if rows > svc.settings.max_request_rows:
        raise given.issue(field, f"these {len(gens)} generations cost {rows:,} UNet rows in all; this server "
                                 f"takes at most {svc.settings.max_request_rows:,} a request")


# -- morph ------------------------------------------------------------------------------
async def morph_frames(request: Request) -> tuple[list[Generation], MorphQuery]:
    svc = await service(request)
    given = await given_params(request, MorphQuery, MorphBody)
    p = given.params
    seed = generation.random_seed() if p.seed is None else p.seed
    seed_b = generation.random_seed() if p.seed_b is None else p.seed_b
    label_b = p.label if p.label_b is None else p.label_b
    gens = []
    for k in range(p.n):
        try:
            gens.append(generation.resolve(svc.pipes, svc.default_model, **sampling_arguments(
                p, seed=seed, seed_b=seed_b, label_b=label_b, alpha=k / (p.n - 1))))
        except InvalidParameter as e:
            raise given.issue(e.field, str(e), "missing" if e.field == "label" and p.label is None else "value_error")
    _check_cost(svc, gens, "n", given)
    return gens, p


def _frame_meta(gen: Generation) -> dict:
    return {"alpha": gen.blend.alpha, "parameters": parameters(gen)}


MORPH_DOC = dict(summary="A morph between two generations: n frames from (seed, label) to (seed_b, label_b)",
                 responses={200: {"description": "format=png: the frames in a row; gif: an animation there and "
                                                 "back; json: every frame with its alpha and parameters.",
                                  "content": {"image/png": {}, "image/gif": {}, "application/json": {}}},
                            **GENERATION_ERRORS})


@router.post("/morph", response_class=Response, **MORPH_DOC, openapi_extra={**query_parameters(MorphQuery),
             "requestBody": {"required": False, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/MorphBody"}}}}})
@router.get("/morph", response_class=Response, **MORPH_DOC, openapi_extra=query_parameters(MorphQuery))
async def morph(request: Request):
    """The noise is slerped between the two seeds' and the class embedding
    mixed between the two labels' (frame k: alpha = k / (n - 1)); the first
    and last frames are the two plain generations, and every frame is made
    alone by POST /generate with its parameters (seed_b, label_b, alpha)."""
    gens, p = await morph_frames(request)
    job, finals = await run_all(request, gens)
    if finals is None:
        return job
    size = p.size
    headers = {"X-Seed": str(gens[0].seed), "X-Seed-B": str(gens[0].blend.seed_b), "X-Model": gens[0].model}
    if p.format == "json":
        pngs = await render.off_loop(len(gens) * size * size, lambda: [
            render.b64(render.png(x, size, parameters(g))) for x, g in zip(finals, gens)])
        return JSONResponse({"frames": [{"index": k, **_frame_meta(g), "png_base64": b}
                                        for k, (g, b) in enumerate(zip(gens, pngs))]}, headers=headers)
    if p.format == "gif":
        def encode():
            frames = [to_image(x, size) for x in finals]
            return gif_bytes(frames + frames[-2:0:-1], frame_ms=120, hold_last_ms=120)
        return Response(await render.off_loop(2 * len(gens) * size * size, encode), media_type="image/gif",
                        headers=headers)
    strip = await render.off_loop(len(gens) * size * size, lambda: png_bytes(grid(finals, cols=len(finals),
                                                                                  size=size)))
    return Response(strip, media_type="image/png", headers=headers)


async def admitted_morph(request: Request):
    gens, p = await morph_frames(request)
    labels = [_frame_meta(g) for g in gens]
    job, events = await stream_all(request, gens, labels)
    yield events


@router.post("/morph/stream", response_class=EventSourceResponse, summary="A morph's frames as they form (SSE)",
             responses=GENERATION_ERRORS, openapi_extra={**query_parameters(MorphQuery), "requestBody": {
                 "required": False, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MorphBody"}}}}})
@router.get("/morph/stream", response_class=EventSourceResponse, summary="A morph's frames as they form (SSE)",
            responses=GENERATION_ERRORS, openapi_extra=query_parameters(MorphQuery))
async def morph_stream(events: Annotated[AsyncIterable, Depends(admitted_morph)]) -> AsyncIterable[ServerSentEvent]:
    async for ev in events:
        yield ev


# -- grid -----------------------------------------------------------------------------------
def _label(param: str, value) -> str:
    return f"{param}={value:g}" if isinstance(value, float) else f"{param}={value}"


async def grid_cells(request: Request) -> tuple[list[Generation], GridBody, list[str], list[str] | None]:
    """Every cell of the grid, row by row: the base request with the axes' values."""
    svc = await service(request)
    body = await body_params(request, GridBody, GenerateQuery)
    if body is None or body.source != "body":
        raise Problem.invalid_field("body", "x", "a grid is a JSON body: the base parameters, and x (and y) as "
                                                 "{\"param\": name, \"values\": [...]}")
    g: GridBody = body.params
    xs, ys = g.x.values, (g.y.values if g.y else [None])
    if g.y is not None and g.y.param == g.x.param:
        raise Problem.invalid_field("body", "y", "x and y sweep the same parameter")
    if len(xs) * len(ys) > GRID_CELLS:
        raise Problem.invalid_field("body", "x", f"a grid has at most {GRID_CELLS} cells, this one "
                                                 f"{len(xs) * len(ys)}")
    if g.n != 1:
        raise Problem.invalid_field("body", "n", "a grid's cells are one image each: sweep seed for more")
    base = g.model_dump(include=set(GenerateQuery.model_fields) & g.model_fields_set)
    base.setdefault("seed", generation.random_seed())  # one seed for every cell: the comparison's fixed point
    images = Given(GenerateQuery.model_construct(), {"image": "body", "mask_image": "body"}, body.images)
    image, mask = read_images(images)
    cells = []
    for yv in ys:
        for xv in xs:
            values = {**base, g.x.param: xv, **({} if g.y is None else {g.y.param: yv})}
            try:
                p = GenerateQuery.model_validate(values, strict=True)
            except ValidationError as e:
                raise validation_problem(e, ("body", "cell")) from None
            try:
                cells.append(generation.resolve(svc.pipes, svc.default_model,
                                                **sampling_arguments(p, seed_b=None, label_b=None, alpha=None),
                                                image=image, mask=mask))
            except InvalidParameter as e:
                where = g.x.param if e.field == g.x.param else (g.y.param if g.y and e.field == g.y.param else e.field)
                raise Problem.invalid_field("body", where, f"{_label(g.x.param, xv)}"
                                            f"{'' if g.y is None else ', ' + _label(g.y.param, yv)}: {e}") from None
    _check_cost(svc, cells, "x", Given(GenerateQuery.model_construct(), {"x": "body"}))
    return cells, g, [_label(g.x.param, v) for v in xs], None if g.y is None else [_label(g.y.param, v) for v in ys]


GRID_DOC = dict(summary="A comparison grid: one request, one or two swept parameters, every cell in one batch",
                responses={200: {"description": "format=png: the labelled grid; json: every cell with its "
                                                "parameters and PNG.",
                                 "content": {"image/png": {}, "application/json": {}}}, **GENERATION_ERRORS},
                openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/GridBody"}, "examples": {"guidance x steps": {
                        "value": {"label": 3, "model": "base", "seed": 7, "x": {"param": "guidance_scale",
                                                                                "values": [0, 1, 2, 4]},
                                  "y": {"param": "steps", "values": [5, 10, 20]}}}}}}}})


@router.post("/grid", response_class=Response, **GRID_DOC)
async def compare_grid(request: Request):
    cells, g, col_labels, row_labels = await grid_cells(request)
    job, finals = await run_all(request, cells)
    if finals is None:
        return job
    size = g.size
    if g.format == "json":
        pngs = await render.off_loop(len(cells) * size * size, lambda: [
            render.b64(render.png(x, size, parameters(c))) for x, c in zip(finals, cells)])
        return JSONResponse({"columns": col_labels, "rows": row_labels, "cells": [
            {"index": i, "parameters": parameters(c), "png_base64": b} for i, (c, b) in enumerate(zip(cells, pngs))]})
    value = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    title = f"columns: {g.x.param}" + ("" if g.y is None else f"   rows: {g.y.param}")
    data = await render.off_loop(len(cells) * size * size, lambda: png_bytes(labelled_grid(
        finals, len(col_labels), size, [value(v) for v in g.x.values],
        None if g.y is None else [value(v) for v in g.y.values], title)))
    return Response(data, media_type="image/png", headers={"X-Seed": str(cells[0].seed)})


async def admitted_grid(request: Request):
    cells, g, col_labels, row_labels = await grid_cells(request)
    labels = [{"parameters": parameters(c), "column": i % len(col_labels), "row": i // len(col_labels)}
              for i, c in enumerate(cells)]
    job, events = await stream_all(request, cells, labels)
    yield events


@router.post("/grid/stream", response_class=EventSourceResponse, summary="A comparison grid as it forms (SSE)",
             responses=GENERATION_ERRORS, openapi_extra=GRID_DOC["openapi_extra"])
async def grid_stream(events: Annotated[AsyncIterable, Depends(admitted_grid)]) -> AsyncIterable[ServerSentEvent]:
    async for ev in events:
        yield ev


# -- a PNG's parameters -----------------------------------------------------------------------
@router.post("/png-info", summary="The parameters a generated PNG carries, as the request that makes it again",
             responses={200: {"description": "`parameters`: what the PNG's text chunk holds; `request`: the "
                                             "POST /generate body that gives the same bytes (an edit also needs "
                                             "its image and mask, whose SHA-256 the parameters hold)."},
                        **errors(400, 413, 415, 422)},
             openapi_extra={"requestBody": {"required": True, "content": {"image/png": {"schema": {
                 "type": "string", "format": "binary"}}}}})
async def png_info(request: Request):
    data = await request.body()
    try:
        found = png_parameters(data)
    except ImageError as e:
        raise Problem.invalid_field("body", "image", str(e)) from None
    if found is None:
        raise Problem.invalid_field("body", "image", "this PNG carries no generation parameters (it was not made "
                                                     "by this service, or they were stripped)")
    informational = {"engine", "image_sha256", "mask_image_sha256"}
    return {"parameters": found, "request": {"method": "POST", "path": "/generate",
                                             "body": {k: v for k, v in found.items() if k not in informational}}}

