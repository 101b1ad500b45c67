"""The engine worker: ONE thread runs a continuous-batching loop.

Every in-flight trajectory (own label, timestep, scheduler state and seeded
noise) joins the next `pipe.step` call of its model, which is one batched
UNet forward; with two models loaded (base and fast) a step is one forward
per model.
New requests join between steps, finished, cancelled and expired ones leave,
and at most `max_batch` trajectories ride in one forward (the rest wait,
first come first served). The event loop never runs the engine: it hands a
`Job` in with `submit` and reads results from the job's asyncio queue, which
the worker fills with `loop.call_soon_threadsafe`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


from engine.pipeline import DigitPipeline, StepResult, Trajectory

from .metrics import ServiceMetrics

log = logging.getLogger("uvicorn.error.digitgen")


class Overloaded(Exception):
    """The admission queue is full: answer 503 at once."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy (queue full); retry in {retry_after} s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    pass


class ShuttingDown(Exception):
    def __init__(self):
        super().__init__("the server is shutting down")


class EngineFailure(Exception):
    pass


@dataclass(frozen=True)
class ImageStep:
    """Image `index` of a job took a step; `result.done` on its last one
    (then `result.sample` is the final image)."""
    index: int
    result: StepResult


@dataclass(frozen=True)
class FailedEvent:
    error: Exception


