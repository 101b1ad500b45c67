"""The app factory, its lifespan (load the weights once, run the engine
worker) and `serve`.

    digitgen serve                                  # the service as shipped (app/connection.py's limits)
    uvicorn app.main:create_app --factory           # the same app on uvicorn's own protocol, without them
"""
from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.routing import Mount, Route

from engine import generation
from engine.io import WeightsError
from engine.models.classifier import load_classifier
from engine.nn import runtime
from engine.paths import model_folders
from engine.pipeline import DigitPipeline

from .config import ConfigError, Settings
from .connection import limited_protocol
from .edge import AccessLineHandler, Edge
from .errors import Problem, problem_from, problem_response
from .metrics import ServiceMetrics
from .openapi import add_docs, build_openapi
from .routers import explore, generate, openai, service as service_routes
from .schemas import ALIASES, ALLOWED, KNOWN
from .service import Service
from .worker import Pace

log = logging.getLogger("uvicorn.error.digitgen")  # shows up wherever uvicorn logs
DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: a closed terminal drains too

DESCRIPTION = """Handwritten MNIST digits from a class-conditional diffusion model (pure NumPy engine).

* `POST /generate?label=5` - a PNG (`n` > 1: a grid; `format=json`: base64 images with their seeds)
* `GET /generate/stream?label=5` - watch the denoising live (Server-Sent Events)
* `GET /generate.gif?label=5` - the denoising as an animated GIF

Every request is one or more *trajectories* in a continuous batch: one engine thread advances all of
them together, one batched UNet forward per step. Seeds make results byte-identical, alone or under load.
Every error is one problem+json body (RFC 9457): `status`, `code`, `detail`, and `errors` per parameter.
"""


class DigitgenApp(FastAPI):
    """FastAPI whose failed start-up reports one clear line, not a
    traceback: Starlette sends the traceback as the lifespan failure
    message, which uvicorn logs; we swap in the message we know."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            async def send_clean(message):
                error = getattr(self.state, "startup_error", None)
                if message["type"] == "lifespan.startup.failed" and error:
                    message = {**message, "message": error}
                await send(message)
            return await super().__call__(scope, receive, send_clean)
        return await super().__call__(scope, receive, send)


def load_models(settings: Settings, load: Callable[[Path], DigitPipeline]) -> tuple[dict[str, DigitPipeline], str]:
    """Every model under the weights folder, and the default one; a
    WeightsError or ConfigError says which folder and why."""
    folders = model_folders(settings.weights)
    pipes = {}
    for name, folder in folders.items():
        try:
            pipes[name] = load(folder)
        except WeightsError as e:
            raise WeightsError(f"{e}\n  ({name} model folder: {folder}; set DIGITGEN_WEIGHTS or --weights to a "
                               f"folder written by DigitPipeline.save_pretrained)") from None
    default = settings.default_model or generation.default_model(pipes)
    if default not in pipes:
        raise ConfigError(f"DIGITGEN_DEFAULT_MODEL={default} but there is no {settings.weights / default} folder")
    return pipes, default


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings | None = app.state.settings
    if settings is None:  # the environment held a bad setting; create_app kept the message
        raise ConfigError(app.state.startup_error)
    threads = runtime.configure(settings.threads or None)
    try:
        pipes, default = await run_in_threadpool(load_models, settings, app.state.load_pipeline)
    except (WeightsError, ConfigError) as e:
        app.state.startup_error = f"digitgen cannot start: {e}"
        raise
    pace = app.state.pace
    if pace is None:  # measured once: how fast a batched step runs on this machine (admission's deadline check)
        pace = Pace()
        await run_in_threadpool(pace.calibrate, _forward(next(iter(pipes.values()))))
    try:
        classifier = await run_in_threadpool(_load_classifier, settings)
    except WeightsError as e:
        app.state.startup_error = f"digitgen cannot start: {e}"
        raise
    svc = Service(pipes, default, settings, app.state.metrics, app.state.clock, pace, classifier)
    svc.run()
    app.state.service = svc
    # What start-up made (the models, FastAPI's routes, pydantic's validators) lives as long as the
    # process: out of the collector's way, a collection under a burst no longer walks all of it
    gc.collect()
    gc.freeze()
    _drain_on_signals(svc)
    for name, pipe in pipes.items():
        d = pipe.defaults
        log.info("digitgen model %s%s: %d parameters, %s, %d steps, guidance %g", name,
                 " (default)" if name == default else "", pipe.unet.num_parameters(), d.scheduler,
                 d.num_inference_steps, d.guidance_scale)
    log.info("digitgen ready: %d engine threads, %.0f UNet rows a second at full batches", threads,
             svc.worker._capacity() if pace.known else 0)
    try:
        yield
    finally:
        svc.stop()  # open requests get "shutting down"; uvicorn drained what it could first
        app.state.service = None
        _restore_signals()


def _forward(pipe: DigitPipeline) -> Callable[[int], None]:
    """One batched UNet forward of `rows` rows (what a step costs), for measuring the pace."""
    def forward(rows: int) -> None:
        pipe.run_unet(np.zeros((rows, *pipe.sample_shape), np.float32), np.full(rows, 999), np.zeros(rows, np.int64))
    return forward


def _load_classifier(settings: Settings):
    """The classifier beside the weights (weights/classifier), for p(digit | x0); None when there is none."""
    folder = settings.weights / "classifier"
    return load_classifier(folder)[0] if folder.is_dir() else None


def _access_log_to_stderr() -> None:
    """The JSON access lines go to stderr, one per request, unless the
    embedding application has configured the logger itself."""
    logger = logging.getLogger("digitgen.access")
    if not logger.handlers:
        handler = AccessLineHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _drain_on_signals(svc: Service) -> None:
    """On SIGTERM, SIGINT or SIGHUP, before uvicorn's own handler (which
    stops taking connections and then waits up to the graceful period for
    open ones): the service turns not-ready and ends what cannot finish in
    time with a clean 503 or `event: error`, instead of uvicorn cutting it
    when the period runs out. Only where uvicorn has put a handler of its
    own in place (SIGHUP is given uvicorn's SIGTERM handler: without it a
    closed terminal killed the server mid-request)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    uvicorn_handler = signal.getsignal(signal.SIGTERM)
    for sig in DRAIN_SIGNALS:
        previous = signal.getsignal(sig)
        if sig == signal.SIGHUP and callable(uvicorn_handler) and previous in (signal.SIG_DFL, None):
            _SAVED[sig] = previous
            previous = uvicorn_handler
        if not callable(previous) or previous in (signal.default_int_handler,):
            continue

        def handler(signum, frame, previous=previous):
            try:
                loop.call_soon_threadsafe(svc.begin_shutdown)  # the signal may land inside the worker's lock
            except RuntimeError:  # the loop has closed: shutdown is under way already
                pass
            previous(signum, frame)
        signal.signal(sig, handler)


