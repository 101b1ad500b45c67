"""Prometheus text exposition (format 0.0.4), written by hand: counters,
gauges and histograms with labels, one lock for all of them (the engine
thread and the event loop both update them). Requests are counted by the
edge (app/edge.py), by route and status."""
from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections import deque
from typing import Callable

from engine.nn import runtime

from . import memory


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _escape(v: str) -> str:
    return str(v).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _labels(names: tuple, values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, registry: "Registry", name: str, help: str, labels: tuple = ()):
        self.name, self.help, self.labelnames = name, help, tuple(labels)
        self._lock = registry.lock
        self._values: dict[tuple, object] = {}
        registry.metrics.append(self)

    def _key(self, labels: dict) -> tuple:
        return tuple(str(labels[n]) for n in self.labelnames)

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"] + self._samples()


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels) -> None:
        k = self._key(labels)
        with self._lock:
            self._values[k] = self._values.get(k, 0.0) + amount

    def value(self, **labels) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def _samples(self):
        if not self._values and not self.labelnames:
            return [f"{self.name} 0"]
        return [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    """A gauge whose value is read from a function at scrape time."""
    kind = "gauge"

    def __init__(self, registry, name, help, fn: Callable[[], float]):
        super().__init__(registry, name, help)
        self.fn = fn

    def _samples(self):
        return [f"{self.name} {_num(self.fn())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, registry, name, help, buckets, labels: tuple = ()):
        super().__init__(registry, name, help, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)

    def observe(self, value: float, **labels) -> None:
        k = self._key(labels)
        i = bisect.bisect_left(self.buckets, value)  # the first bucket with value <= its bound
        with self._lock:
            counts, total = self._values.get(k, ([0] * len(self.buckets), 0.0))  # per bucket, not cumulative
            counts[i] += 1
            self._values[k] = (counts, total + value)

    def _samples(self):
        out = []
        for k, (per_bucket, total) in sorted(self._values.items()):
            counts = list(itertools.accumulate(per_bucket))  # Prometheus buckets are cumulative
            for b, c in zip(self.buckets, counts):
                le = 'le="' + _num(b) + '"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, k, le)} {c}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, k)} {_num(total)}")
            out.append(f"{self.name}_count{_labels(self.labelnames, k)} {counts[-1]}")
        return out


class Registry:
    def __init__(self):
        self.lock = threading.RLock()
        self.metrics: list[_Metric] = []

    def render(self) -> str:
        with self.lock:
            return "\n".join(line for m in self.metrics for line in m.render()) + "\n"


class ServiceMetrics:
    """Everything /metrics shows. The worker's live state (queue depth,
    in-flight trajectories) is read through callables set by the app."""

    def __init__(self, max_batch: int = 64):
        r = self.registry = Registry()
        self.requests = Counter(r, "digitgen_http_requests_total", "HTTP requests by route template, method and status.",
                                ("route", "method", "status"))
        self.latency = Histogram(r, "digitgen_http_request_duration_seconds",
                                 "HTTP request latency (streams: the whole stream).", LATENCY_BUCKETS, ("route",))
        self.queue_depth_fn: Callable[[], float] = lambda: 0
        self.in_flight_fn: Callable[[], float] = lambda: 0
        self.ready_fn: Callable[[], float] = lambda: 0
        Gauge(r, "digitgen_ready", "1 when the weights are loaded and the engine worker runs.", lambda: self.ready_fn())
        Gauge(r, "digitgen_queue_depth", "Images waiting for a batch slot.", lambda: self.queue_depth_fn())
        Gauge(r, "digitgen_inflight_trajectories", "Trajectories in the engine's batch.", lambda: self.in_flight_fn())
        Gauge(r, "digitgen_engine_scratch_bytes", "Bytes of the engine's reused buffers (they grow to the largest "
              "batch run, then stay).", runtime.scratch_bytes)
        Gauge(r, "digitgen_resident_bytes", "Resident memory of the process (Linux; 0 elsewhere).",
              lambda: memory.rss_bytes() or 0)
        sizes, b = [], 1
        while b < max_batch:
            sizes.append(b)
            b *= 2
        self.batch_size = Histogram(r, "digitgen_batch_size", "Trajectories per batched denoising step.",
                                    sizes + [max_batch])
        self.step_seconds = Histogram(r, "digitgen_engine_step_seconds", "Wall time of one batched denoising step.",
                                      LATENCY_BUCKETS)
        self.steps = Counter(r, "digitgen_denoising_steps_total", "Trajectory denoising steps taken.")
        Gauge(r, "digitgen_denoising_steps_per_second", "Trajectory steps per second over the last 10 s.",
              self._steps_per_second)
        self.images = Counter(r, "digitgen_images_generated_total", "Images fully denoised.")
        self.cancelled = Counter(r, "digitgen_trajectories_cancelled_total",
                                 "Trajectories that left the batch unfinished, by reason.", ("reason",))
        self.rejected = Counter(r, "digitgen_requests_rejected_total",
                                "Requests turned away before generation, by reason.", ("reason",))
        self.limits_store_up_fn: Callable[[], float] = lambda: 0
        Gauge(r, "digitgen_limits_store_up", "1 while the shared limits store (DIGITGEN_REDIS_URL) answers; 0 while "
              "each replica counts its own limits instead (or no store is configured).",
              lambda: self.limits_store_up_fn())
        self.limits_fallbacks = Counter(r, "digitgen_limits_store_fallbacks_total",
                                        "Times the shared limits store was found down, slow or failing, and the "
                                        "per-process limits took over.")
        self.limits_local = Counter(r, "digitgen_limits_local_decisions_total",
                                    "Requests whose limits were decided by this process while a shared store is "
                                    "configured (it was down or slow).")
        self._recent: deque[tuple[float, int]] = deque()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.inc(route=route, method=method, status=status)
        self.latency.observe(seconds, route=route)

    def observe_step(self, batch: int, seconds: float) -> None:
        self.batch_size.observe(batch)
        self.step_seconds.observe(seconds)
        self.steps.inc(batch)
        with self.registry.lock:
            self._recent.append((time.monotonic(), batch))

    def _steps_per_second(self, window: float = 10.0) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - window:
            self._recent.popleft()
        return round(sum(n for _, n in self._recent) / window, 3)

    def render(self) -> str:
        return self.registry.render()
