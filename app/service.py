"""Generation as the routes see it: build seeded trajectories, hand them to
the batching worker as a Job, wait for the results while watching for the
client going away, and turn worker failures into HTTP errors."""
from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from engine.pipeline import DigitPipeline, Trajectory

from .config import Settings
from .metrics import ServiceMetrics
from .schemas import SEED_MAX
from .worker import BatchWorker, DeadlineExceeded, EngineFailure, FinalEvent, Job, Overloaded, ShuttingDown


@dataclass(frozen=True)
class Spec:
    """Resolved generation parameters (defaults from the weights filled in)."""
    label: int
    seed: int
    n: int
    steps: int
    scheduler: str
    guidance_scale: float

    @property
    def seeds(self) -> list[int]:
        # image i of a request uses seed + i, wrapped so every image's seed is
        # itself a valid seed that reproduces that image with n=1
        return [(self.seed + i) % (SEED_MAX + 1) for i in range(self.n)]


class Service:
    def __init__(self, pipe: DigitPipeline, settings: Settings, metrics: ServiceMetrics,
                 clock: Callable[[], float] = time.monotonic):
        self.pipe, self.settings, self.metrics, self.clock = pipe, settings, metrics, clock
        self.worker = BatchWorker(pipe, metrics, settings.max_batch, settings.max_queue, clock)

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    @property
    def ready(self) -> bool:
        return self.worker.alive

    async def trajectories(self, label: int, seed: int | None, n: int = 1, steps: int | None = None,
                           scheduler: str | None = None, guidance_scale: float | None = None,
                           where: dict | None = None) -> tuple[Spec, list[Trajectory]]:
        """Seeded trajectories (off the event loop: scheduler tables and the
        initial noise). The engine's own checks (e.g. dpm with 1000 steps)
        become a 422 on the field they concern."""
        seed = secrets.randbelow(SEED_MAX + 1) if seed is None else seed
        d = self.pipe.defaults
        spec = Spec(label, seed, n, d.num_inference_steps if steps is None else steps,
                    scheduler or d.scheduler, d.guidance_scale if guidance_scale is None else guidance_scale)

        def build():
            return [self.pipe.trajectory(label, s, spec.steps, spec.scheduler, spec.guidance_scale)
                    for s in spec.seeds]
        try:
            return spec, await run_in_threadpool(build)
        except ValueError as e:
            field = next((f for key, f in (("num_inference_steps", "steps"), ("scheduler", "scheduler"),
                                           ("label", "label")) if key in str(e)), "steps")
            source = (where or {}).get(field, "query")
            raise RequestValidationError([{"type": "value_error", "loc": (source, field), "msg": str(e),
                                           "input": getattr(spec, field)}]) from None

    def submit(self, trajectories: list[Trajectory], every: int = 0) -> Job:
        job = Job(trajectories, self.settings.deadline_s, every, self.clock)
        try:
            self.worker.submit(job)
        except (Overloaded, ShuttingDown) as e:
            raise http_error(e) from None
        return job

    async def collect(self, request: Request, job: Job) -> list | None:
        """Every event of the job up to its last FinalEvent, or None when the
        client disconnected first (the job is then cancelled: its
        trajectories leave the batch before the next step)."""
        async def events():
            out, finals = [], 0
            while finals < len(job.trajectories):
                ev = await job.next_event()
                if hasattr(ev, "error"):
                    raise ev.error
                finals += isinstance(ev, FinalEvent)
                out.append(ev)
            return out

        work = asyncio.ensure_future(events())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                try:
                    return work.result()
                except (DeadlineExceeded, EngineFailure, ShuttingDown) as e:
                    raise http_error(e) from None
            return None
        finally:
            gone.cancel()
            work.cancel()
            job.cancel("disconnect")  # no-op once it has finished


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away. The request body has already
    been read by then, so receive() only ever reports the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def http_error(e: Exception) -> HTTPException:
    if isinstance(e, Overloaded):
        return HTTPException(503, str(e), headers={"Retry-After": str(e.retry_after)})
    if isinstance(e, ShuttingDown):
        return HTTPException(503, str(e), headers={"Retry-After": "5"})
    if isinstance(e, DeadlineExceeded):
        return HTTPException(504, str(e))
    return HTTPException(500, str(e))


def status_of(e: Exception) -> int:
    return http_error(e).status_code
