"""Replicas behind the real load balancer on this machine: digits/s and
latency at 16 clients through HAProxy (deploy/haproxy/haproxy.cfg, as
deploy/local/cluster.py runs it) for 1, 2 and 3 replicas of `digitgen
serve`, one replica without the balancer beside them, and two failure
counts with 3 replicas:

- failover: 3 replicas under 16 clients, the first able to hold one
  request (DIGITGEN_MAX_BATCH 1, DIGITGEN_MAX_QUEUE 0) while HAProxy's
  leastconn gives it about a third: it refuses (503, before any work) what
  it cannot hold and HAProxy retries each on another, so while capacity
  exists no 503 should reach a client; the count is the 503s the replicas
  sent against those the clients saw;
- drain: SIGTERM to one of 3 replicas in the middle of the load (a rolling
  update): every request either completes or is retried elsewhere.

    python bench/cluster.py [--model fast] [--seconds 20] [--json bench/results/cluster.json]

Each replica gets CPUs / replicas engine threads (deploy/local/cluster.py's
rule), so N replicas share the same cores: on a 2-core machine the ceiling
is one replica's throughput, and more replicas buy failover, not speed.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy" / "local"))   # cluster.py: a script, not a package

import httpx  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.report import write_json  # noqa: E402
from bench.server import closed_loop, free_port  # noqa: E402
from cluster import LoadBalancer, haproxy_binary, wait_ready  # noqa: E402
from engine import paths  # noqa: E402


def refusals(url: str) -> float:
    """The 503s this replica has answered to POST /generate (/metrics)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "digitgen_http_requests_total" and s.labels.get("route") == "/generate"
               and s.labels.get("status") == "503")


class Replicas:
    """n replicas (the first with `first`'s extra settings) behind HAProxy."""

    def __init__(self, weights: Path, n: int, folder: Path, first: dict | None = None):
        threads = max(1, (os.cpu_count() or 1) // n)
        env = {**os.environ, "DIGITGEN_WEIGHTS": str(weights), "DIGITGEN_TRUSTED_PROXIES": "127.0.0.1",
               "DIGITGEN_THREADS": str(threads), "DIGITGEN_GRACEFUL_S": "20"}
        envs = [env | ({f"DIGITGEN_{k.upper()}": str(v) for k, v in (first or {}).items()} if i == 0 else {})
                for i in range(n)]
        self.servers = [("127.0.0.1", free_port()) for _ in range(n)]
        self.procs = [subprocess.Popen([sys.executable, "-m", "digitgen", "serve", "--host", h, "--port", str(p)],
                                       env=e, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                      for (h, p), e in zip(self.servers, envs)]
        self.urls = [f"http://{h}:{p}" for h, p in self.servers]
        self.threads = threads
        for url, proc in zip(self.urls, self.procs):
            wait_ready(url, proc)
        self.lb = LoadBalancer(self.servers, free_port(), folder / f"haproxy-{n}.log", folder)

    def refused(self) -> float:
        total = 0.0
        for url, proc in zip(self.urls, self.procs):
            if proc.poll() is None:
                total += refusals(url)
        return total

    def close(self) -> None:
        self.lb.stop()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def load(url: str, model: str, clients: int, seconds: float, during=None) -> dict:
    """`clients` threads POST back to back for `seconds`; `during(elapsed)`
    is called once a second."""
    results, wall = closed_loop(url, model, clients, seconds, tick=during)
    codes = [code for code, _, _ in results]
    latencies = [dt for code, dt, _ in results if code == 200]
    ok = len(latencies)
    return {"requests": len(codes), "ok": ok, "not_ok": {str(c): codes.count(c) for c in set(codes) if c != 200},
            "digits_per_s": ok / wall, "p50_s": float(np.percentile(latencies, 50)) if latencies else None,
            "p95_s": float(np.percentile(latencies, 95)) if latencies else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(paths.WEIGHTS))
    p.add_argument("--model", default="fast", help="the model every request asks for (default: fast)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of load a row")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "cluster.json"))
    args = p.parse_args(argv)
    if haproxy_binary() is None:
        print("error: needs haproxy (apt-get install haproxy)", file=sys.stderr)
        return 2
    weights, rows = Path(args.weights), {}
    with tempfile.TemporaryDirectory(prefix="digitgen-cluster-") as d:
        folder = Path(d)
        for n in (1, 2, 3):
            r = Replicas(weights, n, folder)
            try:
                load(r.lb.url, args.model, 16, min(3.0, args.seconds))   # warm-up
                if n == 1:
                    rows["1 replica, no balancer"] = {**load(r.urls[0], args.model, 16, args.seconds),
                                                      "threads_each": r.threads}
                rows[f"{n} replica{'s' * (n > 1)} behind HAProxy"] = {
                    **load(r.lb.url, args.model, 16, args.seconds), "threads_each": r.threads}
            finally:
                r.close()
            print(f"  measured {n} replica(s)", file=sys.stderr)

        r = Replicas(weights, 3, folder, first={"max_queue": 0, "max_batch": 1})
        try:
            before = r.refused()
            row = load(r.lb.url, args.model, 16, args.seconds)
            row["refused_by_replicas"] = r.refused() - before
            rows["failover: 3 replicas, the first holding 1 request, 16 clients"] = row
        finally:
            r.close()

        r = Replicas(weights, 3, folder)
        try:
            sent = []

            def drain(elapsed: float) -> None:
                if elapsed >= args.seconds / 3 and not sent:
                    r.procs[0].send_signal(signal.SIGTERM)
                    sent.append(elapsed)
            row = load(r.lb.url, args.model, 16, args.seconds, during=drain)
            row["sigterm_at_s"] = round(sent[0], 1) if sent else None
            row["drained_replica_exit"] = r.procs[0].wait(60)
            rows["drain: SIGTERM to 1 of 3 replicas under 16 clients"] = row
        finally:
            r.close()

    print(f"\n{args.model} model, {os.cpu_count()} CPUs; each row {args.seconds:g} s of load")
    print(f"{'setup':58} {'digits/s':>9} {'p50 s':>7} {'p95 s':>7} {'requests':>9}  not 200")
    for name, row in rows.items():
        extra = f"  (replicas refused {row['refused_by_replicas']:.0f})" if "refused_by_replicas" in row else ""
        p50 = f"{row['p50_s']:7.3f}" if row["p50_s"] is not None else "      -"
        p95 = f"{row['p95_s']:7.3f}" if row["p95_s"] is not None else "      -"
        print(f"{name:58} {row['digits_per_s']:9.2f} {p50} {p95} {row['requests']:9d}  "
              f"{row['not_ok'] or 'none'}{extra}")
    write_json(args.json, {"model": args.model, "seconds": args.seconds, "rows": rows,
                           "machine": {"cpus": os.cpu_count(), **{k: os.environ.get(k) for k in (
                               "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
