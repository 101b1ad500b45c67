"""Service benchmark: digits/s and p50/p95 latency of POST /generate at 1, 4
and 16 concurrent clients (each model at its own sampling defaults: base 20
DPM-Solver++ steps with guidance, fast its 3 TCD steps, onestep 1 step), next to the engine's
own in-process batched sampling at the same batch sizes (`pipe.step` looped
over N trajectories until done) and its single-digit sampling time. Engine
and service rounds alternate per level (at 1 client: sample by sample), and
with several models the models alternate too, so slow drifts of a shared
machine hit all alike.

    python bench/service.py                                  # every shipped model side by side, own server
    python bench/service.py --model fast                     # one model
    python bench/service.py --weights /tmp/tiny --quick      # smoke run (writes no recorded result)
    python bench/service.py --random-init                    # shipped config, random weights (base only)
    python bench/service.py --url http://127.0.0.1:8000      # an already running server (same weights!)

Prints a table and writes JSON (default bench/results/service.json).
Targets, per model: service at 16 clients >= 0.8x the engine at batch 16
and >= 2x the service at 1 client; p95 latency at 1 client <= 1.3x the
engine's single-digit sampling time; for the one-step model (whose digit
is one UNet row, so HTTP, PNG encoding and queueing weigh most) p50 at 1
client <= 1.2x the engine's single digit and 16 clients >= 0.9x the engine
at batch 16 (#28). Fast vs base: one digit's p50 <= 1/8, digits/s at 16
clients >= 6x; onestep vs base the same, reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.report import write_json  # noqa: E402
from bench.server import LocalServer, closed_loop  # noqa: E402
from engine import paths  # noqa: E402
from engine.nn import runtime  # noqa: E402
from engine.pipeline import DigitPipeline  # noqa: E402

LEVELS = (1, 4, 16)


# -- the server ------------------------------------------------------------------
# -- measurements ------------------------------------------------------------------
def engine_batch_seconds(pipe: DigitPipeline, batch: int) -> float:
    """Wall time to sample `batch` digits together, in process, at the model's defaults."""
    trs = [pipe.trajectory(i % pipe.num_labels, 1000 + i) for i in range(batch)]
    t0 = time.perf_counter()
    while not all(t.done for t in trs):
        pipe.step(trs)
    return time.perf_counter() - t0


def service_round(url: str, model: str, clients: int, seconds: float, seed0: int) -> dict:
    """`clients` threads POST back to back for `seconds`; requests still
    running then are waited for and counted. Every one must succeed."""
    results, wall = closed_loop(url, model, clients, seconds, seed0)
    errors = [f"{code} {text}" for code, _, text in results if code != 200]
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0][:300]}")
    return {"digits": len(results), "wall_s": wall, "latencies": [dt for _, dt, _ in results]}


def single_round(url: str, model: str, pipe: DigitPipeline, seconds: float,
                 seed0: int) -> tuple[list[float], list[float]]:
    """One client, alternating one in-process single-digit sample and one
    request, so both see the same machine: (engine seconds, request seconds)."""
    engine, service = [], []
    stop_at = time.perf_counter() + seconds
    with httpx.Client(base_url=url, timeout=600) as c:
        while time.perf_counter() < stop_at or not service:
            engine.append(engine_batch_seconds(pipe, 1))
            t0 = time.perf_counter()
            r = c.post("/generate", params={"model": model, "label": len(service) % 10, "seed": seed0 + len(service)})
            if r.status_code != 200:
                raise SystemExit(f"request failed: {r.status_code} {r.text[:300]}")
            service.append(time.perf_counter() - t0)
    return engine, service


def warm_up(url: str, model: str, pipe: DigitPipeline) -> None:
    engine_batch_seconds(pipe, 1)
    httpx.post(url + "/generate", params={"model": model, "label": 0}, timeout=600).raise_for_status()


def measure_level(url: str, model: str, pipe: DigitPipeline, clients: int, args, r: int, acc: dict) -> None:
    """One round of one model at one level: the engine, then the service."""
    if clients == 1:
        e, s = single_round(url, model, pipe, args.seconds, seed0=r * 100_000)
        acc["eng"] += e
        acc["lat"] += s
        acc["digits"] += len(s)
        acc["wall"] += sum(s)
        return
    acc["eng"].append(engine_batch_seconds(pipe, clients))
    res = service_round(url, model, clients, args.seconds, seed0=r * 100_000)
    acc["digits"] += res["digits"]
    acc["wall"] += res["wall_s"]
    acc["lat"] += res["latencies"]