_SAVED: dict[int, object] = {}  # handlers _drain_on_signals replaced that uvicorn will not put back


def _restore_signals() -> None:
    """SIGHUP back as it was (uvicorn restores the two it handles): once the
    drain is over, the signal ends the process as it would have."""
    while _SAVED:
        sig, handler = _SAVED.popitem()
        if threading.current_thread() is threading.main_thread():
            signal.signal(sig, handler)


ROUTERS = (generate.router, explore.router, service_routes.router, openai.router)


def _dispatch(route):
    """The route as the app serves it. An endpoint that takes only the
    Request and declares the Response it returns (response_class=Response)
    leaves FastAPI nothing to inject or serialise: Starlette's Route runs it directly, without FastAPI's
    per-request dependency solving and exit stacks (two thirds of a refused
    request's cost under a burst, bench/burst_floor.py). It is documented
    from the same declaration (build_openapi reads ROUTERS)."""
    endpoint = getattr(route, "endpoint", None)
    if not isinstance(route, APIRoute) or not inspect.iscoroutinefunction(endpoint) \
            or list(inspect.signature(endpoint).parameters) != ["request"] or route.dependencies \
            or route.response_class is not Response:
        return route
    plain = Route(route.path, endpoint, methods=sorted(route.methods), name=route.name)
    plain.methods &= route.methods  # Starlette adds HEAD to a GET: for a generating GET that is a whole generation
    return plain


def _route_methods(app: FastAPI) -> dict[str, frozenset[str]]:
    """path -> the methods it takes (a mounted folder as its prefix + "/*"), for the edge."""
    out: dict[str, set[str]] = {}
    for route in [*app.routes, *(route for r in ROUTERS for route in r.routes)]:  # a router's paths hold its prefix
        if isinstance(route, Mount):
            out.setdefault(route.path.rstrip("/") + "/*", set()).update({"GET", "HEAD"})
        elif getattr(route, "methods", None) and getattr(route, "path", None) is not None:
            out.setdefault(route.path, set()).update(route.methods)
    return {path: frozenset(methods) for path, methods in out.items()}


