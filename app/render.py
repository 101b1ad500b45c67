"""Samples -> bytes for responses. Pure functions, run in the thread pool
(a 64-image grid at 512 px is a 4k x 4k PNG: never on the event loop)."""
from __future__ import annotations

import base64
import math

import numpy as np

from engine.io.images import gif_bytes, grid, png_bytes, to_image


def png(sample: np.ndarray, size: int) -> bytes:
    return png_bytes(to_image(sample, size))


def grid_png(samples: list[np.ndarray], size: int) -> bytes:
    """Row-major grid, as square as it gets: ceil(sqrt(n)) columns."""
    return png_bytes(grid(samples, cols=math.ceil(math.sqrt(len(samples))), size=size))


def gif(frames: list[np.ndarray], size: int) -> bytes:
    return gif_bytes([to_image(f, size) for f in frames])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def frame_pair(x_t: np.ndarray, x0: np.ndarray, size: int) -> tuple[str, str]:
    return b64(png(x_t, size)), b64(png(x0, size))
