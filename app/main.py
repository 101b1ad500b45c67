"""The app factory, its lifespan (load the weights once, run the engine
worker) and `serve`.

    uvicorn app.main:create_app --factory          # settings from DIGITGEN_* variables
    python -c "from app.main import serve; serve(port=8000)"
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler as fastapi_http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from engine.io import WeightsError
from engine.nn import runtime
from engine.pipeline import DigitPipeline

from .config import ConfigError, Settings
from .connection import limited_protocol
from .door import Door
from .gate import Gate
from .http import HttpLimits
from .openai_images import router as openai_router
from .openapi import add_docs, build_openapi
from .metrics import MetricsMiddleware, ServiceMetrics
from .routes import STATIC, router
from .schemas import ALLOWED
from .service import Service, http_error as refusal_response

log = logging.getLogger("uvicorn.error.digitgen")  # shows up wherever uvicorn logs

DESCRIPTION = """Handwritten MNIST digits from a class-conditional diffusion model (pure NumPy engine).

* `POST /generate?label=5` - a PNG (`n` > 1: a grid; `format=json`: base64 images with their seeds)
* `GET /generate/stream?label=5` - watch the denoising live (Server-Sent Events)
* `GET /generate.gif?label=5` - the denoising as an animated GIF

Every request is one or more *trajectories* in a continuous batch: one engine thread advances all of
them together, one batched UNet forward per step. Seeds make results byte-identical, alone or under load.
"""


class DigitgenApp(FastAPI):
    """FastAPI with two changes:

    * HTTP requests pass our pure-ASGI middleware (`front`, set by
      create_app) before Starlette's own stack, not inside it: a request
      refused at the door (a burst on a full server) then runs only the
      layers it must (bench/burst_floor.py);
    * a failed start-up reports one clear line, not a traceback: Starlette
      sends the traceback as the lifespan failure message, which uvicorn
      logs; we swap in the message we know."""

    front = None  # ASGI app wrapping `routed`
    door = None   # app/door.py, for the HTTP protocol

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            async def send_clean(message):
                error = getattr(self.state, "startup_error", None)
                if message["type"] == "lifespan.startup.failed" and error:
                    message = {**message, "message": error}
                await send(message)
            return await super().__call__(scope, receive, send_clean)
        if self.front is not None:
            return await self.front(scope, receive, send)
        return await super().__call__(scope, receive, send)

    async def routed(self, scope, receive, send):
        """Starlette's stack: its error middleware, exception handlers, routes."""
        await super().__call__(scope, receive, send)


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings | None = app.state.settings
    if settings is None:  # the environment held a bad setting; create_app kept the message
        raise ConfigError(app.state.startup_error)
    threads = runtime.configure(settings.threads or None)
    folders = {"base": settings.weights}
    if (settings.weights / "fast").is_dir():  # the distilled few-step model ships beside the base one
        folders["fast"] = settings.weights / "fast"
    pipes = {}
    for name, folder in folders.items():
        try:
            pipes[name] = await run_in_threadpool(app.state.load_pipeline, folder)
        except WeightsError as e:
            app.state.startup_error = (f"digitgen cannot start: {e}\n"
                                       f"  ({name} model folder: {folder}; set DIGITGEN_WEIGHTS or --weights to a "
                                       f"folder written by DigitPipeline.save_pretrained)")
            raise
    default = settings.default_model or ("fast" if "fast" in pipes else "base")
    if default not in pipes:
        app.state.startup_error = (f"digitgen cannot start: DIGITGEN_DEFAULT_MODEL={default} but there is no "
                                   f"{settings.weights / default} folder")
        raise ConfigError(app.state.startup_error)
    svc = Service(pipes, default, settings, app.state.metrics, app.state.clock)
    svc.run()
    app.state.service = svc
    _drain_on_signals(svc)
    for name, pipe in pipes.items():
        d = pipe.defaults
        log.info("digitgen model %s%s: %s (%d parameters), %s, %d steps, guidance %g", name,
                 " (default)" if name == default else "", folders[name], pipe.unet.num_parameters(), d.scheduler,
                 d.num_inference_steps, d.guidance_scale)
    log.info("digitgen ready: %d engine threads", threads)
    try:
        yield
    finally:
        svc.stop()  # open requests get "shutting down"; uvicorn drained what it could first
        app.state.service = None


ECHO_CHARS = 80  # of a rejected input, echoed back: enough to see it, never the whole of a large one