def create_app(settings: Settings | None = None, *,
               load_pipeline: Callable[[Path], DigitPipeline] = DigitPipeline.from_pretrained,
               clock: Callable[[], float] = time.monotonic, pace: Pace | None = None) -> FastAPI:
    """`load_pipeline`, `clock` and `pace` are there for tests that control
    the engine and time itself (tests/controlled_server.py); the service
    uses the defaults (and measures its pace at start-up)."""
    app = DigitgenApp(title="digitgen", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                      docs_url=None, redoc_url=None)  # served below from local files, not a CDN
    app.state.load_pipeline, app.state.clock, app.state.pace = load_pipeline, clock, pace
    app.state.service = None
    app.state.startup_error = None
    keys: tuple[str, ...] = ()
    if settings is None:
        try:
            settings = Settings.from_env()
        except ConfigError as e:  # reported by the lifespan, as one line
            app.state.startup_error = f"digitgen cannot start: {e}"
    if settings is not None:
        try:
            keys = settings.api_key_list()
        except ConfigError as e:
            app.state.startup_error, settings = f"digitgen cannot start: {e}", None
    app.state.settings = settings
    limits = settings or Settings()
    app.state.metrics = ServiceMetrics(limits.max_batch)
    app.state.metrics.ready_fn = lambda: float(bool(app.state.service and app.state.service.ready))

    async def answer(request: Request, exc: Exception) -> Response:
        p = problem_from(exc, ALLOWED, KNOWN, ALIASES)
        if p.status == 204:  # Last-Event-ID of a finished stream: nothing to send
            return Response(status_code=204)
        return problem_response(p, request.scope["path"])

    for kind in (Problem, Exception):
        app.add_exception_handler(kind, answer)
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    app.add_exception_handler(RequestValidationError, answer)
    app.add_exception_handler(HTTPException, answer)

    for router in ROUTERS:  # their routes on the app's own router: FastAPI's include_router keeps each module's
        app.router.routes.extend(map(_dispatch, router.routes))  # router as a layer every request's match walks
    app.mount("/static", StaticFiles(directory=service_routes.STATIC), name="static")
    add_docs(app)
    app.openapi = lambda: build_openapi(app, [route for r in ROUTERS for route in r.routes])
    app.add_api_route("/openapi.json", lambda: app.openapi(), methods=["HEAD"], include_in_schema=False)
    app.add_middleware(Edge, metrics=app.state.metrics, routes=_route_methods(app),
                       allowed_hosts=limits.allowed_host_list, cors_origins=limits.cors_origin_list,
                       api_keys=keys, rate=limits.rate_limit, burst=limits.rate_burst,
                       trusted_proxies=limits.trusted_proxy_list, quota=limits.key_quota,
                       redis=limits.redis_address, redis_timeout_s=limits.redis_timeout_s,
                       max_body_bytes=limits.max_body_bytes, body_timeout_s=limits.body_timeout_s)
    _access_log_to_stderr()
    return app


def server_config(app: FastAPI, settings: Settings, log_level: str = "info") -> uvicorn.Config:
    """uvicorn as `serve` runs it (tests/controlled_server.py runs the same)."""
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level,
        timeout_graceful_shutdown=settings.graceful_s or None,
        access_log=False,          # the app writes JSON access lines
        limit_concurrency=None,    # app/connection.py counts requests and idle connections apart
        timeout_keep_alive=5,      # idle keep-alive connections close
        proxy_headers=False,       # the Edge reads X-Forwarded-For / Forwarded, from DIGITGEN_TRUSTED_PROXIES only
        forwarded_allow_ips="",    # (uvicorn's default trusted 127.0.0.1: any local client named its address)
        http=limited_protocol(settings.header_timeout_s, max_idle=settings.max_idle_connections,
                              max_requests=settings.max_connections, send_timeout_s=settings.send_timeout_s),
        loop="auto")               # uvloop (a dependency where it exists, not on Windows), else asyncio


def bind(config: uvicorn.Config) -> socket.socket:
    """The listening address, taken before anything is loaded: a port in use is one line at once."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def serve(host: str | None = None, port: int | None = None, weights: str | Path | None = None, *,
          log_level: str = "info", **limits) -> int:
    """Run the service until interrupted; returns the process exit status.
    Arguments override the DIGITGEN_* environment (`limits`: max_batch,
    max_queue, deadline_s, graceful_s). 0: stopped normally; 2: a bad
    setting; 3: start-up failed (the port is taken, the weights are missing:
    one line says which), like uvicorn's own CLI."""
    try:
        settings = Settings.from_env(host=host, port=port, weights=weights, **limits)
        config = server_config(create_app(settings), settings, log_level=log_level)
        sock = bind(config)
    except ConfigError as e:
        print(f"digitgen cannot start: {e}", file=sys.stderr)
        return 2 if "cannot listen" not in str(e) else 3
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises SIGINT once it has shut down; uvicorn.run() swallows it too
        pass
    finally:
        sock.close()
    return 0 if server.started else 3
