"""Model arrays <-> images (Pillow): PNG / GIF bytes out (the trainer's
sample grids, the CLI, the service), a user's PNG in (image-to-image and
inpainting), and the generation parameters a PNG carries.

A PNG read as a digit (`read_digit`):

1. at most MAX_INPUT_BYTES, and a PNG (its signature, before Pillow is
   asked anything);
2. at most MAX_INPUT_SIDE pixels a side and MAX_INPUT_PIXELS in all, read
   from the header before any pixel is decoded (a decompression bomb is
   refused unopened);
3. transparency composited onto black (transparent is background), colour
   to grey (ITU-R 601 luma, Pillow's "L");
4. a light background inverted (when the outer ring of pixels is mostly
   light): MNIST digits are light on black, a pen drawing or a scan is dark
   on white;
5. padded to a square with the background, centred, then resized to 28 x 28
   by area averaging (Pillow's BOX filter: every source pixel counts once; a
   28 x 28 image passes unchanged);
6. grey levels 0..255 mapped to [-1, 1], as the model was trained.

A mask goes through 1-5 without the inversion, then is thresholded at half
grey: 1 (white) where the model draws, 0 (black) where the image is kept.
"""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image, PngImagePlugin

from .data import from_model_range

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_INPUT_BYTES = 4 * 2**20          # a drawing or a scan of one digit; the request body cap is the tighter bound
MAX_INPUT_SIDE = 4096
MAX_INPUT_PIXELS = 4096 * 4096       # 16 M pixels: 64 MB of RGBA at most, decoded once
PARAMETERS_KEY = "parameters"        # the tEXt chunk that carries a PNG's generation parameters


class ImageError(ValueError):
    """The bytes are not an image this service can read; the message says why."""


def read_digit(data: bytes, size: int = 28, mask: bool = False) -> np.ndarray:
    """A user's PNG as (1, size, size) float32: a digit in [-1, 1], or with
    mask=True a {0, 1} mask (1 = draw). Raises ImageError."""
    img = _open_checked(data)
    grey = _on_black(img)
    a = np.asarray(grey, dtype=np.uint8)
    if mask:
        return _mask_of(grey, size)
    if _light_background(a):
        grey = Image.fromarray(255 - a, mode="L")
    out = np.asarray(_square_resized(grey, size), dtype=np.float32)
    return (out / np.float32(127.5) - np.float32(1.0))[None]


def read_alpha_mask(data: bytes, size: int = 28) -> np.ndarray:
    """An OpenAI-style mask, (1, size, size) of {0, 1}: 1 (the model draws)
    where the PNG is transparent (alpha below half), 0 where it is opaque.
    Raises ImageError (also when the PNG has no transparency at all)."""
    img = _open_checked(data)
    if img.mode not in ("RGBA", "LA", "PA") and not (img.mode == "P" and "transparency" in img.info):
        raise ImageError("the mask has no transparency: OpenAI's edits draw where the mask is transparent")
    alpha = img.convert("RGBA").getchannel("A")
    transparent = Image.fromarray(255 - np.asarray(alpha, dtype=np.uint8), mode="L")
    return _mask_of(transparent, size)


def _mask_of(grey: Image.Image, size: int) -> np.ndarray:
    out = np.asarray(_square_resized(grey, size), dtype=np.float32)
    return (out >= 127.5).astype(np.float32)[None]