def run(args) -> dict:
    weights = Path(args.weights)
    tmp = None
    if args.random_init:
        tmp = tempfile.TemporaryDirectory(prefix="digitgen-bench-")
        weights = Path(tmp.name)
        write_random_weights(weights)
    folders = paths.model_folders(weights)
    pipes = {m: DigitPipeline.from_pretrained(folders[m]) for m in args.models}  # the bench's own engine
    server = None if args.url else LocalServer(weights, max_batch=max(LEVELS), max_queue=1024, deadline_s=3600,
                                                default_model="base")
    url = args.url or server.url
    rows = []
    try:
        for m, pipe in pipes.items():
            warm_up(url, m, pipe)
        for clients in LEVELS:
            acc = {m: {"eng": [], "lat": [], "digits": 0, "wall": 0.0} for m in pipes}
            for r in range(args.rounds):  # alternate engine and service, and the models
                for m, pipe in pipes.items():
                    measure_level(url, m, pipe, clients, args, r, acc[m])
            for m, a in acc.items():
                rows.append({
                    "model": m, "clients": clients, "steps": pipes[m].defaults.num_inference_steps,
                    "scheduler": pipes[m].defaults.scheduler,
                    "service_digits_per_s": a["digits"] / a["wall"],
                    "service_p50_s": float(np.percentile(a["lat"], 50)),
                    "service_p95_s": float(np.percentile(a["lat"], 95)),
                    "service_requests": a["digits"],
                    "engine_batch_s": float(np.median(a["eng"])),
                    "engine_batch_p95_s": float(np.percentile(a["eng"], 95)),
                    "engine_digits_per_s": clients / float(np.median(a["eng"])),
                })
                print(f"  measured {m}, {clients} client(s): {rows[-1]['service_digits_per_s']:.2f} digits/s",
                      file=sys.stderr)
    finally:
        if server:
            server.close()
        if tmp:
            tmp.cleanup()
    by = {(r["model"], r["clients"]): r for r in rows}
    ratios = []
    for m in pipes:
        single_s = by[m, 1]["engine_batch_s"]  # median single-digit sampling time, measured alternately with level 1
        ratios += [
            (f"{m}: service@16 / engine batch 16 throughput",
             by[m, 16]["service_digits_per_s"] / by[m, 16]["engine_digits_per_s"], ">=",
             0.9 if m == "onestep" else 0.8),
            (f"{m}: service@16 / service@1 throughput",
             by[m, 16]["service_digits_per_s"] / by[m, 1]["service_digits_per_s"], ">=", 2.0),
            (f"{m}: p95 latency@1 / engine single digit", by[m, 1]["service_p95_s"] / single_s, "<=", 1.3),
        ]
        if m == "onestep":
            ratios.append((f"{m}: p50 latency@1 / engine single digit", by[m, 1]["service_p50_s"] / single_s, "<=", 1.2))
    for m in ("fast", "onestep"):
        if {"base", m} <= pipes.keys():
            ratios += [
                (f"{m} / base: one digit's p50 at 1 client", by[m, 1]["service_p50_s"] / by["base", 1]["service_p50_s"],
                 "<=", 1 / 8),
                (f"{m} / base: digits/s at 16 clients",
                 by[m, 16]["service_digits_per_s"] / by["base", 16]["service_digits_per_s"], ">=", 6.0),
            ]
    return {
        "weights": str(weights) if not args.random_init else "random init of engine/configs/unet_mnist.json",
        "models": {m: {"steps": p.defaults.num_inference_steps, "scheduler": p.defaults.scheduler,
                       "guidance_scale": p.defaults.guidance_scale} for m, p in pipes.items()},
        "rows": rows,
        "engine_single_digit_s": {m: by[m, 1]["engine_batch_s"] for m in pipes},
        "engine_single_digit_p95_s": {m: by[m, 1]["engine_batch_p95_s"] for m in pipes},
        "ratios": [{"metric": m, "value": v, "target": f"{op} {t:.3g}", "meets_target": bool(v >= t if op == ">=" else v <= t)}
                   for m, v, op, t in ratios],
        "settings": {"seconds_per_round": args.seconds, "rounds": args.rounds, "url": args.url},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "load_avg": os.getloadavg(),
                    "DIGITGEN_THREADS": os.environ.get("DIGITGEN_THREADS"),
                    "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
                    "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE")},
    }


