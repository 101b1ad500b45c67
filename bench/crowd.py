"""Idle and trickling sockets beside real clients: what a crowd that only
holds connections does to the service (`digitgen serve` on loopback).

    python bench/crowd.py [--crowds 0:0,900:100,2000:200] [--json bench/results/crowd.json]

For each crowd (silent:trickling sockets; the default budget for idle
connections is 1,000, so the last one is over it), the crowd connects (silent
sockets, and sockets sending a request head a byte every 50 ms), each
reconnecting as soon as the server closes it, and then real clients ask
/healthz, /readyz, /metrics and base-model digits one after another: how
many were answered 200, their median and worst latency, and how many times
the crowd was closed to make room. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.report import write_json  # noqa: E402
from bench.server import LocalServer  # noqa: E402
from engine import paths  # noqa: E402


class Crowd:
    """`idle` silent sockets and `trickling` ones sending a head a byte at a
    time, each reconnected as soon as the server closes it, until stopped."""

    def __init__(self, port: int, idle: int, trickling: int):
        self.port, self.stop_event = port, threading.Event()
        self.reconnects = 0
        self.threads = [threading.Thread(target=self._hold, args=(idle, False), daemon=True),
                        threading.Thread(target=self._hold, args=(trickling, True), daemon=True)]
        for t in self.threads:
            t.start()

    def _hold(self, k: int, trickle: bool) -> None:
        socks: list[socket.socket] = []
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
        sent = 0
        while not self.stop_event.is_set():
            while len(socks) < k:
                try:
                    socks.append(socket.create_connection(("127.0.0.1", self.port), timeout=5))
                except OSError:
                    break
            for s in list(socks):
                try:
                    s.setblocking(False)
                    s.recv(1, socket.MSG_PEEK)  # anything at all (a 408, the end): the server closed it
                    raise OSError
                except BlockingIOError:  # nothing yet: still held
                    pass
                except OSError:
                    socks.remove(s)
                    s.close()
                    self.reconnects += 1
                    continue
                if trickle:
                    try:
                        s.send(head[sent % len(head):sent % len(head) + 1])
                    except OSError:
                        pass
            sent += 1
            time.sleep(0.05)
        for s in socks:
            s.close()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)


def clients(url: str, rounds: int) -> dict:
    """Each probe and a base digit, `rounds` times: (answered 200, median ms, worst ms) by kind."""
    out = {}
    with httpx.Client(base_url=url, timeout=60) as c:
        for kind, call in (("/healthz", lambda: c.get("/healthz")), ("/readyz", lambda: c.get("/readyz")),
                           ("/metrics", lambda: c.get("/metrics")),
                           ("base digit", lambda: c.post("/generate", params={"label": 3, "model": "base"}))):
            times, ok = [], 0
            for _ in range(rounds):
                t0 = time.perf_counter()
                try:
                    ok += call().status_code == 200
                except httpx.TransportError:
                    pass
                times.append(time.perf_counter() - t0)
            out[kind] = {"ok": ok, "of": rounds, "median_ms": 1e3 * statistics.median(times),
                         "worst_ms": 1e3 * max(times)}
    return out


def main(argv=None, prog=None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(paths.WEIGHTS))
    p.add_argument("--crowds", default="0:0,900:100,2000:200", help="silent:trickling sockets, comma-separated")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "crowd.json"))
    args = p.parse_args(argv)
    server = LocalServer(Path(args.weights))
    rows = {}
    try:
        for idle, trickling in (tuple(int(k) for k in c.split(":")) for c in args.crowds.split(",")):
            crowd = Crowd(server.port, idle, trickling)
            time.sleep(3)  # the crowd is in
            row = clients(server.url, args.rounds)
            crowd.stop()
            rows[f"{idle} idle + {trickling} trickling"] = {"clients": row, "crowd_closed": crowd.reconnects}
    finally:
        server.close()
    print(f"{'crowd':28}{'client':>12}{'200s':>8}{'median':>10}{'worst':>10}")
    for name, r in rows.items():
        for kind, c in r["clients"].items():
            print(f"{name:28}{kind:>12}{c['ok']:>5}/{c['of']:<2}{c['median_ms']:>8.1f}ms{c['worst_ms']:>8.1f}ms")
        print(f"{'':28}the crowd's sockets closed to make room: {r['crowd_closed']}")
    write_json(args.json, {"rows": rows, "machine": {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
