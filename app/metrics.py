"""Everything /metrics shows, through prometheus_client: the classic text
format (0.0.4) by default, OpenMetrics when the scraper asks for it (Accept:
application/openmetrics-text), which also carries each latency bucket's
latest request ID as an exemplar, to find that request's access-log line.
Requests are counted by the edge (app/edge.py), by route and status; the
engine thread counts its steps and images. Live state (queue depth, requests
in flight, readiness) is read at scrape time through callables the app sets."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from engine.nn import runtime

from . import memory

# No `_created` series beside every counter and histogram: they double what a
# scrape carries and nothing here reads them (a process-wide switch; this process
# exports only these metrics).
disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, ... below max_batch, then max_batch: the batch sizes worth telling apart."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


class ServiceMetrics:
    def __init__(self, max_batch: int = 64):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("digitgen_http_requests_total", "HTTP requests by route template, method and status.",
                                ("route", "method", "status"), registry=r)
        self.latency = Histogram("digitgen_http_request_duration_seconds",
                                 "HTTP request latency (streams: the whole stream).", ("route",),
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth_fn: Callable[[], float] = lambda: 0
        self.in_flight_fn: Callable[[], float] = lambda: 0
        self.ready_fn: Callable[[], float] = lambda: 0
        self.limits_store_up_fn: Callable[[], float] = lambda: 0
        live = (("digitgen_ready", "1 when the weights are loaded and the engine worker runs.", lambda: self.ready_fn()),
                ("digitgen_queue_depth", "Images waiting for a batch slot.", lambda: self.queue_depth_fn()),
                ("digitgen_inflight_trajectories", "Trajectories in the engine's batch.", lambda: self.in_flight_fn()),
                ("digitgen_engine_scratch_bytes", "Bytes of the engine's reused buffers (they grow to the largest "
                 "batch run, then stay).", runtime.scratch_bytes),
                ("digitgen_resident_bytes", "Resident memory of the process (Linux; 0 elsewhere).",
                 lambda: memory.rss_bytes() or 0),
                ("digitgen_denoising_steps_per_second", "Trajectory steps per second over the last 10 s.",
                 self._steps_per_second),
                ("digitgen_limits_store_up", "1 while the shared limits store (DIGITGEN_REDIS_URL) answers; 0 while "
                 "each replica counts its own limits instead (or no store is configured).",
                 lambda: self.limits_store_up_fn()))
        for name, help, fn in live:
            Gauge(name, help, registry=r).set_function(fn)
        self.batch_size = Histogram("digitgen_batch_size", "Trajectories per batched denoising step.",
                                    buckets=batch_buckets(max_batch), registry=r)
        self.step_seconds = Histogram("digitgen_engine_step_seconds", "Wall time of one batched denoising step.",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.steps = Counter("digitgen_denoising_steps_total", "Trajectory denoising steps taken.", registry=r)
        self.images = Counter("digitgen_images_generated_total", "Images fully denoised.", registry=r)
        self.cancelled = Counter("digitgen_trajectories_cancelled_total",
                                 "Trajectories that left the batch unfinished, by reason.", ("reason",), registry=r)
        self.rejected = Counter("digitgen_requests_rejected_total",
                                "Requests turned away before generation, by reason.", ("reason",), registry=r)
        self.limits_fallbacks = Counter("digitgen_limits_store_fallbacks_total",
                                        "Times the shared limits store was found down, slow or failing, and the "
                                        "per-process limits took over.", registry=r)
        self.limits_local = Counter("digitgen_limits_local_decisions_total",
                                    "Requests whose limits were decided by this process while a shared store is "
                                    "configured (it was down or slow).", registry=r)
        self._recent: deque[tuple[float, int]] = deque()
        self._recent_lock = threading.Lock()   # the engine thread appends, a scrape trims

    def observe_request(self, route: str, method: str, status: int, seconds: float, request_id: str = "") -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds, {"request_id": request_id} if request_id else None)

    def observe_step(self, batch: int, seconds: float) -> None:
        self.batch_size.observe(batch)
        self.step_seconds.observe(seconds)
        self.steps.inc(batch)
        with self._recent_lock:
            self._recent.append((time.monotonic(), batch))

    def _steps_per_second(self, window: float = 10.0) -> float:
        now = time.monotonic()
        with self._recent_lock:
            while self._recent and self._recent[0][0] < now - window:
                self._recent.popleft()
            return round(sum(n for _, n in self._recent) / window, 3)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) in the format the scraper's Accept header asks for."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
