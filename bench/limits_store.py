"""The shared limits (app/limits_store.py, our RESP client and one Lua script)
beside the `limits` library on the same redis-server, for one request's
decision as the gate makes it: a token bucket (DIGITGEN_RATE_LIMIT with
DIGITGEN_RATE_BURST) and a daily quota (DIGITGEN_KEY_QUOTA), both or neither
taken. Dev-only comparison (like PyTorch's in bench/engine.py): `limits` is
never a dependency.

    pip install "limits[async-redis]"     # into a scratch venv or --target dir
    python bench/limits_store.py [--rounds 7] [--burst 50] [--json bench/results/limits_store.json]

`limits` has no token bucket: its closest, the sliding window counter (rate x
60 a minute) for the rate, and a fixed window (a day) for the quota. Its
hit() takes one limit at a time, so "both or neither" is test() both, then
hit() both: four round trips, and two replicas can both pass test() and
both hit() past the limit; hit() both without test() (measured too) takes
from the rate when the quota refuses. Measured: each decision's latency (median, p99) one
at a time, and a burst of --burst decisions at once on one event loop (all
distinct clients, as a burst from many users). Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.config import RedisAddress  # noqa: E402
from app.gate import TokenBuckets, Windows  # noqa: E402
from app.limits_store import KEY_PREFIX, SharedLimits  # noqa: E402
from bench.server import free_port  # noqa: E402


def start_redis(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            import socket
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def ours(port: int):
    store = SharedLimits(RedisAddress("127.0.0.1", port, 0, "", ""), timeout_s=1.0)
    store.start()
    rate, quota = TokenBuckets(5.0, 20), Windows(20000)

    async def decide(client: str) -> bool:
        checks = [(rate, client, 1), (quota, client, 1)]
        keys = [KEY_PREFIX + f"{lim.name}:{who}" for lim, who, _ in checks]
        taken = await store.apply(checks, keys)
        assert taken is not None, "the store did not answer"
        return taken[0] == -1
    await decide("warm")
    return decide, store.close


async def theirs(port: int, all_or_nothing: bool = True):
    from limits import RateLimitItemPerDay, RateLimitItemPerMinute
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter

    storage = RedisStorage(f"async+redis://127.0.0.1:{port}")
    rate, quota = SlidingWindowCounterRateLimiter(storage), FixedWindowRateLimiter(storage)
    per_minute, per_day = RateLimitItemPerMinute(5 * 60), RateLimitItemPerDay(20000)

    async def decide(client: str) -> bool:
        if all_or_nothing and not (await rate.test(per_minute, client) and await quota.test(per_day, client)):
            return False
        return await rate.hit(per_minute, client) and await quota.hit(per_day, client)
    await decide("warm")
    return decide, lambda: None


async def measure(make, port: int, rounds: int, burst: int) -> dict:
    decide, close = await make(port)
    alone, bursts = [], []
    for r in range(rounds):
        for i in range(200):
            t = time.perf_counter()
            await decide(f"alone-{r}-{i}")
            alone.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        done = []

        async def one(i):
            await decide(f"burst-{r}-{i}")
            done.append((time.perf_counter() - t) * 1e3)
        await asyncio.gather(*(one(i) for i in range(burst)))
        bursts.append(max(done))
    close()
    return {"alone_median_ms": statistics.median(alone), "alone_p99_ms": percentile(alone, 0.99),
            "burst_last_median_ms": statistics.median(bursts), "burst_last_worst_ms": max(bursts)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--burst", type=int, default=50)
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "limits_store.json")
    args = p.parse_args()
    if shutil.which("redis-server") is None:
        print("error: needs redis-server (apt-get install redis-server)", file=sys.stderr)
        return 2
    try:
        import limits
    except ImportError:
        print('error: needs the `limits` library for the comparison: pip install "limits[async-redis]"',
              file=sys.stderr)
        return 2
    results = {}
    with tempfile.TemporaryDirectory() as d:
        proc, port = start_redis(Path(d))
        try:
            for name, make in (("digitgen (RESP + one Lua script)", ours),
                               (f"limits {limits.__version__} (test + hit, 4 calls)", theirs),
                               (f"limits {limits.__version__} (hit only, 2 calls)",
                                lambda port: theirs(port, all_or_nothing=False))):
                results[name] = asyncio.run(measure(make, port, args.rounds, args.burst))
        finally:
            proc.kill()
            proc.wait()
    print(f"{'one decision (rate + quota)':44s} {'alone p50':>10s} {'alone p99':>10s} "
          f"{'burst of ' + str(args.burst) + ': last done':>22s}")
    for name, r in results.items():
        print(f"{name:44s} {r['alone_median_ms']:8.3f} ms {r['alone_p99_ms']:8.3f} ms "
              f"{r['burst_last_median_ms']:9.2f} ms (worst {r['burst_last_worst_ms']:.2f})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rounds": args.rounds, "burst": args.burst, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
