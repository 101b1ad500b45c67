"""Service benchmark: digits/s and p50/p95 latency of POST /generate at 1, 4
and 16 concurrent clients (20 steps, the weights' default scheduler and
guidance), next to the engine's own in-process batched sampling at the same
batch sizes (`pipe.step` looped over N trajectories until done) and its
single-digit sampling time. Engine and service rounds alternate per level
(at 1 client: sample by sample) so slow drifts of a shared machine hit both
alike.

    python bench/service.py                                  # shipped weights/, own server
    python bench/service.py --weights /tmp/tiny --quick      # smoke run
    python bench/service.py --random-init                    # shipped config, random weights
    python bench/service.py --url http://127.0.0.1:8000      # an already running server (same weights!)

Prints a table and writes JSON (default bench/results/service.json).
Targets: service at 16 clients >= 0.8x the engine at batch 16 and >= 2x the
service at 1 client; p95 latency at 1 client <= 1.3x the engine's
single-digit sampling time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.report import write_json  # noqa: E402
from engine.nn import runtime  # noqa: E402
from engine.pipeline import DigitPipeline  # noqa: E402

LEVELS = (1, 4, 16)
STEPS = 20


# -- the server ------------------------------------------------------------------
class LocalServer:
    def __init__(self, weights: Path, max_batch: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "DIGITGEN_WEIGHTS": str(weights), "DIGITGEN_MAX_BATCH": str(max_batch),
               "DIGITGEN_MAX_QUEUE": "1024", "DIGITGEN_DEADLINE_S": "3600"}
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
                                      "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                     cwd=ROOT, env=env)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server did not start (exit status {self.proc.returncode})")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise SystemExit("the server did not become ready in 120 s")
            time.sleep(0.2)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


# -- measurements ------------------------------------------------------------------
def engine_batch_seconds(pipe: DigitPipeline, batch: int) -> float:
    """Wall time to sample `batch` digits together, in process."""
    trs = [pipe.trajectory(i % pipe.num_labels, 1000 + i, steps=STEPS) for i in range(batch)]
    t0 = time.perf_counter()
    while not all(t.done for t in trs):
        pipe.step(trs)
    return time.perf_counter() - t0


def service_round(url: str, clients: int, seconds: float, seed0: int) -> dict:
    """`clients` threads POST back to back for `seconds`; requests still
    running then are waited for and counted."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int):
        with httpx.Client(base_url=url, timeout=600) as c:
            i = 0
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = c.post("/generate", params={"label": (k + i) % 10, "steps": STEPS, "seed": seed0 + 1000 * k + i})
                dt = time.perf_counter() - t0
                with lock:
                    (latencies.append(dt) if r.status_code == 200 else errors.append(f"{r.status_code} {r.text}"))
                i += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0][:300]}")
    return {"digits": len(latencies), "wall_s": wall, "latencies": latencies}


def single_round(url: str, pipe: DigitPipeline, seconds: float, seed0: int) -> tuple[list[float], list[float]]:
    """One client, alternating one in-process single-digit sample and one
    request, so both see the same machine: (engine seconds, request seconds)."""
    engine, service = [], []
    stop_at = time.perf_counter() + seconds
    with httpx.Client(base_url=url, timeout=600) as c:
        while time.perf_counter() < stop_at or not service:
            engine.append(engine_batch_seconds(pipe, 1))
            t0 = time.perf_counter()
            r = c.post("/generate", params={"label": len(service) % 10, "steps": STEPS, "seed": seed0 + len(service)})
            if r.status_code != 200:
                raise SystemExit(f"request failed: {r.status_code} {r.text[:300]}")
            service.append(time.perf_counter() - t0)
    return engine, service


def warm_up(url: str, pipe: DigitPipeline) -> None:
    engine_batch_seconds(pipe, 1)
    httpx.post(url + "/generate", params={"label": 0, "steps": STEPS}, timeout=600).raise_for_status()