def write_random_weights(folder: Path) -> None:
    from engine import UNet2DModel
    from engine.pipeline import SamplingDefaults

    cfg = {k: v for k, v in json.loads(paths.MODEL_CONFIG.read_text()).items()
           if not k.startswith("_")}
    sched = {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon"}
    DigitPipeline(UNet2DModel(**cfg, rng=np.random.default_rng(0)), sched, SamplingDefaults()).save_pretrained(folder)


def print_table(info: dict) -> None:
    models = ", ".join(f"{m}: {d['scheduler']} {d['steps']} steps, guidance {d['guidance_scale']:g}"
                       for m, d in info["models"].items())
    print(f"\nweights: {info['weights']} ({models})")
    for m, s in info["engine_single_digit_s"].items():
        print(f"engine single digit, {m}: {s:.3f} s (p95 {info['engine_single_digit_p95_s'][m]:.3f} s: the noise floor)")
    head = (f"{'model':>7} {'clients':>7} {'service digits/s':>17} {'p50 s':>8} {'p95 s':>8} {'requests':>9} "
            f"{'engine batch digits/s':>22} {'service/engine':>15}")
    print(head)
    print("-" * len(head))
    for r in info["rows"]:
        print(f"{r['model']:>7} {r['clients']:>7} {r['service_digits_per_s']:>17.2f} {r['service_p50_s']:>8.3f} "
              f"{r['service_p95_s']:>8.3f} {r['service_requests']:>9} {r['engine_digits_per_s']:>22.2f} "
              f"{r['service_digits_per_s'] / r['engine_digits_per_s']:>14.2f}x")
    print()
    for r in info["ratios"]:
        print(f"{r['metric']:49} {r['value']:6.3f}x  target {r['target']:<7} "
              f"{'ok' if r['meets_target'] else 'MISS'}")


def main(argv=None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(paths.WEIGHTS), help="weights folder (default: the repo's weights/)")
    p.add_argument("--random-init", action="store_true",
                   help="use randomly initialised weights of the shipped config (same compute, no training needed)")
    p.add_argument("--url", help="benchmark this running server instead of starting one (it must serve --weights)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per service round")
    p.add_argument("--rounds", type=int, default=2, help="engine/service rounds per level")
    p.add_argument("--model", help="the models to measure, side by side, comma-separated: base, fast, onestep "
                                    "(default: every one the weights folder has)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 3 s; writes JSON only with --json")
    p.add_argument("--json", help="where to write the result (default: bench/results/service.json, "
                                  "except for --quick)")
    args = p.parse_args(argv)
    runtime.configure()  # the engine's threads, as the service runs them
    if args.quick:
        args.seconds, args.rounds = 3.0, 1
    if args.json is None and not args.quick:
        args.json = str(ROOT / "bench" / "results" / "service.json")
    if not args.random_init and not Path(args.weights).is_dir():
        print(f"error: weights folder not found: {args.weights} (train first, pass --weights, or use --random-init)",
              file=sys.stderr)
        return 2
    present = ["base"] if args.random_init else list(paths.model_folders(Path(args.weights)))
    args.models = present if args.model is None else [m.strip() for m in args.model.split(",") if m.strip()]
    if not args.models or not set(args.models) <= set(paths.MODEL_FOLDERS):
        print(f"error: --model takes {', '.join(paths.MODEL_FOLDERS)} (comma-separated), not {args.model!r}",
              file=sys.stderr)
        return 2
    missing = [m for m in args.models if m not in present]
    if missing:
        print(f"error: --model {missing[0]} needs {Path(args.weights) / paths.MODEL_FOLDERS[missing[0]]}",
              file=sys.stderr)
        return 2
    info = run(args)
    print_table(info)
    if args.json:
        write_json(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
