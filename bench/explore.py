"""What a comparison grid and a morph cost as a user waits for them:
`digitgen serve` (shipped weights) on loopback.

    python bench/explore.py [--rounds 3] [--clients 4] [--json bench/results/explore.json]

A 16-cell grid (guidance 0, 1, 1.5, 3 x steps 5, 10, 20, 40 of the base
model: 16 trajectories in one job) and a 16-frame morph (base model, 20
DPM-Solver++ steps), each alone and beside `--clients` clients that keep
asking for base-model digits; the median and worst latency over the rounds,
and for the neighbours their digits' p50 while it ran. Prints a table and
writes JSON.
"""
from __future__ import annotations

import argparse
import os
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

GRID = {"label": 3, "model": "base", "seed": 7, "x": {"param": "guidance_scale", "values": [0, 1, 1.5, 3]},
        "y": {"param": "steps", "values": [5, 10, 20, 40]}}
MORPH = {"label": 2, "label_b": 8, "seed": 21, "seed_b": 22, "n": 16, "model": "base", "format": "png"}
REQUESTS = {"grid, 16 cells": lambda c: c.post("/grid", json=GRID),
            "morph, 16 frames": lambda c: c.post("/morph", json=MORPH)}


class Neighbours:
    """k clients asking for one base digit after another until stopped."""

    def __init__(self, url: str, k: int):
        self.stop_event, self.times = threading.Event(), []
        self.threads = [threading.Thread(target=self._loop, args=(url, i), daemon=True) for i in range(k)]
        for t in self.threads:
            t.start()

    def _loop(self, url: str, i: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            while not self.stop_event.is_set():
                t0 = time.perf_counter()
                if c.post("/generate", params={"label": i % 10, "model": "base"}).status_code == 200:
                    self.times.append(time.perf_counter() - t0)

    def stop(self) -> list[float]:
        self.stop_event.set()
        for t in self.threads:
            t.join(300)
        return self.times


def main(argv=None, prog=None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(paths.WEIGHTS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "explore.json"))
    args = p.parse_args(argv)
    server = LocalServer(Path(args.weights))
    rows = {}
    try:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            for name, ask in REQUESTS.items():
                ask(c)  # warm-up
                for beside in (0, args.clients):
                    neighbours = Neighbours(server.url, beside) if beside else None
                    if neighbours:
                        time.sleep(2)
                    times = []
                    for _ in range(args.rounds):
                        t0 = time.perf_counter()
                        r = ask(c)
                        assert r.status_code == 200, r.text
                        times.append(time.perf_counter() - t0)
                    digits = neighbours.stop() if neighbours else []
                    rows[f"{name}, {beside} other clients"] = {
                        "median_s": statistics.median(times), "worst_s": max(times), "rounds": args.rounds,
                        "neighbour_digit_p50_s": statistics.median(digits) if digits else None}
    finally:
        server.close()
    print(f"{'request':38}{'median':>9}{'worst':>9}{'neighbours p50':>16}")
    for name, r in rows.items():
        n = f"{r['neighbour_digit_p50_s']:.2f}s" if r["neighbour_digit_p50_s"] else "-"
        print(f"{name:38}{r['median_s']:>8.2f}s{r['worst_s']:>8.2f}s{n:>16}")
    write_json(args.json, {"rows": rows, "machine": {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
