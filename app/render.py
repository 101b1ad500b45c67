"""Samples -> bytes for responses: pure functions, and `off_loop`, which
decides where they run (a 64-image grid at 512 px is a 4k x 4k PNG: never
on the event loop; a 28 px digit is cheaper to encode than to hand over)."""
from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

from engine.io.images import gif_bytes, grid, png_bytes, to_image

from . import memory

T = TypeVar("T")

# Work below this many pixels (two 112 px frames, ~0.5 ms to encode) runs on
# the event loop: the hop to the thread pool and back costs more, up to the
# interpreter's switch interval (5 ms) while the engine thread holds the GIL.
INLINE_PIXELS = 2 * 112 * 112
# After an encode of more than this many pixels (frames x width x height: a
# 64-image grid at 512 px, a 50-frame GIF at 256 px) freed memory goes back
# to the system (app/memory.py); below it the heap keeps it for the next one.
RELEASE_PIXELS = 4 * 2**20


async def off_loop(pixels: int, fn: Callable[..., T], *args) -> T:
    """fn(*args), in the thread pool unless it touches at most INLINE_PIXELS pixels."""
    if pixels <= INLINE_PIXELS:
        return fn(*args)
    out = await run_in_threadpool(fn, *args)
    if pixels > RELEASE_PIXELS:
        await run_in_threadpool(memory.release)
    return out


def png(sample: np.ndarray, size: int, parameters: dict | None = None) -> bytes:
    """The PNG, carrying `parameters` (engine.generation.parameters) when given."""
    return png_bytes(to_image(sample, size), parameters)


def grid_png(samples: list[np.ndarray], size: int, parameters: dict | None = None) -> bytes:
    """Row-major grid, as square as it gets: ceil(sqrt(n)) columns."""
    return png_bytes(grid(samples, cols=math.ceil(math.sqrt(len(samples))), size=size), parameters)


def gif(frames: list[np.ndarray], size: int) -> bytes:
    return gif_bytes([to_image(f, size) for f in frames])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def frame_pair(x_t: np.ndarray, x0: np.ndarray, size: int) -> tuple[str, str]:
    return b64(png(x_t, size)), b64(png(x0, size))
