"""Giving freed memory back to the system.

glibc's malloc keeps what a heavy request freed (a 64-image grid, a large
GIF's frames) in its heap and per-thread arenas, so the process's resident
size stays at its peak after the work is done. `release()` asks it to
return the free pages (malloc_trim), where the C library has it; elsewhere
it does nothing. The worker calls it when it goes idle, the renderer after a
large encode: a few milliseconds, off the event loop.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None


def release() -> bool:
    """Return freed heap pages to the system; True if the C library could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def rss_bytes() -> int | None:
    """This process's resident set size, where /proc tells it (Linux)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")
