"""How the engine's kernels run: scratch buffers, threads, tiles and shards.

The operators (engine/nn/ops.py) say what to compute on one tile or one
slice of the batch; this module decides how the work is cut and who runs it.
Nothing here starts at import: until `configure()` is called the engine runs
every kernel on the calling thread and leaves BLAS as it found it. Whoever
runs the engine (the service at start-up, the CLI, the trainers, the
benches) calls `configure(threads)` once.

Why the engine runs its own threads: NumPy's element-wise loops and copies
run on one core but release the GIL, and OpenBLAS is poor at the tall,
narrow GEMMs of small convolutions (and slower still with its own pool
nested inside ours: B=64 forward 1.4-1.7 s with OpenBLAS threads vs 0.95 s
without). So `configure` makes BLAS single-threaded and the engine splits
the batch into halves for element-wise kernels and convolutions into
cache-sized tiles itself.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .blas import set_blas_threads
from .module import grad_enabled

MAX_THREADS = 8


class _Runtime:
    threads = 1
    pool: ThreadPoolExecutor | None = None
    configured = False   # configure() has run (until then BLAS is left as found)


_rt = _Runtime()
_local = threading.local()


def cpus_available(cgroup: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use: the ones it may run on, and no more than
    its cgroup's CPU quota (`docker run --cpus 2`, a Kubernetes CPU limit),
    which os.cpu_count() ignores: on a 16-core host it said 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    for path, read in ((f"{cgroup}/cpu.max", _quota_v2), (f"{cgroup}/cpu/cpu.cfs_quota_us", _quota_v1)):
        try:
            quota = read(path)
        except (OSError, ValueError):
            continue
        if quota is not None:
            return max(1, min(n, math.ceil(quota)))
    return max(1, n)


def _quota_v2(path: str) -> float | None:
    limit, period = open(path).read().split()[:2]   # "max 100000" when unlimited
    return None if limit == "max" else int(limit) / int(period)


def _quota_v1(path: str) -> float | None:
    limit = int(open(path).read())
    period = int(open(path.replace("cfs_quota_us", "cfs_period_us")).read())
    return None if limit <= 0 else limit / period


def default_threads() -> int:
    """DIGITGEN_THREADS, else the CPUs available (cpus_available), at most MAX_THREADS."""
    return max(1, min(MAX_THREADS, int(os.environ.get("DIGITGEN_THREADS", 0) or cpus_available())))


def configure(threads: int | None = None) -> int:
    """Run the engine on `threads` threads (None: default_threads()), and
    BLAS single-threaded. Returns the thread count."""
    n = default_threads() if threads is None else max(1, min(MAX_THREADS, int(threads)))
    if _rt.configured and n == _rt.threads and (n == 1 or _rt.pool is not None):
        return n
    _rt.configured = True
    old, _rt.pool = _rt.pool, (ThreadPoolExecutor(n - 1, thread_name_prefix="digitgen") if n > 1 else None)
    _rt.threads = n
    # at one engine thread too: OpenBLAS would otherwise start a thread per core it
    # sees (the host's, not a container's share), and replicas side by side, each
    # told to use one core, spun each other's threads down (measured: 2 replicas
    # behind HAProxy 11 digits/s where 1 alone made 46)
    set_blas_threads(1)
    if old is not None:
        old.shutdown(wait=True)
    return n


def threads() -> int:
    return _rt.threads


# ---------------------------------------------------------------------------
# Scratch buffers: grow-only, per thread and role, so hot loops do not pay for
# fresh allocations (and their page faults) on every call.
# ---------------------------------------------------------------------------
_scratch_sizes: dict[tuple, int] = {}  # (thread, role, dtype) -> bytes held, for scratch_bytes()


def scratch_bytes() -> int:
    """Bytes the scratch buffers of every thread hold: they grow to the
    largest batch run and stay, to be reused (the service shows it in /metrics)."""
    return sum(_scratch_sizes.values())


def scratch(role: str, shape: tuple[int, ...], dtype, fresh: bool = False) -> np.ndarray:
    """A reusable buffer of this shape. `fresh=True` asks for a new array
    instead when gradients are on: the caller caches it for backward."""
    if fresh and grad_enabled():
        return np.empty(shape, dtype)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    size = math.prod(shape)
    key = (role, np.dtype(dtype))
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(size, dtype)
        _scratch_sizes[(threading.get_ident(), *key)] = buf.nbytes
    return buf[:size].reshape(shape)


# ---------------------------------------------------------------------------
# Running work on the threads
# ---------------------------------------------------------------------------
SPLIT_MIN_ELEMENTS = 1 << 17     # below this an element-wise kernel runs on one thread
PARALLEL_MIN_WORK = 1 << 20      # im2col elements; below this a thread hand-off costs more than it saves


def in_shard() -> bool:
    """True on a thread that carries a shard (see run_sharded): it runs every
    kernel itself."""
    return getattr(_local, "serial", False)


def run_parallel(fn, parts: list) -> list:
    """fn(part) for every part, the last one on the calling thread (all on
    it inside a shard)."""
    if _rt.pool is None or len(parts) < 2 or in_shard():
        return [fn(p) for p in parts]
    futures = [_rt.pool.submit(fn, p) for p in parts[:-1]]
    last = fn(parts[-1])
    return [f.result() for f in futures] + [last]


def split_batch(fn, batch: int, elements: int) -> None:
    """Call fn(slice) over contiguous parts of the batch, in parallel when the
    work is large enough. fn must write only into its own slice."""
    n = min(_rt.threads, batch) if elements >= SPLIT_MIN_ELEMENTS and not in_shard() else 1
    if n <= 1:
        fn(slice(0, batch))
        return
    bounds = np.linspace(0, batch, n + 1).astype(int)
    run_parallel(fn, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])])


# ---------------------------------------------------------------------------
# Tiles: how a convolution's output is cut. A tile's im2col block is about
# TILE_BYTES, so each copy is still in cache when its GEMM reads it.
# ---------------------------------------------------------------------------
TILE_BYTES = 1 << 20  # an im2col block this size stays in a core's L2


def tiles(B: int, Ho: int, Wo: int, row_bytes: int, join: bool = False) -> list[tuple[int, int, int, int]]:
    """Split a (B, Ho, Wo) output into (b0, b1, h0, h1) tiles of about
    TILE_BYTES of im2col (Ho*Wo rows of `row_bytes` per sample): a sample
    too big for one is cut into bands of rows; with `join` (one thread runs
    every tile, as inside a shard) samples small enough are joined, so that a
    tile is one copy and one stacked matmul for several samples instead of a
    Python iteration each.

    A tile runs one GEMM per sample (np.matmul over the stack calls BLAS per
    matrix), and the bands depend on the layer's shape only: OpenBLAS rounds
    a GEMM row differently depending on the matrix's height, so a GEMM over
    several samples, or a batch-dependent band, would make a seeded image
    differ by a few ulps between running alone and running in a crowd."""
    sample_bytes = Ho * Wo * row_bytes
    bands = min(Ho, max(1, -(-sample_bytes // TILE_BYTES)))
    edges = [round(i * Ho / bands) for i in range(bands + 1)]
    per = max(1, TILE_BYTES // max(1, sample_bytes)) if join else 1  # samples a tile
    return [(b, min(b + per, B), h0, h1) for b in range(0, B, per) for h0, h1 in zip(edges[:-1], edges[1:])]


def _round_robin(items: list, work: int) -> list[list]:
    """Deal tiles out to the threads (all to the caller for small work). Only
    who computes a tile changes, never the tiles, so results do not."""
    n = min(_rt.threads, len(items)) if work >= PARALLEL_MIN_WORK else 1
    return [items[i::n] for i in range(n)]


def for_each_tile(fn, B: int, Ho: int, Wo: int, K: int, itemsize: int) -> None:
    """fn(b0, b1, h0, h1) for every tile of a (B, Ho, Wo) output whose
    im2col rows are K elements, dealt out to the threads. Inside a shard
    small samples are joined (see tiles)."""
    def work(my_tiles):
        for t in my_tiles:
            fn(*t)

    run_parallel(work, _round_robin(tiles(B, Ho, Wo, K * itemsize, join=in_shard()), B * Ho * Wo * K))


def sum_over_tiles(fn, init, B: int, Ho: int, Wo: int, K: int, itemsize: int):
    """Sum of per-tile accumulations fn(acc, b0, b1, h0, h1): each thread adds
    its tiles into its own init() array, then the threads' arrays are summed."""
    def work(my_tiles):
        acc = init()
        for t in my_tiles:
            fn(acc, *t)
        return acc

    return sum(run_parallel(work, _round_robin(tiles(B, Ho, Wo, K * itemsize), B * Ho * Wo * K)))