class Job:
    """One request: n trajectories and the queue its events arrive on.
    Create it on the event loop thread (the asyncio queue belongs there).

    A job is admitted (BatchWorker.submit) with what it will cost, `images`
    and `rows`, before its trajectories exist, so a refusal costs nothing;
    `attach` then hands them over and the job joins the batch."""

    def __init__(self, images: int, rows: int, deadline_s: float, every: int = 0,
                 clock: Callable[[], float] = time.monotonic, model: str = "base"):
        self.trajectories: list[Trajectory] = []
        self.images, self.rows = images, rows
        self.x_T = None                     # the first image's starting noise, set before attach
        self.model = model                  # which loaded model's pipeline steps them
        self.every = every                  # 0: last steps only; k: every k-th step and the last
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.clock = clock                  # the service's clock: deadlines and timing headers
        self.submitted = clock()
        self.deadline = self.submitted + deadline_s
        self.deadline_s = deadline_s
        self.started: float | None = None  # when its first trajectory joined the batch
        self.cancel_reason: str | None = None
        # worker-thread bookkeeping
        self.remaining = images
        self.ended = False

    @property
    def finished(self) -> bool:
        return self.remaining == 0

    def cancel(self, reason: str = "disconnect") -> None:
        """Thread-safe: the worker drops the job before its next step."""
        if self.cancel_reason is None and not self.finished:
            self.cancel_reason = reason

    async def next_event(self):
        # Backstop in case the worker itself is gone: its own deadline
        # handling answers first in every normal case.
        timeout = max(0.0, self.deadline - self.clock()) + 30.0
        try:
            return await asyncio.wait_for(self.events.get(), timeout)
        except TimeoutError:
            raise EngineFailure("the engine worker stopped responding") from None

    def _post(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


class BatchWorker:
    """Runs every admitted job's trajectories, a batch per model per step.

    Admission is by work: a job is refused (503) when the images it would
    add beyond one batch exceed `max_queue`, or when the UNet rows still to
    run, its own included, exceed `max_backlog_rows`. Once admitted, a job
    is in the running: every step the batch's `max_batch` places are dealt
    out round-robin over the jobs in arrival order, one trajectory each per
    round, so a light request rides every step however many images a heavy
    one asked for; its latency is bounded by its own steps, not by the
    others' work. (A trajectory that misses a step just waits: its result
    does not depend on when it runs.)"""

    def __init__(self, pipes: dict[str, DigitPipeline], metrics: ServiceMetrics, max_batch: int = 64,
                 max_queue: int = 256, clock: Callable[[], float] = time.monotonic,
                 max_backlog_rows: int = 1 << 62):
        self.pipes, self.metrics = pipes, metrics
        self.clock = clock  # deadlines are read from it, so a test can move time itself
        self.max_batch, self.max_queue, self.max_backlog_rows = max_batch, max_queue, max_backlog_rows
        self._cv = threading.Condition()
        self._jobs: list[Job] = []  # admitted and not ended, in arrival order
        self._queued = 0            # trajectories left out of the latest batch
        self._active_n = 0          # trajectories in the latest batch
        self._rows_per_s = 0.0      # measured UNet rows a second, for Retry-After
        self._stopping = False
        self._drain_deadline: float | None = None  # set by begin_shutdown: running work must end by then
        self._thread = threading.Thread(target=self._run, name="digitgen-engine", daemon=True)
        metrics.queue_depth_fn = lambda: self._queued
        metrics.in_flight_fn = lambda: self._active_n

    # -- event loop side -----------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Running and taking work: False from the moment shutdown begins."""
        return self._thread.is_alive() and not self._stopping and self._drain_deadline is None

    def begin_shutdown(self, grace_s: float) -> None:
        """Stop taking work; what has not started ends now, what runs may go
        on until shortly before the grace period ends (a second per 4 s of
        grace is kept for the last responses to be written), then it ends
        too. Every ended job gets ShuttingDown: a 503 or an `event: error`."""
        with self._cv:
            if self._drain_deadline is not None:
                return
            self._drain_deadline = self.clock() + max(0.0, grace_s - min(1.0, grace_s / 4))
            for job in [j for j in self._jobs if j.started is None]:
                self._end(job, FailedEvent(ShuttingDown()), "shutdown")
            self._cv.notify()

    def attach(self, job: Job, trajectories: list[Trajectory]) -> None:
        """The admitted job's trajectories: it joins the next step's batch."""
        with self._cv:
            job.trajectories = trajectories
            self._cv.notify()

    def submit(self, job: Job) -> None:
        """Admit the job or raise (ShuttingDown, Overloaded) before any work."""
        with self._cv:
            refusal = self._refusal(job.images, _rows_left(job))
            if refusal is not None:
                raise refusal
            self._jobs.append(job)
            self._queued += job.images

    def refusal(self, images: int, rows: int) -> Exception | None:
        """Why a request of at least this cost could not be admitted now,
        else None: the front door's 503 before a request is parsed, so a
        burst on a full server costs little (submit() still decides)."""
        with self._cv:
            return self._refusal(images, rows)

    def _refusal(self, images: int, rows: int) -> Exception | None:
        if self._stopping or self._drain_deadline is not None:
            self.metrics.rejected.inc(reason="shutting_down")
            return ShuttingDown()
        live = [j for j in self._jobs if not j.ended]
        backlog = sum(_rows_left(j) for j in live)
        if sum(j.remaining for j in live) + images - self.max_batch > self.max_queue \
                or backlog + rows > self.max_backlog_rows:
            self.metrics.rejected.inc(reason="queue_full")
            return Overloaded(self._retry_after(backlog))
        return None

    def _retry_after(self, backlog_rows: int) -> int:
        """Seconds until the work already admitted has drained, at the
        measured rows a second (1 s until there is a measurement)."""
        if self._rows_per_s <= 0:
            return 1
        return int(min(300, max(1, math.ceil(backlog_rows / self._rows_per_s))))

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- worker thread -------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self._jobs):
                    self._cv.wait()
                if self._stopping:
                    leftovers, self._jobs = self._jobs, []
                    self._queued = self._active_n = 0
                    break
                now = self.clock()
                if self._drain_deadline is not None and now >= self._drain_deadline:
                    for job in self._jobs:
                        self._end(job, FailedEvent(ShuttingDown()), "shutdown")
                self._jobs = [j for j in self._jobs if not self._expired(j, now)]
                batch = self._deal(now)
                self._active_n = len(batch)
                self._queued = sum(j.remaining for j in self._jobs) - len(batch)
                if not batch:  # admitted jobs whose trajectories are still being built: attach() wakes us
                    self._cv.wait(0.5)
                    continue
            t0 = time.perf_counter()
            try:
                for model in self.pipes:  # one batched forward per model with work in this step
                    mine = [t for job, _, t in batch if job.model == model]
                    if mine:
                        self.pipes[model].step(mine)
            except Exception as e:  # an engine bug must not take the service down
                log.exception("denoising step failed for a batch of %d", len(batch))
                with self._cv:
                    for job in {id(j): j for j, _, _ in batch}.values():
                        self._end(job, FailedEvent(EngineFailure(f"generation failed: {e}")), "error")
                continue
            dt = time.perf_counter() - t0
            rows = sum(t.sampling.unet_rows for _, _, t in batch)
            self._rows_per_s = rows / dt if self._rows_per_s <= 0 else 0.8 * self._rows_per_s + 0.2 * rows / dt
            self.metrics.observe_step(len(batch), dt)
            with self._cv:
                self._deliver(batch)
                self._jobs = [j for j in self._jobs if not j.ended]
                # the gauges must not show finished work while the worker waits
                self._active_n = 0
                self._queued = sum(j.remaining for j in self._jobs)
        for job in leftovers:
            self._end(job, FailedEvent(ShuttingDown()), "shutdown")

    def _deal(self, now: float) -> list[tuple[Job, int, Trajectory]]:
        """Under the lock: this step's batch, dealt round-robin over the jobs
        in arrival order (one unfinished trajectory each per round)."""
        waiting = [[(job, i, t) for i, t in enumerate(job.trajectories) if not t.done] for job in self._jobs]
        batch: list[tuple[Job, int, Trajectory]] = []
        for rank in range(max((len(w) for w in waiting), default=0)):
            for w in waiting:
                if rank < len(w) and len(batch) < self.max_batch:
                    batch.append(w[rank])
        for job, _, _ in batch:
            if job.started is None:
                job.started = now
        return batch

    def _expired(self, job: Job, now: float) -> bool:
        """True (and the job ended) when it must leave: cancelled or past its deadline."""
        if job.ended:
            return True
        if job.cancel_reason is not None:
            self._end(job, None, job.cancel_reason)
        elif now > job.deadline:
            waited = (job.started or now) - job.submitted
            msg = (f"the request did not finish within its deadline of {job.deadline_s:g} s "
                   f"({waited:.1f} s waiting for a batch slot); the server is busy or the request too large")
            self._end(job, FailedEvent(DeadlineExceeded(msg)), "deadline")
        return job.ended

    def _end(self, job: Job, event, reason: str) -> None:
        if job.ended:
            return
        job.ended = True
        unfinished = sum(not t.done for t in job.trajectories)
        if unfinished:
            self.metrics.cancelled.inc(unfinished, reason=reason)
        if event is not None:
            job._post(event)

    def _deliver(self, batch) -> None:
        for job, i, tr in batch:
            if job.ended:  # cancelled while the step ran
                continue
            res = tr.latest
            if res.done or (job.every and res.step % job.every == 0):
                job._post(ImageStep(i, dataclasses.replace(res, sample=res.sample.copy(),
                                                            pred_original=res.pred_original.copy())))
            if tr.done:
                self.metrics.images.inc()
                job.remaining -= 1
                if job.finished:
                    job.ended = True


def _rows_left(job: Job) -> int:
    """UNet rows the job still needs (all it asked for until its trajectories are attached)."""
    if not job.trajectories:
        return job.rows
    return sum((t.steps - t.index) * t.sampling.unet_rows for t in job.trajectories)
