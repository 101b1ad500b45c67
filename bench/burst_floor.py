"""Where a 503's time goes under a burst: the same burst of 50 raw requests
(bench/soak.py's `raw_burst`) against three servers on loopback.

    python bench/burst_floor.py [--bursts 8] [--json bench/results/burst_floor.json]

1. bare: uvicorn with an ASGI app that answers 503 and does nothing else:
   the HTTP server's own cost, the floor; with its pure-Python HTTP parser
   and event loop (h11, asyncio) and with the C ones the service runs
   (httptools, uvloop).
2. held: the service (shipped weights) with a full backlog and its engine
   held (tests/controlled_server.py `hold`), so the engine takes no CPU: the
   cost of our stack (our HTTP protocol, the edge middleware, Starlette and
   FastAPI's routing, the request's parsing and resolution, the admission).
3. held + load in another process: as 2, with a NumPy GEMM load on every
   core in a separate process at nice 19, as the engine would be if it ran
   in a process of its own (tried: branch engine-process-experiment).
4. running: `digitgen serve` as shipped, its engine computing the filler on
   both cores in the same process, as a user runs it: the figure that counts.

For each: the median and the worst over the bursts of a burst's p99 (at 50
requests, its slowest but one), how many bursts had theirs within 10 ms,
and the p99 of all the bursts' requests pooled. Prints a table and writes
JSON.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench.report import write_json  # noqa: E402
from bench.server import LocalServer, free_port, gauge  # noqa: E402
from bench.soak import raw_burst  # noqa: E402
from engine import paths  # noqa: E402

HEAVY = "label=8&steps=1000&scheduler=ddpm&n=4&guidance_scale=2&model=base"  # 8,000 rows
BARE_APP = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b'{"detail": "the server is busy", "message": "the server is busy"}'
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=sys.argv[2], loop=sys.argv[3], log_level="warning",
            access_log=False)
"""
LOAD = "import numpy as np\na = np.ones((1024, 1024), np.float32)\nwhile True:\n    a @ a\n"


def wait_ready(url: str, path: str, proc: subprocess.Popen) -> None:
    end = time.monotonic() + 120
    while time.monotonic() < end and proc.poll() is None:
        try:
            httpx.get(url + path, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"{proc.args} did not start")


def wait_admitted(url: str) -> None:
    """Until the filler's images ride in the batch: from then on the backlog
    is full, however long this machine took to get there."""
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if gauge(url, "digitgen_inflight_trajectories") > 0:
            return
        time.sleep(0.1)
    raise SystemExit("the filler request was not admitted in 120 s")


def bursts(url: str, k: int, n: int) -> dict:
    request = f"POST /generate?{HEAVY} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode()
    raw_burst(url, request, n)  # warm-up, not counted: a fresh server's first bursts are slower
    p99s, statuses, every = [], set(), []
    for _ in range(k):
        out = raw_burst(url, request, n)
        statuses |= {code for code, _ in out}
        p99s.append(float(np.percentile([dt for _, dt in out], 99)))
        every += [dt for _, dt in out]
    return {"bursts": k, "requests_each": n, "statuses": sorted(statuses),
            "p99_ms_median": 1e3 * statistics.median(p99s), "p99_ms_worst": 1e3 * max(p99s),
            "bursts_p99_within_10ms": sum(p <= 0.010 for p in p99s),
            "p99_ms_all_requests": 1e3 * float(np.percentile(every, 99)),
            "p99_ms_each": [round(1e3 * p, 2) for p in p99s]}


def main(argv=None, prog=None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(paths.WEIGHTS))
    p.add_argument("--bursts", type=int, default=8)
    p.add_argument("--n", type=int, default=50, help="requests a burst")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "burst_floor.json"))
    args = p.parse_args(argv)
    rows = {}

    for http, loop in (("h11", "asyncio"), ("httptools", "uvloop")):
        port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port), http, loop])
        try:
            wait_ready(f"http://127.0.0.1:{port}", "/", bare)
            rows[f"bare uvicorn ({http}, {loop}) answering 503"] = bursts(f"http://127.0.0.1:{port}", args.bursts,
                                                                          args.n)
        finally:
            bare.terminate()
            bare.wait()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DIGITGEN_WEIGHTS": args.weights, "DIGITGEN_MAX_BACKLOG_ROWS": "8192",
           "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "controlled_server.py"), str(port)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_ready(url, "/readyz", server)
        server.stdin.write("hold\n")
        server.stdin.flush()
        server.stdout.readline()
        filler = subprocess.Popen([sys.executable, "-c", f"import httpx; httpx.post({url + '/generate?' + HEAVY!r}, "
                                                         f"timeout=3600)"])
        wait_admitted(url)
        rows["digitgen, engine held"] = bursts(url, args.bursts, args.n)
        load = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", LOAD])
        time.sleep(1.0)
        try:
            rows["digitgen, engine held, load in another process (nice 19)"] = bursts(url, args.bursts, args.n)
        finally:
            load.kill()
            load.wait()
        filler.kill()
        filler.wait()
    finally:
        server.terminate()
        server.wait()

    served = LocalServer(Path(args.weights), max_backlog_rows=8192)
    try:
        filler = subprocess.Popen([sys.executable, "-c", f"import httpx; httpx.post({served.url + '/generate?' + HEAVY!r}, "
                                                         f"timeout=3600)"])
        wait_admitted(served.url)
        row = bursts(served.url, args.bursts, args.n)
        # with small weights on a fast machine the filler may end before the bursts do
        row["engine_busy_throughout"] = gauge(served.url, "digitgen_inflight_trajectories") > 0
        rows["digitgen serve, engine running in-process"] = row
        filler.kill()
        filler.wait()
    finally:
        served.close()

    print(f"burst of {args.n} (p99 of each burst, over {args.bursts} bursts)")
    print(f"{'server':60} {'median':>8} {'worst':>8} {'<=10ms':>7} {'pooled':>8}  statuses")
    for name, r in rows.items():
        note = "" if r.get("engine_busy_throughout", True) else "  (the filler ended before the bursts did)"
        print(f"{name:60} {r['p99_ms_median']:7.1f}ms {r['p99_ms_worst']:7.1f}ms "
              f"{r['bursts_p99_within_10ms']:4d}/{r['bursts']:<2d} {r['p99_ms_all_requests']:7.1f}ms  {r['statuses']}{note}")
    write_json(args.json, {"rows": rows, "machine": {"cpus": os.cpu_count(), **{
        k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
