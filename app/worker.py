"""The engine worker: ONE thread runs a continuous-batching loop.

Every in-flight trajectory (own label, timestep, scheduler state and seeded
noise) joins the next `pipe.step` call of its model, which is one batched
UNet forward; with several models loaded (base, fast, onestep) a step is one
forward per model. New requests join between steps, finished, cancelled and expired
ones leave, and at most `max_batch` trajectories ride in one forward.

Admission is the worker's, decided once per request (`admit`): by the work
already admitted, and by whether the request can finish within its deadline
at the speed the engine is measured to run (`Pace`). The event loop never
runs the engine: it gets a `Job` from `admit`, attaches its trajectories and
reads results from the job's asyncio queue, which the worker fills with
`loop.call_soon_threadsafe`.
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

import numpy as np

from engine.models.classifier import predict
from engine.pipeline import DigitPipeline, StepResult, Trajectory

from . import memory
from .errors import Problem
from .metrics import ServiceMetrics

log = logging.getLogger("uvicorn.error.digitgen")
RETRY_AFTER_MAX_S = 300


@dataclass(frozen=True)
class Cost:
    """What a request will cost the engine: `images` trajectories of at most
    `steps` UNet steps, at most `rows_per_step` UNet rows each step (2 with
    guidance), `total` UNet rows in all (the classifier's included; by
    default images x steps x rows a step)."""
    images: int
    steps: int
    rows_per_step: int
    total: int | None = None

    @property
    def rows(self) -> int:
        return self.images * self.steps * self.rows_per_step if self.total is None else self.total


@dataclass(frozen=True)
class ImageStep:
    """Image `index` of a job took a step; `result.done` on its last one
    (then `result.sample` is the final image). `probs`: the classifier's
    p(digit | x0) of this step's x0 estimate, when the job asked for it."""
    index: int
    result: StepResult
    probs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class FailedEvent:
    error: Problem


class Pace:
    """How long one batched step takes: `latency_s + rows / rows_per_s`,
    measured. Unknown until calibrated or pinned (then admission checks no
    deadline). Steps of at least BIG rows refine the rate, steps of at most
    SMALL rows the latency. A pinned pace (tests) never moves."""
    BIG, SMALL = 32, 4

    def __init__(self, rows_per_s: float | None = None, latency_s: float = 0.0, pinned: bool = False):
        self.rows_per_s, self.latency_s, self.pinned = rows_per_s, latency_s, pinned

    @property
    def known(self) -> bool:
        return bool(self.rows_per_s)

    def seconds(self, rows: int) -> float:
        return self.latency_s + rows / self.rows_per_s

    def observe(self, rows: int, seconds: float) -> None:
        if self.pinned or not self.known:
            return
        if rows >= self.BIG:
            self.rows_per_s = 0.8 * self.rows_per_s + 0.2 * rows / max(seconds - self.latency_s, 1e-6)
        elif rows <= self.SMALL:
            self.latency_s = 0.8 * self.latency_s + 0.2 * max(0.0, seconds - rows / self.rows_per_s)

    def calibrate(self, forward: Callable[[int], None], big: int = BIG) -> None:
        """Time forward(1) and forward(big) (each after a warm-up run)."""
        times = {}
        for rows in (1, big):
            forward(rows)
            t0 = time.perf_counter()
            forward(rows)
            times[rows] = time.perf_counter() - t0
        self.rows_per_s = (big - 1) / max(times[big] - times[1], 1e-6)
        self.latency_s = max(0.0, times[1] - 1 / self.rows_per_s)


