"""Engine benchmark: forward latency (B=1, 2, 8), forward throughput (B=64)
and training-step throughput (forward + MSE + backward + AdamW, B=64) of the
UNet, for the shipped config. When torch and diffusers are importable, the
same model (same weights) runs in diffusers in the same process, measurement
rounds interleaved with ours, and the table shows the ratios against the
targets.

    python bench/engine.py                       # NumPy engine only
    /path/to/refvenv/bin/python bench/engine.py  # with torch + diffusers side by side

Prints a table and writes JSON: bench/results/engine.local.json (not tracked), or
`--json bench/results/engine.json` to record a result in the repository.
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
from engine.nn import runtime  # noqa: E402
from engine.training.optim import AdamW  # noqa: E402

DEFAULT_CONFIG = paths.MODEL_CONFIG

# (metric, kind, batch, target ratio ours/diffusers in "higher is better" terms)
METRICS = [
    ("forward latency B=1", "fwd", 1, 1.0),
    ("forward latency B=2", "fwd", 2, None),
    ("forward latency B=8", "fwd", 8, None),
    ("forward throughput B=64", "fwd", 64, 0.8),
    ("training throughput B=64", "train", 64, 0.6),
]


def ours_runner(cfg: dict, kind: str, B: int, state: dict):
    model = UNet2DModel(**cfg)
    model.load_state_dict(state)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"]), dtype=np.float32)
    t = rng.integers(0, 1000, B)
    y = rng.integers(0, cfg.get("num_class_embeds") or 1, B) if cfg.get("num_class_embeds") else None
    if kind == "fwd":
        # as DigitPipeline runs it: derived weights computed once, large batches in shards
        run_unet = InferenceRunner(model.eval().precompute_for_inference())
        return lambda: run_unet(x, t, y)
    model.train()
    opt = AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad()
        out = model(x, t, y)
        diff = out - x
        model.backward(diff * np.float32(2.0 / diff.size))
        opt.step()
    return step


def diffusers_runner(cfg: dict, kind: str, B: int):
    import torch
    from diffusers import UNet2DModel as DiffusersUNet

    torch.manual_seed(0)
    model = DiffusersUNet(**cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"], generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = torch.randint(0, cfg["num_class_embeds"], (B,), generator=g) if cfg.get("num_class_embeds") else None
    if kind == "fwd":
        model.eval()

        def run():
            with torch.no_grad():
                model(x, t, y)
        return run, model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad()
        out = model(x, t, y).sample
        torch.nn.functional.mse_loss(out, x).backward()
        opt.step()
    return step, model


# Both libraries' worker threads spin for a while after a parallel region;
# pause between sides so neither runs against the other's spinning threads.
SETTLE_S = 0.3


def interleaved_medians(fns: dict, rounds: int, inner: int) -> dict:
    """Warm each up, then alternate: A x inner, B x inner, A, B ... so slow
    drifts of a shared machine hit both sides alike. Returns median seconds."""
    for f in fns.values():
        f()
        f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            time.sleep(SETTLE_S)
            for _ in range(inner):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def have_reference() -> bool:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="UNet config JSON")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="where to write the result (default: bench/results/engine.local.json, not tracked; "
                                  "a --quick run writes only where told)")
    p.add_argument("--no-reference", action="store_true", help="skip diffusers even if installed")
    p.add_argument("--quick", action="store_true", help="fewer rounds (smoke run); writes JSON only with --json")
    args = p.parse_args(argv)
    runtime.configure()  # the engine's threads, as the service runs them
    cfg = {k: v for k, v in json.loads(Path(args.config).read_text()).items() if not k.startswith("_")}
    rounds = 2 if args.quick else args.rounds
    ref = have_reference() and not args.no_reference
    if ref:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)

    rows = []
    for name, kind, B, target in METRICS:
        inner = 1 if (B >= 64 or kind == "train") else 5
        fns = {}
        if ref:
            fns["diffusers"], tmodel = diffusers_runner(cfg, kind, B)
            state = {k: v.detach().numpy().copy() for k, v in tmodel.state_dict().items()}
        else:
            state = UNet2DModel(**cfg).state_dict()
        fns["numpy"] = ours_runner(cfg, kind, B, state)
        med = interleaved_medians(fns, rounds, inner)
        row = {"metric": name, "batch": B, "numpy_s": med["numpy"]}
        if kind == "fwd" and B < 64:
            row["numpy"] = f"{med['numpy'] * 1e3:.1f} ms"
        else:
            row["numpy"] = f"{B / med['numpy']:.1f} img/s"
        if ref:
            row["diffusers_s"] = med["diffusers"]
            row["diffusers"] = (f"{med['diffusers'] * 1e3:.1f} ms" if kind == "fwd" and B < 64
                                else f"{B / med['diffusers']:.1f} img/s")
            row["ratio"] = med["diffusers"] / med["numpy"]  # >1: numpy faster
            row["target"] = target
            row["meets_target"] = None if target is None else bool(row["ratio"] >= target)
        rows.append(row)
        print(f"  measured {name}", file=sys.stderr)

    print()
    head = f"{'metric':28} {'numpy':>12} {'diffusers':>12} {'speed ratio':>12} {'target':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        tgt = f">={r['target']}x" if r.get("target") else ""
        mark = {True: " ok", False: " MISS", None: ""}[r.get("meets_target")]
        print(f"{r['metric']:28} {r['numpy']:>12} {r.get('diffusers', '-'):>12} {ratio:>12} {tgt:>8}{mark}")
    print("\nspeed ratio = diffusers time / numpy time (above 1: the NumPy engine is faster)")

    info = {
        "config": cfg, "rows": rows, "rounds": rounds, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__,
                    "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                           "OPENBLAS_NUM_THREADS", "DIGITGEN_THREADS")}},
    }
    if ref:
        import diffusers
        import torch

        info["machine"].update(torch=torch.__version__, diffusers=diffusers.__version__,
                               torch_threads=torch.get_num_threads())
    if args.json or not args.quick:  # a user's run never rewrites the tracked result unless told to
        write_json(args.json or str(ROOT / "bench" / "results" / "engine.local.json"), info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
