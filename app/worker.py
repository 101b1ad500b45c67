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
from collections import deque
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
    Create it on the event loop thread (the asyncio queue belongs there)."""

    def __init__(self, trajectories: list[Trajectory], deadline_s: float, every: int = 0,
                 clock: Callable[[], float] = time.monotonic, model: str = "base"):
        self.trajectories = trajectories
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
        self.admitted = 0
        self.remaining = len(trajectories)
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
    def __init__(self, pipes: dict[str, DigitPipeline], metrics: ServiceMetrics, max_batch: int = 64,
                 max_queue: int = 256, clock: Callable[[], float] = time.monotonic):
        self.pipes, self.metrics = pipes, metrics
        self.clock = clock  # deadlines are read from it, so a test can move time itself
        self.max_batch, self.max_queue = max_batch, max_queue
        self._cv = threading.Condition()
        self._pending: deque[Job] = deque()
        self._queued = 0          # images submitted but not yet in the batch
        self._active_n = 0        # trajectories in the batch
        self._active_steps = 0    # steps they still have to go
        self._step_s = 0.05       # running average of one batched step, for Retry-After
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
        """Stop taking work; what waits for a slot ends now, what runs may go
        on until shortly before the grace period ends (a second per 4 s of
        grace is kept for the last responses to be written), then it ends
        too. Every ended job gets ShuttingDown: a 503 or an `event: error`."""
        with self._cv:
            if self._drain_deadline is not None:
                return
            self._drain_deadline = self.clock() + max(0.0, grace_s - min(1.0, grace_s / 4))
            for job in self._pending:
                self._end(job, FailedEvent(ShuttingDown()), "shutdown")
            self._pending.clear()
            self._queued = 0
            self._cv.notify()

    def submit(self, job: Job) -> None:
        n = len(job.trajectories)
        with self._cv:
            if self._stopping or self._drain_deadline is not None:
                self.metrics.rejected.inc(reason="shutting_down")
                raise ShuttingDown()
            # images that would have to wait for a slot, this job's included
            waiting = self._queued + self._active_n + n - self.max_batch
            if waiting > self.max_queue:
                self.metrics.rejected.inc(reason="queue_full")
                raise Overloaded(self._retry_after())
            self._pending.append(job)
            self._queued += n
            self._cv.notify()

    def _retry_after(self) -> int:
        """Seconds until the current load has drained, roughly: the steps
        still to take over the batch width, at the measured step time."""
        queued_steps = sum(t.steps for j in self._pending for t in j.trajectories[j.admitted:])
        steps = (self._active_steps + queued_steps) / self.max_batch
        return int(min(60, max(1, math.ceil(steps * self._step_s))))

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- worker thread -------------------------------------------------------
    def _run(self) -> None:
        active: list[tuple[Job, int, Trajectory]] = []
        while True:
            with self._cv:
                while not (self._stopping or active or self._pending):
                    self._cv.wait()
                if self._stopping:
                    leftovers = {id(j): j for j in [*self._pending, *(e[0] for e in active)]}
                    self._pending.clear()
                    self._queued = self._active_n = 0
                    break
                now = self.clock()
                if self._drain_deadline is not None and now >= self._drain_deadline:
                    for job in {id(j): j for j, _, _ in active}.values():
                        self._end(job, FailedEvent(ShuttingDown()), "shutdown")
                    active = []
                active = self._drop_and_admit(active, now)
                self._active_n = len(active)
                self._active_steps = sum(t.steps - t.index for _, _, t in active)
            if not active:
                continue
            t0 = time.perf_counter()
            try:
                for model in self.pipes:  # one batched forward per model with work in this step
                    mine = [t for job, _, t in active if job.model == model]
                    if mine:
                        self.pipes[model].step(mine)
            except Exception as e:  # an engine bug must not take the service down
                log.exception("denoising step failed for a batch of %d", len(active))
                for job in {id(j): j for j, _, _ in active}.values():
                    self._end(job, FailedEvent(EngineFailure(f"generation failed: {e}")), "error")
                active = []
                continue
            dt = time.perf_counter() - t0
            self._step_s = 0.8 * self._step_s + 0.2 * dt
            self.metrics.observe_step(len(active), dt)
            active = self._deliver(active)
            with self._cv:  # the gauges must not show finished work while the worker waits
                self._active_n = len(active)
                self._active_steps = sum(t.steps - t.index for _, _, t in active)
        for job in leftovers.values():
            self._end(job, FailedEvent(ShuttingDown()), "shutdown")

    def _drop_and_admit(self, active, now):
        """Under the lock: cancelled or expired jobs leave, waiting ones join."""
        for job in [j for j in self._pending if self._expired(j, now)]:
            self._pending.remove(job)
            self._queued -= len(job.trajectories) - job.admitted
        active = [e for e in active if not self._expired(e[0], now)]
        while self._pending and len(active) < self.max_batch:
            job = self._pending[0]
            take = min(len(job.trajectories) - job.admitted, self.max_batch - len(active))
            active += [(job, i, job.trajectories[i]) for i in range(job.admitted, job.admitted + take)]
            job.admitted += take
            self._queued -= take
            if job.started is None:
                job.started = now
            if job.admitted == len(job.trajectories):
                self._pending.popleft()
        return active

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

    def _deliver(self, active):
        still = []
        for job, i, tr in active:
            res = tr.latest
            if res.done or (job.every and res.step % job.every == 0):
                job._post(ImageStep(i, dataclasses.replace(res, sample=res.sample.copy(),
                                                            pred_original=res.pred_original.copy())))
            if tr.done:
                self.metrics.images.inc()
                job.remaining -= 1
                if job.finished:
                    job.ended = True
            else:
                still.append((job, i, tr))
        return still
