"""Keep BLAS single-threaded: the engine runs its own threads over
cache-sized tiles (engine/nn/runtime.py), and OpenBLAS's pool, nested
inside them, slows the tall and narrow GEMMs of small convolutions down
(measured: B=64 forward 1.4-1.7 s with OpenBLAS threads vs 0.95 s without).

NumPy wheels bundle OpenBLAS under a prefixed name; we look up its
set-num-threads entry point with ctypes. With another BLAS nothing is
changed."""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

_SYMBOLS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
            "openblas_set_num_threads")


def _candidates():
    libs = os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs")
    yield from sorted(glob.glob(os.path.join(libs, "libscipy_openblas*.so*")))
    yield from sorted(glob.glob(os.path.join(libs, "libopenblas*.so*")))
    yield None  # symbols already loaded into the process


def _entry(suffix: str):
    """OpenBLAS's `..._{suffix}` function (set_num_threads, get_num_threads), or None."""
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SYMBOLS:
            fn = getattr(lib, name.replace("set_num_threads", suffix), None)
            if fn is not None:
                return fn
    return None


def set_blas_threads(n: int) -> bool:
    """Set OpenBLAS's thread count; False if no OpenBLAS entry point was found."""
    fn = _entry("set_num_threads")
    if fn is None:
        return False
    fn(ctypes.c_int(n))
    return True


def blas_threads() -> int | None:
    """OpenBLAS's thread count now (None: not OpenBLAS)."""
    fn = _entry("get_num_threads")
    if fn is None:
        return None
    fn.restype = ctypes.c_int
    return int(fn())


def blas_fingerprint() -> str:
    """Which BLAS kernels this process runs, e.g. "OpenBLAS 0.3.31 ...
    SkylakeX ... numpy 2.4.6". Seeded outputs are bit-identical on one
    machine whatever the batch, but another CPU (another kernel set) may
    round a GEMM differently: tests that compare recorded bytes say on
    which fingerprint they were recorded."""
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_get_config64_", "scipy_openblas_get_config", "openblas_get_config64_",
                     "openblas_get_config"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return f"{fn().decode()} numpy {np.__version__}"
    return f"unknown BLAS, numpy {np.__version__}"
