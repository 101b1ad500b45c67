"""Where the service's memory goes after heavy requests, and whether it
comes back: `digitgen serve` (shipped weights) on loopback.

    python bench/memory.py [--json bench/results/memory.json]

RSS after a warm-up digit, then four 64-image grids at 512 px (fast model)
and two 50-frame GIFs of x_t at 512 px (base model, DDIM), the peak (VmHWM)
and RSS two seconds after, with the engine's scratch buffers as /metrics
reports them. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.report import write_json  # noqa: E402
from bench.server import LocalServer  # noqa: E402
from engine import paths  # noqa: E402


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc/{pid}/status")


def main(argv=None, prog=None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(paths.WEIGHTS))
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "memory.json"))
    args = p.parse_args(argv)
    server = LocalServer(Path(args.weights))
    try:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            c.post("/generate", params={"label": 1, "n": 4, "size": 64, "model": "fast"})
            time.sleep(1)
            before = status_mb(server.proc.pid, "VmRSS")
            for i in range(4):
                c.post("/generate", params={"label": i, "n": 64, "size": 512, "model": "fast"}).raise_for_status()
            for i in range(2):
                c.get("/generate.gif", params={"label": i, "steps": 49, "size": 512, "frames": "xt", "model": "base",
                                               "scheduler": "ddim"}).raise_for_status()
            time.sleep(2)
            metrics = {line.split()[0]: float(line.split()[1]) for line in c.get("/metrics").text.splitlines()
                       if line.startswith(("digitgen_engine_scratch_bytes ", "digitgen_resident_bytes "))}
        row = {"rss_before_mb": before, "peak_mb": status_mb(server.proc.pid, "VmHWM"),
               "rss_after_mb": status_mb(server.proc.pid, "VmRSS"),
               "engine_scratch_mb": metrics.get("digitgen_engine_scratch_bytes", 0) / 2**20}
    finally:
        server.close()
    print(" | ".join(f"{k} {v:.0f}" for k, v in row.items()))
    write_json(args.json, {"row": row, "machine": {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
