"""Soak and burst benchmark of the service on loopback (bounded).

    python bench/soak.py                          # 16 clients for 10 minutes, shipped weights
    python bench/soak.py --minutes 2 --clients 8  # shorter
    python bench/soak.py --phases burst,gif       # some phases only
    python bench/soak.py --weights /tmp/tiny --minutes 0.2 --json /tmp/soak.json   # smoke run

Phases, against one server of its own:
1. burst: 50 requests at once against a server whose backlog is already
   full: how fast the 503s come back (p50/p99), and that they are 503s.
2. heavy beside light: five requests at the maximum cost run while a
   client asks for one 20-step digit after another: the light requests' p95.
3. gif: four of the largest GIFs the server allows at once: the server's
   RSS before, at its peak and after (is the memory returned?).
4. soak: mixed clients for --minutes — PNG, JSON, GIF and stream requests
   of both models, clients that leave early, slow readers, heavy requests
   beside light ones — recording every request's outcome per endpoint, and
   the server's RSS, threads and open files (from /proc) at start, peak
   and end. Nothing may be lost: every request ends in a status we
   expected (2xx, 422 for the deliberately bad ones, 503/429 under
   pressure), none in a 500 or a transport error we did not cause.

Prints a table and writes JSON (default bench/results/soak.json).
"""
from __future__ import annotations

import argparse
import os
import random
import selectors
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.report import write_json  # noqa: E402
from bench.server import LocalServer, gauge  # noqa: E402
from engine import paths  # noqa: E402


def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50": float(np.percentile(xs, 50)), "p95": float(np.percentile(xs, 95)),
            "p99": float(np.percentile(xs, 99)), "max": float(max(xs))}


# -- phases ---------------------------------------------------------------------------
def raw_burst(url: str, request: bytes, n: int, timeout: float = 60.0) -> list[tuple[int, float]]:
    """n connections opened first, then one request written on each as fast as
    a loop can: each response's time from its own write to its last byte.
    Raw non-blocking sockets, because a client of 50 threads would time
    itself: its GIL and these 2 cores are shared with the server."""
    host, port = url.removeprefix("http://").split(":")
    socks = [socket.create_connection((host, int(port))) for _ in range(n)]
    time.sleep(0.5)  # let the server accept them all before the clock starts
    sel = selectors.DefaultSelector()
    sent, bufs, out = {}, {}, []
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b""
    for s in socks:
        s.send(request)  # a few hundred bytes: the socket buffer takes it whole
        sent[s] = time.perf_counter()
    end = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            chunk = s.recv(1 << 16)
            t = time.perf_counter()
            bufs[s] += chunk
            head, sep, body = bufs[s].partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if (sep and length is not None and len(body) >= length) or not chunk:
                out.append((int(head.split(b" ")[1]) if head else 0, t - sent[s]))
                sel.unregister(s)
    for s in socks:
        s.close()
    return out


def burst(url: str, heavy: dict, n: int = 50) -> dict:
    """Fill the backlog with heavy requests, then fire n more at once."""
    def fill():  # gives up (and so cancels its work) once the burst is over
        try:
            httpx.post(url + "/generate", params=heavy, timeout=8)
        except httpx.TimeoutException:
            pass
    fillers = [threading.Thread(target=fill) for _ in range(6)]
    for t in fillers:
        t.start()
    time.sleep(2.0)
    query = "&".join(f"{k}={v}" for k, v in heavy.items())
    request = (f"POST /generate?{query} HTTP/1.1\r\nHost: {url.removeprefix('http://')}\r\n"
               f"Content-Length: 0\r\n\r\n").encode()
    out = raw_burst(url, request, n)
    refused = [dt for code, dt in out if code == 503]
    for t in fillers:
        t.join()
    return {"requests": n, "statuses": dict(Counter(code for code, _ in out)), "refusal_s": percentiles(refused)}


def largest_gifs(server: LocalServer, k: int = 4) -> dict:
    """k of the largest GIFs the server allows at once (DIGITGEN_MAX_GIF_PIXELS:
    frames x 512 x 512), the server's RSS sampled meanwhile and after."""
    info = httpx.get(server.url + "/info").json()
    frames = info["limits"]["max_gif_pixels"] // (512 * 512)
    params = {"size": 512, "steps": frames - 1, "every": 1, "model": "base", "frames": "xt"}  # noise: the largest files
    before = server.usage()["rss_mb"]
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(server.usage()["rss_mb"])
            time.sleep(0.05)
    sampler = threading.Thread(target=sample)
    sampler.start()
    out: list = []

    def one(i):
        r = httpx.get(server.url + "/generate.gif", params={**params, "label": i % 10, "seed": i}, timeout=600)
        out.append((r.status_code, len(r.content)))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2.0)
    done.set()
    sampler.join()
    return {"requests": k, "params": params, "frames": frames, "statuses": dict(Counter(c for c, _ in out)),
            "gif_mb": max(n for _, n in out) / 2**20, "rss_mb": {"before": before, "peak": max(peak),
                                                                 "after": server.usage()["rss_mb"]}}