def _square_resized(grey: Image.Image, size: int) -> Image.Image:
    """Padded to a square with black, centred, area-resized to size x size."""
    side = max(grey.size)
    square = Image.new("L", (side, side), 0)
    square.paste(grey, ((side - grey.width) // 2, (side - grey.height) // 2))
    return square if side == size else square.resize((size, size), Image.Resampling.BOX)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, from its header (checked as read_digit checks it). Raises ImageError."""
    return _open_checked(data, load=False).size


def _open_checked(data: bytes, load: bool = True) -> Image.Image:
    if len(data) > MAX_INPUT_BYTES:
        raise ImageError(f"the image is {len(data):,} bytes; at most {MAX_INPUT_BYTES:,} are taken")
    if not data.startswith(PNG_SIGNATURE):
        raise ImageError("the image is not a PNG (send a PNG: grey or colour, any size up to "
                         f"{MAX_INPUT_SIDE} x {MAX_INPUT_SIDE})")
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageError("the PNG cannot be read (no IHDR chunk first)")
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # before Pillow sees it
    if not (1 <= w <= MAX_INPUT_SIDE and 1 <= h <= MAX_INPUT_SIDE) or w * h > MAX_INPUT_PIXELS:
        raise ImageError(f"the image is {w} x {h} pixels; at most {MAX_INPUT_SIDE} a side are taken")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Exception as e:  # Pillow raises many kinds for a damaged header
        raise ImageError(f"the PNG cannot be read ({type(e).__name__})") from None
    if not load:
        return img
    try:
        img.load()
    except Exception as e:  # truncated or corrupt pixel data
        raise ImageError(f"the PNG's pixels cannot be read ({type(e).__name__})") from None
    return img


def _on_black(img: Image.Image) -> Image.Image:
    """Grey, with any transparency composited onto black."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    return img.convert("L")


def _light_background(a: np.ndarray) -> bool:
    """Whether the outer ring of pixels is mostly light (a dark digit on paper)."""
    if min(a.shape) < 3:
        return False
    ring = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    return float(ring.mean()) > 127.5


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


def png_bytes(img: Image.Image, parameters: dict | None = None) -> bytes:
    """The PNG, with `parameters` (as JSON) in its "parameters" text chunk."""
    buf = io.BytesIO()
    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(PARAMETERS_KEY, json.dumps(parameters, sort_keys=True, separators=(",", ":")))
    img.save(buf, format="PNG", pnginfo=info)  # deterministic: no timestamps in PNG chunks
    return buf.getvalue()


def png_parameters(data: bytes) -> dict | None:
    """The generation parameters a PNG carries, or None when it has none. Raises ImageError."""
    img = _open_checked(data)
    text = getattr(img, "text", {}).get(PARAMETERS_KEY)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise ImageError("the PNG's parameters chunk is not JSON") from None
    if not isinstance(value, dict):
        raise ImageError("the PNG's parameters chunk is not a JSON object")
    return value


def gif_bytes(frames: list[Image.Image], frame_ms: int = 80, hold_last_ms: int = 1200) -> bytes:
    buf = io.BytesIO()
    durations = [frame_ms] * (len(frames) - 1) + [hold_last_ms]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return buf.getvalue()


def labelled_grid(images: list[np.ndarray], cols: int, size: int, col_labels: list[str],
                  row_labels: list[str] | None = None, title: str | None = None, pad: int = 2) -> Image.Image:
    """A grid (row-major) with a value above every column and, when given,
    beside every row, under a title line naming the swept parameters: a
    comparison. Cells grow past `size` where a column's label would not fit."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))

    def width(text: str) -> int:
        return int(probe.textlength(text, font=font))
    size = max(size, max((width(t) for t in col_labels), default=0) + 4)
    body = grid(images, cols, size, pad)
    head = 14 if title else 0
    top = head + 14
    left = max((width(t) for t in row_labels), default=0) + 6 if row_labels else 0
    canvas = Image.new("L", (max(body.width + left, width(title or "") + 4), body.height + top), 0)
    canvas.paste(body, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((2, 1), title, fill=160, font=font)
    cell = size + pad
    for c, text in enumerate(col_labels):
        x = left + pad + c * cell + max(0, (size - width(text)) // 2)
        draw.text((x, head + 1), text, fill=220, font=font)
    for r, text in enumerate(row_labels or []):
        draw.text((2, top + pad + r * cell + max(0, (size - 10) // 2)), text, fill=220, font=font)
    return canvas