def _echo(value):
    """A rejected input as it may be echoed in JSON: non-finite numbers
    (which JSON cannot carry) as text, long values cut short."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (str, bytes)):
        if len(value) <= ECHO_CHARS:
            return value if isinstance(value, str) else repr(value)
        return f"{value[:ECHO_CHARS]!r}... ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=repr, allow_nan=True)
        return value if len(text) <= ECHO_CHARS and "NaN" not in text and "Infinity" not in text \
            else f"{text[:ECHO_CHARS]}... ({len(text)} characters)"
    if not isinstance(value, (int, float, bool, type(None))):
        return _echo(repr(value))
    return value


def _access_log_to_stderr() -> None:
    """The JSON access lines go to stderr, one per request, unless the
    embedding application has configured the logger itself."""
    logger = logging.getLogger("digitgen.access")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _drain_on_signals(svc: Service) -> None:
    """On SIGTERM/SIGINT, before uvicorn's own handler (which stops taking
    connections and then waits up to the graceful period for open ones): the
    service turns not-ready and ends what cannot finish in time with a clean
    503 or `event: error`, instead of uvicorn cutting it when the period
    runs out. Only where uvicorn has put a handler of its own in place."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous) or previous in (signal.default_int_handler,):
            continue

        def handler(signum, frame, previous=previous):
            loop.call_soon_threadsafe(svc.begin_shutdown)  # the signal may land inside the worker's lock
            previous(signum, frame)
        signal.signal(sig, handler)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 `detail` list, plus a `message` a person can read: the
    field, what was wrong and the allowed range."""
    errors = jsonable_encoder([{**e, "input": _echo(e["input"])} if "input" in e else e for e in exc.errors()])
    lines = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        field = loc[1] if len(loc) > 1 else (loc[0] if loc else "request")
        if e.get("type") == "json_invalid":
            lines.append(f"body: malformed JSON ({e.get('ctx', {}).get('error', e.get('msg'))})")
            continue
        allowed = ALLOWED.get(field)
        # pydantic's own range/type errors get the allowed range; ours (missing, conflicts, engine checks) say it
        ours = e.get("type") in ("missing", "value_error")
        hint = f" (allowed: {allowed})" if allowed and not ours else ""
        got = f", got {e['input']!r}" if e.get("input") is not None and not ours else ""
        lines.append(f"{field}: {e.get('msg')}{hint}{got}")
    return JSONResponse({"detail": errors, "message": "; ".join(lines)}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's own HTTP errors, with one change: a body it cannot even
    decode (not UTF-8) is a 422 on the body like any other bad body, not a
    bare 400."""
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        return await validation_error(request, RequestValidationError([{
            "type": "json_invalid", "loc": ("body",), "input": None,
            "msg": "the body could not be decoded: send JSON in UTF-8"}]))
    return await fastapi_http_exception_handler(request, exc)


def _busy(app: FastAPI, images: int, rows: int) -> StarletteHTTPException | None:
    """The 503 (as the route would answer it) when the engine cannot admit a request of this cost."""
    svc = app.state.service
    if svc is None or rows > svc.settings.max_request_rows:  # too costly for any state of the queue: the route's 422
        return None
    refusal = svc.worker.refusal(images, rows)
    return None if refusal is None else refusal_response(refusal)


def create_app(settings: Settings | None = None, *,
               load_pipeline: Callable[[Path], DigitPipeline] = DigitPipeline.from_pretrained,
               clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """`load_pipeline` and `clock` are there for tests that control the engine
    and time itself (tests/controlled_server.py); the service uses the defaults."""
    app = DigitgenApp(title="digitgen", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                      docs_url=None, redoc_url=None)  # served below from local files, not a CDN
    app.state.load_pipeline, app.state.clock = load_pipeline, clock
    app.state.metrics = ServiceMetrics(settings.max_batch if settings else 64)
    app.state.service = None
    app.state.startup_error = None
    if settings is None:
        try:
            settings = Settings.from_env()
        except ConfigError as e:  # reported by the lifespan, as one line
            app.state.startup_error = f"digitgen cannot start: {e}"
    app.state.settings = settings
    app.state.metrics.ready_fn = lambda: float(bool(app.state.service and app.state.service.ready))
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    limits = settings or Settings()
    try:
        keys = limits.api_key_list()
    except ConfigError as e:  # reported by the lifespan, as one line
        app.state.startup_error, app.state.settings, keys = f"digitgen cannot start: {e}", None, ()
    # outermost first: metrics see everything, CORS answers preflights, the gate and the limits refuse
    # before a body is read
    http_limits = HttpLimits(app.routed, max_body_bytes=limits.max_body_bytes, body_timeout_s=limits.body_timeout_s,
                             cors_origins=limits.cors_origin_list, busy=lambda images, rows: _busy(app, images, rows))
    front = gate = Gate(http_limits, api_keys=keys, rate=limits.rate_limit, burst=limits.rate_burst)
    # the same 503 as http_limits', answered by `serve`'s HTTP protocol before any of this runs
    app.door = Door(gate, http_limits, app.state.metrics)
    _access_log_to_stderr()
    if limits.cors_origin_list:  # off unless configured
        front = CORSMiddleware(front, allow_origins=list(limits.cors_origin_list), allow_methods=["GET", "POST"],
                               allow_headers=["content-type", "authorization", "last-event-id"],
                               expose_headers=["x-seed", "x-model", "x-steps", "x-scheduler", "retry-after",
                                               "x-request-id"])
    app.front = MetricsMiddleware(front, metrics=app.state.metrics)
    app.include_router(router)
    app.include_router(openai_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.openapi = lambda: build_openapi(app)
    add_docs(app)
    return app


def serve(host: str | None = None, port: int | None = None, weights: str | Path | None = None, *,
          log_level: str = "info", **limits) -> int:
    """Run the service until interrupted; returns the process exit status.
    Arguments override the DIGITGEN_* environment (`limits`: max_batch,
    max_queue, deadline_s, graceful_s). 0: stopped normally; 2: a bad
    setting; 3: start-up failed (e.g. missing weights; uvicorn has logged the
    one-line reason), like uvicorn's own CLI."""
    try:
        settings = Settings.from_env(host=host, port=port, weights=weights, **limits)
    except ConfigError as e:
        print(f"digitgen cannot start: {e}", file=sys.stderr)
        return 2
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            timeout_graceful_shutdown=settings.graceful_s or None,
                            access_log=False,                      # the app writes JSON access lines
                            # past this many connections (streams included) uvicorn answers 503
                            limit_concurrency=settings.max_connections,
                            timeout_keep_alive=5,                  # idle keep-alive connections close
                            # httptools, with a deadline on each request's head, a 16 KiB cap on its
                            # size, and the door's 503 answered right there (app/connection.py)
                            http=limited_protocol(settings.header_timeout_s, door=app.door),
                            loop="auto")  # uvloop (a dependency where it exists, not on Windows), else asyncio
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises SIGINT once it has shut down; uvicorn.run() swallows it too
        pass
    return 0 if server.started else 3
