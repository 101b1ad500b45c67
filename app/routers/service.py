"""The page, what the service serves (/info), the probes and the metrics."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response

from engine.generation import LIMITS

from ..dependencies import ServiceDep
from ..errors import Problem
from ..openapi import SERVICE_ERRORS, errors
from ..schemas import ALLOWED, Info, ModelInfo

STATIC = Path(__file__).resolve().parents[1] / "static"
router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def noise_schedule(pipe) -> dict:
    """alpha-bar_t for every training timestep, 6 significant digits: what
    the page plots and noises a digit with (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps)."""
    config = next(iter(pipe.sampler_configs.values()))
    _, abar = config.schedule.tables
    return {"num_train_timesteps": len(abar), "alphas_cumprod": [float(f"{a:.6g}") for a in abar.tolist()]}


@router.get("/info", tags=["service"], response_model=Info, summary="Models, sampling defaults and limits",
            responses=SERVICE_ERRORS)
async def info(svc: ServiceDep) -> Info:
    s = svc.settings

    def describe(pipe) -> ModelInfo:
        return ModelInfo(
            model={"num_labels": pipe.num_labels, "sample_shape": list(pipe.sample_shape),
                   "parameters": pipe.unet.num_parameters(), "scheduler_class": pipe.scheduler_class},
            defaults=vars(pipe.defaults),
            limits={**ALLOWED, **{f"{k}_range": list(v) for k, v in LIMITS.items()}, "max_steps": pipe.max_steps,
                    "max_request_rows": s.max_request_rows, "max_gif_pixels": s.max_gif_pixels,
                    "max_batch": s.max_batch, "max_queue": s.max_queue, "max_backlog_rows": s.max_backlog_rows,
                    "deadline_s": s.deadline_s},
            schedulers=list(pipe.samplers), noise_schedule=noise_schedule(pipe))
    models = {name: describe(pipe) for name, pipe in svc.pipes.items()}
    return Info(**models[svc.default_model].model_dump(), default_model=svc.default_model, models=models,
                classifier=svc.classifier is not None)


@router.get("/healthz", tags=["service"], summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["service"], summary="Readiness: weights loaded and the engine worker running",
            responses=errors(503))
async def readyz(request: Request):
    svc = getattr(request.app.state, "service", None)
    if svc is None or not svc.ready:
        raise Problem(503, "not_ready", "not ready: the model is not loaded or the engine is stopping", retry_after=5)
    return {"status": "ready", "models": sorted(svc.pipes)}


@router.get("/metrics", tags=["service"], response_class=PlainTextResponse,
            summary="Prometheus metrics (OpenMetrics, with exemplars, when Accept asks for it)")
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)


# HEAD on the GET endpoints that do no generation (uvicorn sends the headers
# without the body); left out of the OpenAPI document, where it would only
# repeat the GET. The generating GETs (stream, GIF) do not take HEAD: it would
# cost a whole generation to answer.
for _route in list(router.routes):
    if getattr(_route, "path", None) in ("/", "/info", "/healthz", "/readyz", "/metrics"):
        router.add_api_route(_route.path, _route.endpoint, methods=["HEAD"], include_in_schema=False,
                             response_class=_route.response_class, name=f"{_route.name}_head")