class Job:
    """One admitted request: its trajectories and the queue its events
    arrive on. Made by `BatchWorker.admit` on the event loop thread (the
    asyncio queue belongs there), before its trajectories exist, so a refusal
    costs nothing; `attach` then hands them over and the job joins the batch."""

    def __init__(self, cost: Cost, deadline_s: float, every: int, clock: Callable[[], float], probs: bool = False):
        self.cost = cost
        self.trajectories: list[Trajectory] = []
        self.models: list[str] = []         # which loaded model's pipeline steps each trajectory
        self.x_T = None                     # the first image's starting sample, set before attach
        self.probs = probs                  # run the classifier on every delivered x0 estimate
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
        self.remaining = cost.images
        self.ended = False

    @property
    def finished(self) -> bool:
        return self.remaining == 0

    @property
    def rows_left(self) -> int:
        """UNet rows it still needs (all it asked for until its trajectories are attached)."""
        if not self.trajectories:
            return self.cost.rows
        return sum((t.steps - t.index) * t.sampling.unet_rows for t in self.trajectories)

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
            raise Problem.engine_failure("the engine worker stopped responding") from None

    def _post(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


class BatchWorker:
    """Runs every admitted job's trajectories, a batch per model per step.

    A job is refused (`admit` returns a Problem) when the images it would add
    beyond one batch exceed `max_queue`, when the UNet rows still to run, its
    own included, exceed `max_backlog_rows`, or when at the measured pace it
    could not finish within its deadline: alone (a 422: no wait would help)
    or behind the work already admitted (a 503 whose Retry-After is when it
    would fit). Once admitted, a job is in the running: every step the
    batch's `max_batch` places are dealt out round-robin over the jobs in
    arrival order, one trajectory each per round, so a light request rides
    every step however many images a heavy one asked for. (A trajectory that
    misses a step just waits: its result does not depend on when it runs.)"""

    def __init__(self, pipes: dict[str, DigitPipeline], metrics: ServiceMetrics, max_batch: int = 64,
                 max_queue: int = 256, clock: Callable[[], float] = time.monotonic,
                 max_backlog_rows: int = 1 << 62, pace: Pace | None = None, classifier=None):
        self.pipes, self.metrics = pipes, metrics
        self.classifier = classifier  # engine.models.classifier.DigitClassifier, for jobs that ask p(digit | x0)
        self.clock = clock  # deadlines are read from it, so a test can move time itself
        self.max_batch, self.max_queue, self.max_backlog_rows = max_batch, max_queue, max_backlog_rows
        self.pace = pace or Pace()
        self._cv = threading.Condition()
        self._jobs: list[Job] = []  # admitted and not ended, in arrival order
        self._queued = 0            # trajectories left out of the latest batch
        self._active_n = 0          # trajectories in the latest batch
        self._batch_rows = 0        # UNet rows in the latest batch
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
        too. Every ended job gets the shutting-down 503 (or `event: error`)."""
        with self._cv:
            if self._drain_deadline is not None:
                return
            self._drain_deadline = self.clock() + max(0.0, grace_s - min(1.0, grace_s / 4))
            for job in [j for j in self._jobs if j.started is None]:
                self._end(job, FailedEvent(Problem.shutting_down()), "shutdown")
            self._cv.notify()

    def admit(self, cost: Cost, deadline_s: float, every: int = 0, probs: bool = False) -> Job | Problem:
        """The one admission: a Job (the request is in) or the Problem to answer, before any work."""
        with self._cv:
            refused = self._refusal(cost, deadline_s)
            if refused is not None:
                reason, problem = refused
                self.metrics.rejected.labels(reason).inc()
                return problem
            job = Job(cost, deadline_s, every, self.clock, probs)
            self._jobs.append(job)
            self._queued += cost.images
            return job

    def attach(self, job: Job, trajectories: list[Trajectory], models: list[str]) -> None:
        """The admitted job's trajectories, each with its model: it joins the next step's batch."""
        with self._cv:
            job.trajectories, job.models = trajectories, models
            self._cv.notify()

    def _refusal(self, cost: Cost, deadline_s: float) -> tuple[str, Problem] | None:
        """(reason, as /metrics counts it; the Problem) when the request cannot be admitted now."""
        if self._stopping or self._drain_deadline is not None:
            return "shutting_down", Problem.shutting_down()
        live = [j for j in self._jobs if not j.ended]
        backlog = sum(j.rows_left for j in live)
        if sum(j.remaining for j in live) + cost.images - self.max_batch > self.max_queue:
            return "queue_full", Problem.busy("its queue of images is full", self._retry_after(backlog))
        if backlog + cost.rows > self.max_backlog_rows:
            return "queue_full", Problem.busy(f"{backlog:,} UNet rows of work are admitted already; it takes at most "
                                f"{self.max_backlog_rows:,}", self._retry_after(backlog + cost.rows - self.max_backlog_rows))
        if not self.pace.known:
            return None
        alone, behind = self._finish_s(cost, backlog)
        if alone > deadline_s:
            return "too_slow", Problem(422, "too_slow", (
                f"this request ({cost.rows:,} UNet rows) needs about {alone:.0f} s of engine time at this server's "
                f"measured speed ({self._capacity():.0f} rows a second), more than its deadline of {deadline_s:g} s: "
                f"ask for fewer images or steps"))
        if behind > deadline_s:
            return "past_deadline", Problem.busy(f"behind the work admitted already it would finish in about {behind:.0f} s, past "
                                f"its deadline of {deadline_s:g} s",
                                self._retry_after(backlog + cost.rows - self._capacity() * deadline_s))
        return None

    def _finish_s(self, cost: Cost, backlog: int) -> tuple[float, float]:
        """(seconds alone, seconds behind what is admitted) the request would take at the measured pace."""
        per_round = min(cost.images, self.max_batch)
        rounds = math.ceil(cost.images / self.max_batch) * cost.steps
        alone = rounds * self.pace.seconds(per_round * cost.rows_per_step)
        full = self.max_batch * 2
        crowded = rounds * self.pace.seconds(min(self._batch_rows + per_round * cost.rows_per_step, full))
        return alone, max(crowded, (backlog + cost.rows) / self._capacity())

    def _capacity(self) -> float:
        """UNet rows a second with the batch full."""
        full = self.max_batch * 2
        return full / self.pace.seconds(full)

    def _retry_after(self, rows_to_drain: float) -> int:
        """Seconds until that much admitted work has run (1 s until the pace is known)."""
        if not self.pace.known:
            return 1
        return int(min(RETRY_AFTER_MAX_S, max(1, math.ceil(rows_to_drain / self._capacity()))))

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- worker thread -------------------------------------------------------
    def _run(self) -> None:
        worked = False  # since the last time the worker went idle
        while True:
            with self._cv:
                if not (self._stopping or self._jobs) and worked:
                    worked = False
                    self._cv.release()
                    try:  # idle: give freed memory back to the system (outside the lock: it takes ms)
                        memory.release()
                    finally:
                        self._cv.acquire()
                while not (self._stopping or self._jobs):
                    self._cv.wait()
                if self._stopping:
                    leftovers, self._jobs = self._jobs, []
                    self._queued = self._active_n = 0
                    break
                now = self.clock()
                if self._drain_deadline is not None and now >= self._drain_deadline:
                    for job in self._jobs:
                        self._end(job, FailedEvent(Problem.shutting_down()), "shutdown")
                self._jobs = [j for j in self._jobs if not self._expired(j, now)]
                batch = self._deal(now)
                self._active_n = len(batch)
                self._batch_rows = sum(t.sampling.unet_rows for _, _, t in batch)
                self._queued = sum(j.remaining for j in self._jobs) - len(batch)
                if not batch:  # admitted jobs whose trajectories are still being built: attach() wakes us
                    self._cv.wait(0.5)
                    continue
            worked = True
            t0 = time.perf_counter()
            try:
                for model in self.pipes:  # one batched forward per model with work in this step
                    mine = [t for job, i, t in batch if job.models[i] == model]
                    if mine:
                        self.pipes[model].step(mine)
                probs = self._classify(batch)
            except Exception as e:  # an engine bug must not take the service down
                log.exception("denoising step failed for a batch of %d", len(batch))
                with self._cv:
                    for job in {id(j): j for j, _, _ in batch}.values():
                        self._end(job, FailedEvent(Problem.engine_failure(f"generation failed: {e}")), "error")
                continue
            dt = time.perf_counter() - t0
            self.pace.observe(self._batch_rows, dt)
            self.metrics.observe_step(len(batch), dt)
            with self._cv:
                self._deliver(batch, probs)
                self._jobs = [j for j in self._jobs if not j.ended]
                # the gauges must not show finished work while the worker waits
                self._active_n = self._batch_rows = 0
                self._queued = sum(j.remaining for j in self._jobs)
        for job in leftovers:
            self._end(job, FailedEvent(Problem.shutting_down()), "shutdown")

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
            self._end(job, FailedEvent(Problem.deadline(msg)), "deadline")
        return job.ended

    def _end(self, job: Job, event, reason: str) -> None:
        if job.ended:
            return
        job.ended = True
        unfinished = sum(not t.done for t in job.trajectories)
        if unfinished:
            self.metrics.cancelled.labels(reason).inc(unfinished)
        if event is not None:
            job._post(event)

    def _classify(self, batch) -> dict[int, tuple[float, ...]]:
        """p(digit | x0) of every delivered step of the jobs that ask for it,
        in one batched classifier forward: position in the batch -> probabilities."""
        wanted = [k for k, (job, _, tr) in enumerate(batch) if job.probs and self._delivers(job, tr.latest)]
        if not wanted or self.classifier is None:
            return {}
        x0 = np.stack([batch[k][2].latest.pred_original for k in wanted])
        probs, _ = predict(self.classifier, np.clip(x0, -1, 1))
        return {k: tuple(round(float(p), 4) for p in row) for k, row in zip(wanted, probs)}

    @staticmethod
    def _delivers(job: Job, res: StepResult) -> bool:
        return res.done or bool(job.every and res.step % job.every == 0)

    def _deliver(self, batch, probs: dict) -> None:
        for k, (job, i, tr) in enumerate(batch):
            if job.ended:  # cancelled while the step ran
                continue
            res = tr.latest
            if self._delivers(job, res):
                job._post(ImageStep(i, dataclasses.replace(res, sample=res.sample.copy(),
                                                            pred_original=res.pred_original.copy()), probs.get(k)))
            if tr.done:
                self.metrics.images.inc()
                job.remaining -= 1
                if job.finished:
                    job.ended = True
