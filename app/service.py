"""Generation as the routes see it: admit a resolved request, build its
seeded trajectories, hand them to the batching worker, and wait for the
results while watching for the client going away."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from engine.generation import Generation
from engine.pipeline import DigitPipeline

from .config import Settings
from .errors import Problem
from .metrics import ServiceMetrics
from .worker import BatchWorker, Cost, FailedEvent, ImageStep, Job, Pace


class Service:
    """The loaded models ("base", and "fast" when its weights are there) and
    the one engine worker that runs them."""

    def __init__(self, pipes: dict[str, DigitPipeline], default_model: str, settings: Settings,
                 metrics: ServiceMetrics, clock: Callable[[], float] = time.monotonic, pace: Pace | None = None,
                 classifier=None):
        self.pipes, self.default_model = pipes, default_model
        self.settings, self.metrics, self.clock = settings, metrics, clock
        self.classifier = classifier  # for p(digit | x0); None when the weights folder has none
        self.worker = BatchWorker(pipes, metrics, settings.max_batch, settings.max_queue, clock,
                                  max_backlog_rows=settings.max_backlog_rows, pace=pace, classifier=classifier)

    def run(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def begin_shutdown(self) -> None:
        """Not ready from now on; running work may finish within the grace period."""
        self.worker.begin_shutdown(self.settings.graceful_s)

    @property
    def ready(self) -> bool:
        return self.worker.alive

    async def start(self, gen: Generation | list[Generation]) -> Job:
        """Admit the request by its cost (a refusal here costs nothing: its
        Problem is raised), then build its seeded trajectories (scheduler
        tables, initial noise; off the event loop for more than one image)
        and hand them to the worker."""
        admitted = await self.admit(gen)
        if isinstance(admitted, Problem):
            raise admitted
        return admitted

    async def admit(self, gen: Generation | list[Generation]) -> Job | Problem:
        """As start, but a refusal is returned: a route answers it without
        raising through the stack (under a burst of refusals that is ~0.1 ms
        of each one's ~0.3). Several generations (a grid's cells, a morph's
        frames) are one job: admitted together, run in the same batches."""
        gens = gen if isinstance(gen, list) else [gen]
        cost = Cost(sum(g.n for g in gens), max(g.sampling.model_steps for g in gens),
                    max(g.sampling.unet_rows for g in gens), sum(g.rows for g in gens))
        admitted = self.worker.admit(cost, self.settings.deadline_s, gens[0].every, any(g.probs for g in gens))
        if isinstance(admitted, Problem):
            return admitted
        job = admitted

        def build():
            return [(g.model, t) for g in gens for t in g.trajectories(self.pipes[g.model])]
        try:
            # one image (0.1-1 ms) is cheaper to build here than to hand to the thread pool and back
            built = build() if cost.images == 1 else await run_in_threadpool(build)
        except BaseException:
            job.cancel("error")
            raise
        job.x_T = built[0][1].sample[0].copy()  # the first image's start, before any step
        self.worker.attach(job, [t for _, t in built], [m for m, _ in built])
        return job

    async def collect(self, request: Request, job: Job) -> list[ImageStep] | None:
        """Every event of the job up to its images' last steps, or None when
        the client disconnected first (the job is then cancelled: its
        trajectories leave the batch before the next step). A failure
        raises its Problem."""
        async def events():
            out, finals = [], 0
            while finals < len(job.trajectories):
                ev = await job.next_event()
                if isinstance(ev, FailedEvent):
                    raise ev.error
                finals += ev.result.done
                out.append(ev)
            return out

        work = asyncio.ensure_future(events())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            return work.result() if work.done() else None
        finally:
            gone.cancel()
            work.cancel()
            job.cancel("disconnect")  # no-op once it has finished


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away. The request body has already
    been read by then, so receive() only ever reports the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