def wait_idle(url: str, timeout: float = 60.0) -> None:
    """Until the engine has nothing in flight or queued: an earlier phase's
    clients that gave up are cancelled within a step, but not at once."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not gauge(url, "digitgen_inflight_trajectories") and not gauge(url, "digitgen_queue_depth"):
            return
        time.sleep(0.05)
    raise SystemExit(f"the engine was still busy after {timeout:g} s")


def heavy_beside_light(url: str, heavy: dict, light: dict, seconds: float) -> dict:
    """Five maximum-cost requests are sent (as many run as the backlog
    takes); one client asks light requests meanwhile."""
    wait_idle(url)  # the burst phase's fillers must be gone, or they take the heavy ones' places
    heavy_codes: list = []

    def run_heavy():  # held for the phase, then the client gives up and its work is cancelled
        try:
            r = httpx.post(url + "/generate", params=heavy, timeout=seconds + 5)
            heavy_codes.append(r.status_code)
        except httpx.TimeoutException:
            heavy_codes.append("gave up")
    hs = [threading.Thread(target=run_heavy) for _ in range(5)]
    for t in hs:
        t.start()
    time.sleep(1.0)
    lat, codes = [], Counter()
    end = time.monotonic() + seconds
    with httpx.Client(timeout=600) as c:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = c.post(url + "/generate", params=light)
            codes[r.status_code] += 1
            if r.status_code == 200:
                lat.append(time.perf_counter() - t0)
    for t in hs:
        t.join()
    return {"heavy": heavy, "light": light, "light_latency_s": percentiles(lat), "light_statuses": dict(codes),
            "heavy_statuses": dict(Counter(heavy_codes))}


def soak(server: LocalServer, clients: int, seconds: float, models: list[str], seed: int = 0) -> dict:
    url = server.url
    outcomes: dict[str, Counter] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    unexpected: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    usage = [server.usage()]

    def record(kind, code, dt, ok):
        with lock:
            outcomes[kind][str(code)] += 1
            if code == 200:
                latencies[kind].append(dt)
            if not ok:
                unexpected.append(f"{kind}: {code}")

    def client(k: int):
        rng = random.Random(seed * 1000 + k)
        with httpx.Client(base_url=url, timeout=300) as c:
            while time.monotonic() < stop_at:
                model = rng.choice(models)
                kind = rng.choices(["png", "json", "gif", "stream", "leave", "slow", "bad", "heavy"],
                                   [30, 10, 8, 15, 8, 5, 8, 4])[0]
                params = {"model": model, "label": rng.randrange(10), "seed": rng.randrange(2**32)}
                t0 = time.perf_counter()
                try:
                    if kind in ("png", "heavy"):
                        if kind == "heavy":
                            params |= {"n": 16}
                        r = c.post("/generate", params=params)
                        record(kind, r.status_code, time.perf_counter() - t0, r.status_code in (200, 503, 429))
                    elif kind == "json":
                        r = c.post("/generate", json={**params, "n": 2, "format": "json"})
                        record(kind, r.status_code, time.perf_counter() - t0, r.status_code in (200, 503, 429))
                    elif kind == "gif":
                        r = c.get("/generate.gif", params={**params, "size": 112})
                        record(kind, r.status_code, time.perf_counter() - t0, r.status_code in (200, 503, 429))
                    elif kind == "bad":
                        r = c.post("/generate", params={**params, "label": 12})
                        record(kind, r.status_code, time.perf_counter() - t0, r.status_code == 422)
                    elif kind == "leave":  # a client that gives up after the first frame
                        with c.stream("GET", "/generate/stream", params=params) as r:
                            for line in r.iter_lines():
                                if line.startswith("event: step"):
                                    break
                        record(kind, r.status_code, time.perf_counter() - t0, r.status_code in (200, 503, 429))
                    else:  # stream read to the end, or read slowly
                        with c.stream("GET", "/generate/stream", params=params) as r:
                            last = None
                            for line in r.iter_lines():
                                if line.startswith("event:"):
                                    last = line
                                if kind == "slow":
                                    time.sleep(0.05)
                        good = r.status_code in (503, 429) or last == "event: done"
                        record(kind, r.status_code, time.perf_counter() - t0, good)
                except httpx.TransportError as e:
                    record(kind, type(e).__name__, time.perf_counter() - t0, False)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        usage.append(server.usage())
    time.sleep(2.0)
    usage.append(server.usage())
    return {"clients": clients, "seconds": seconds, "models": models,
            "outcomes": {k: dict(v) for k, v in outcomes.items()},
            "latency_s": {k: percentiles(v) for k, v in latencies.items()},
            "requests": sum(sum(v.values()) for v in outcomes.values()), "unexpected": unexpected[:50],
            "unexpected_count": len(unexpected),
            "usage": {"start": usage[0], "peak_rss_mb": max(u["rss_mb"] for u in usage),
                      "peak_threads": max(u["threads"] for u in usage),
                      "peak_open_files": max(u["open_files"] for u in usage), "end": usage[-1]}}


def main(argv=None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(paths.WEIGHTS))
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--light-seconds", type=float, default=60.0, help="length of the heavy-beside-light phase")
    p.add_argument("--phases", default="burst,light,gif,soak",
                   help="comma-separated subset of burst,light,gif,soak (default: all four)")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = p.parse_args(argv)
    phases = set(args.phases.split(","))
    if not phases <= {"burst", "light", "gif", "soak"}:
        p.error(f"--phases takes burst, light, gif and soak, not {args.phases!r}")
    weights = Path(args.weights)
    models = ["base", "fast"] if (weights / "fast").is_dir() else ["base"]
    server = LocalServer(weights, default_model="base")
    try:
        info = httpx.get(server.url + "/info").json()
        max_rows = info["limits"]["max_request_rows"]
        heavy = {"label": 8, "scheduler": "ddpm", "guidance_scale": 2, "steps": 1000, "n": max(1, max_rows // 2000)}
        light = {"label": 5, "steps": 20}
        started = server.usage()
        result = {"server_start": started}
        if "burst" in phases:
            result["burst"] = burst(server.url, heavy)
        if "light" in phases:
            result["heavy_beside_light"] = heavy_beside_light(server.url, heavy, light, args.light_seconds)
        if "gif" in phases:
            result["largest_gifs"] = largest_gifs(server)
        if "soak" in phases:
            result["soak"] = soak(server, args.clients, args.minutes * 60, models)
        result["exit_status"] = server.close()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    result["machine"] = {"cpus": os.cpu_count(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
                         "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE")}
    print(f"server RSS {result['server_start']['rss_mb']:.0f} MB at start")
    if "burst" in result:
        b = result["burst"]
        print(f"burst of {b['requests']} on a full backlog: {b['statuses']}; 503 in "
              f"p50 {b['refusal_s'].get('p50', float('nan')) * 1e3:.1f} ms, p99 {b['refusal_s'].get('p99', float('nan')) * 1e3:.1f} ms")
    if "heavy_beside_light" in result:
        h = result["heavy_beside_light"]
        print(f"light {h['light']} beside five of {h['heavy']}: p50 {h['light_latency_s'].get('p50', float('nan')):.2f} s, "
              f"p95 {h['light_latency_s'].get('p95', float('nan')):.2f} s; {h['light_statuses']}")
    if "largest_gifs" in result:
        g = result["largest_gifs"]
        print(f"{g['requests']} GIFs of {g['frames']} frames at 512x512 at once: {g['statuses']}, "
              f"{g['gif_mb']:.1f} MB each; RSS {g['rss_mb']['before']:.0f} MB before, {g['rss_mb']['peak']:.0f} peak, "
              f"{g['rss_mb']['after']:.0f} after")
    if "soak" not in result:
        write_json(args.json, result)
        return 0
    s = result["soak"]
    print(f"soak: {s['clients']} clients, {s['seconds']:.0f} s, {s['requests']} requests, "
          f"{s['unexpected_count']} unexpected")
    for kind, counts in sorted(s["outcomes"].items()):
        lat = s["latency_s"].get(kind, {})
        print(f"  {kind:7} {str(counts):40} p50 {lat.get('p50', float('nan')):6.2f} s  "
              f"p95 {lat.get('p95', float('nan')):6.2f} s  p99 {lat.get('p99', float('nan')):6.2f} s")
    u = s["usage"]
    print(f"server RSS {u['start']['rss_mb']:.0f} MB at start, {u['peak_rss_mb']:.0f} peak, {u['end']['rss_mb']:.0f} "
          f"at end; threads {u['start']['threads']}->{u['peak_threads']}->{u['end']['threads']}; open files "
          f"{u['start']['open_files']}->{u['peak_open_files']}->{u['end']['open_files']}; exit {result['exit_status']}")
    write_json(args.json, result)
    return 0 if s["unexpected_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
