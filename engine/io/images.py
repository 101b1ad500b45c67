"""Model arrays -> PNG / GIF bytes (Pillow). Used by the trainer's sample
grids, the CLI and the service."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .data import from_model_range


def to_image(x: np.ndarray, size: int | None = None) -> Image.Image:
    """(C, H, W) or (H, W) float in [-1, 1] -> grayscale PIL image, optionally
    upscaled (nearest: keeps the pixels crisp) to size x size."""
    a = from_model_range(np.asarray(x))
    if a.ndim == 3:
        a = a[0]
    img = Image.fromarray(a, mode="L")
    if size and size != img.width:
        img = img.resize((size, size * img.height // img.width), Image.NEAREST)
    return img


def grid(images: list[np.ndarray], cols: int, size: int | None = None, pad: int = 2) -> Image.Image:
    """Tile (C, H, W) arrays row-major into one image with a dark gutter."""
    tiles = [to_image(x, size) for x in images]
    w, h = tiles[0].size
    rows = -(-len(tiles) // cols)
    canvas = Image.new("L", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), 32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas.paste(t, (pad + c * (w + pad), pad + r * (h + pad)))
    return canvas


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # deterministic: no timestamps in PNG chunks
    return buf.getvalue()


def gif_bytes(frames: list[Image.Image], frame_ms: int = 80, hold_last_ms: int = 1200) -> bytes:
    buf = io.BytesIO()
    durations = [frame_ms] * (len(frames) - 1) + [hold_last_ms]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return buf.getvalue()