# ---------------------------------------------------------------------------
# Shards: large inference batches go the other way. Each thread takes a
# contiguous shard of the batch through the whole network, in chunks, and
# runs every kernel inside it itself: one hand-off per forward instead of
# several per layer, each thread's activations stay in its own cache, and
# small samples join into larger conv tiles. Measured here in paired runs at
# B=32 and 64: 1.1-1.35x the layer-by-layer split's throughput from the
# shards, another 1.1x from joined tiles. Every kernel computes a sample the
# same way whoever runs it, so a sample's output bits do not change.
# ---------------------------------------------------------------------------
SHARD_MIN_BATCH = 4   # below this the per-layer split keeps both cores busier
SHARD_CHUNK = 16      # samples a thread carries through the network at once


def use_shards(batch: int) -> bool:
    return batch >= SHARD_MIN_BATCH and not in_shard()


def run_sharded(fn, batch: int) -> list:
    """fn(slice) over chunks of at most SHARD_CHUNK samples, in one
    contiguous shard per thread, run side by side; kernels inside run
    serially. Returns the results in batch order."""
    edges = np.linspace(0, batch, min(_rt.threads, batch) + 1).astype(int)

    def shard(bounds):
        lo, hi = bounds
        cuts = np.linspace(lo, hi, -(-(hi - lo) // SHARD_CHUNK) + 1).astype(int)
        previous, _local.serial = in_shard(), True
        try:
            return [fn(slice(a, b)) for a, b in zip(cuts[:-1], cuts[1:])]
        finally:
            _local.serial = previous

    parts = run_parallel(shard, list(zip(edges[:-1], edges[1:])))
    return [r for part in parts for r in part]