def run(args) -> dict:
    weights = Path(args.weights)
    tmp = None
    if args.random_init:
        tmp = tempfile.TemporaryDirectory(prefix="digitgen-bench-")
        weights = Path(tmp.name)
        write_random_weights(weights)
    pipe = DigitPipeline.from_pretrained(weights)  # the bench's own in-process engine
    server = None if args.url else LocalServer(weights, max_batch=max(LEVELS))
    url = args.url or server.url
    try:
        warm_up(url, pipe)
        rows = []
        for clients in LEVELS:
            eng, lat, digits, wall = [], [], 0, 0.0
            for r in range(args.rounds):  # alternate engine and service
                if clients == 1:
                    e, s = single_round(url, pipe, args.seconds, seed0=r * 100_000)
                    eng += e
                    lat += s
                    digits, wall = digits + len(s), wall + sum(s)
                    continue
                eng.append(engine_batch_seconds(pipe, clients))
                res = service_round(url, clients, args.seconds, seed0=r * 100_000)
                digits, wall = digits + res["digits"], wall + res["wall_s"]
                lat += res["latencies"]
            rows.append({
                "clients": clients,
                "service_digits_per_s": digits / wall,
                "service_p50_s": float(np.percentile(lat, 50)),
                "service_p95_s": float(np.percentile(lat, 95)),
                "service_requests": digits,
                "engine_batch_s": float(np.median(eng)),
                "engine_batch_p95_s": float(np.percentile(eng, 95)),
                "engine_digits_per_s": clients / float(np.median(eng)),
            })
            print(f"  measured {clients} client(s): {rows[-1]['service_digits_per_s']:.2f} digits/s", file=sys.stderr)
    finally:
        if server:
            server.close()
        if tmp:
            tmp.cleanup()
    by = {r["clients"]: r for r in rows}
    single_s = by[1]["engine_batch_s"]  # median single-digit sampling time, measured alternately with level 1
    ratios = [
        ("service@16 / engine batch 16 throughput", by[16]["service_digits_per_s"] / by[16]["engine_digits_per_s"],
         ">=", 0.8),
        ("service@16 / service@1 throughput", by[16]["service_digits_per_s"] / by[1]["service_digits_per_s"],
         ">=", 2.0),
        ("p95 latency@1 / engine single digit", by[1]["service_p95_s"] / single_s, "<=", 1.3),
    ]
    return {
        "weights": str(weights) if not args.random_init else "random init of engine/configs/unet_mnist.json",
        "steps": STEPS, "rows": rows, "engine_single_digit_s": single_s,
        "engine_single_digit_p95_s": by[1]["engine_batch_p95_s"],
        "ratios": [{"metric": m, "value": v, "target": f"{op} {t}", "meets_target": bool(v >= t if op == ">=" else v <= t)}
                   for m, v, op, t in ratios],
        "settings": {"seconds_per_round": args.seconds, "rounds": args.rounds, "url": args.url},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "load_avg": os.getloadavg(),
                    "DIGITGEN_THREADS": os.environ.get("DIGITGEN_THREADS")},
    }


def write_random_weights(folder: Path) -> None:
    from engine import UNet2DModel
    from engine.pipeline import SamplingDefaults

    cfg = {k: v for k, v in json.loads((ROOT / "engine" / "configs" / "unet_mnist.json").read_text()).items()
           if not k.startswith("_")}
    sched = {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon"}
    DigitPipeline(UNet2DModel(**cfg, rng=np.random.default_rng(0)), sched, SamplingDefaults()).save_pretrained(folder)


def print_table(info: dict) -> None:
    print(f"\nweights: {info['weights']}; {info['steps']} steps; engine single digit "
          f"{info['engine_single_digit_s']:.3f} s (p95 {info['engine_single_digit_p95_s']:.3f} s: the noise floor)")
    head = (f"{'clients':>7} {'service digits/s':>17} {'p50 s':>8} {'p95 s':>8} {'requests':>9} "
            f"{'engine batch digits/s':>22} {'service/engine':>15}")
    print(head)
    print("-" * len(head))
    for r in info["rows"]:
        print(f"{r['clients']:>7} {r['service_digits_per_s']:>17.2f} {r['service_p50_s']:>8.3f} "
              f"{r['service_p95_s']:>8.3f} {r['service_requests']:>9} {r['engine_digits_per_s']:>22.2f} "
              f"{r['service_digits_per_s'] / r['engine_digits_per_s']:>14.2f}x")
    print()
    for r in info["ratios"]:
        print(f"{r['metric']:42} {r['value']:6.2f}x  target {r['target']:<7} "
              f"{'ok' if r['meets_target'] else 'MISS'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(ROOT / "weights"), help="weights folder (default: the repo's weights/)")
    p.add_argument("--random-init", action="store_true",
                   help="use randomly initialised weights of the shipped config (same compute, no training needed)")
    p.add_argument("--url", help="benchmark this running server instead of starting one (it must serve --weights)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per service round")
    p.add_argument("--rounds", type=int, default=2, help="engine/service rounds per level")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 3 s")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "service.json"))
    args = p.parse_args(argv)
    runtime.configure()  # the engine's threads, as the service runs them
    if args.quick:
        args.seconds, args.rounds = 3.0, 1
    if not args.random_init and not Path(args.weights).is_dir():
        print(f"error: weights folder not found: {args.weights} (train first, pass --weights, or use --random-init)",
              file=sys.stderr)
        return 2
    info = run(args)
    print_table(info)
    write_json(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
