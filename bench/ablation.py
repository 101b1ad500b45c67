"""Why the inference forward is organised the way it is: B=64 (and B=32)
forward throughput of the shipped config with the engine's design choices
switched off one at a time, rounds interleaved in one process.

    python bench/ablation.py [--rounds 7]

Variants (each changes only module-level settings of engine/nn/runtime.py and ops.py):
  engine                 as shipped: per-thread shards, cache-sized conv tiles
  no shards              every layer split across the threads in turn
  untiled chunks         inside a shard, one im2col copy + one stacked matmul
                         per conv over the whole chunk (no loop over samples)
  one GEMM per tile      joined samples multiplied as one tall GEMM instead of
                         one GEMM each (not shipped: a sample's bits would
                         depend on its batch)
The last column checks, for three samples, that the batched result is
bit-identical to the sample run alone: what seeded requests rely on.

Prints a table and writes JSON (default bench/results/ablation.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_json  # noqa: E402
from engine import UNet2DModel, paths  # noqa: E402
from engine.models.runner import InferenceRunner  # noqa: E402
from engine.nn import ops, runtime  # noqa: E402

DEFAULT_CONFIG = paths.MODEL_CONFIG


def merged_gemm_conv(xp, w_mat, bias, k, stride, Ho, Wo):
    """conv_forward's tiles, but each joined tile as one tall GEMM."""
    B = xp.shape[0]
    K, O = w_mat.shape
    win = ops.windows(xp, k, stride, Ho, Wo)
    y = np.empty((B, Ho, Wo, O), xp.dtype)
    for b0, b1, h0, h1 in runtime.tiles(B, Ho, Wo, K * xp.itemsize, join=runtime.in_shard()):
        cols = np.ascontiguousarray(win[b0:b1, h0:h1]).reshape(-1, K)
        out = y[b0:b1, h0:h1].reshape(-1, O)
        np.matmul(cols, w_mat, out=out)
        if bias is not None:
            out += bias
    return y


# the engine's settings per variant, (module, name) -> value; anything not named keeps the shipped value
SHIPPED = {(runtime, "SHARD_MIN_BATCH"): runtime.SHARD_MIN_BATCH, (runtime, "TILE_BYTES"): runtime.TILE_BYTES,
           (ops, "conv_forward"): ops.conv_forward}
VARIANTS = {
    "engine": {},
    "no shards": {(runtime, "SHARD_MIN_BATCH"): 1 << 30},
    "untiled chunks": {(runtime, "TILE_BYTES"): 1 << 40},
    "one GEMM per tile": {(ops, "conv_forward"): merged_gemm_conv},
}


def apply(name: str) -> None:
    for (module, key), value in SHIPPED.items():
        setattr(module, key, VARIANTS[name].get((module, key), value))


def main(argv=None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batches", default="32,64")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "ablation.json"))
    args = p.parse_args(argv)
    runtime.configure()  # the engine's threads, as the service runs them
    cfg = {k: v for k, v in json.loads(Path(args.config).read_text()).items() if not k.startswith("_")}
    model = InferenceRunner(UNet2DModel(**cfg, rng=np.random.default_rng(0)).eval().precompute_for_inference())
    rng = np.random.default_rng(0)

    rows = []
    for B in (int(b) for b in args.batches.split(",")):
        x = rng.standard_normal((B, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"]), dtype=np.float32)
        t = rng.integers(0, 1000, B)
        y = rng.integers(0, cfg["num_class_embeds"], B)
        times = {name: [] for name in VARIANTS}
        invariant = {}
        for name in VARIANTS:  # warm-up, and: is each sample's result the same as alone?
            apply(name)
            batched = model(x, t, y)
            invariant[name] = all(np.array_equal(model(x[i:i + 1], t[i:i + 1], y[i:i + 1])[0], batched[i])
                                  for i in (0, B // 2, B - 1))
        for _ in range(args.rounds):
            for name in VARIANTS:
                apply(name)
                time.sleep(0.1)
                t0 = time.perf_counter()
                model(x, t, y)
                times[name].append(time.perf_counter() - t0)
        apply("engine")
        base = float(np.median(times["engine"]))
        for name, ts in times.items():
            med = float(np.median(ts))
            rows.append({"batch": B, "variant": name, "seconds": med, "img_per_s": B / med,
                         "vs_engine": base / med,
                         "batch_invariant": invariant[name]})
        print(f"  measured B={B}", file=sys.stderr)

    head = f"{'B':>3}  {'variant':20} {'img/s':>8} {'vs engine':>10}  a sample's bits as alone"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['batch']:>3}  {r['variant']:20} {r['img_per_s']:8.1f} {r['vs_engine']:9.2f}x  {'yes' if r['batch_invariant'] else 'NO'}")
    print("\nvs engine = engine time / variant time (below 1: the variant is slower)")
    info = {"config": cfg, "rows": rows, "rounds": args.rounds, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "numpy": np.__version__,
                        "threads": runtime.threads()}}
    write_json(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
