"""MNIST loading: an .npz with x_train/y_train (x_test/y_test), or the four
standard IDX files (gzipped or not). No pickle: np.load(allow_pickle=False)
and a 20-line IDX parser. Bad data fails at once with a message saying what
is wrong."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NUM_CLASSES = 10


class DataError(ValueError):
    pass


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (magic 0x00 0x00 <type> <ndim>, big-endian sizes)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"IDX file {stem}[.gz] not found in {folder}")


def validate(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{where}: images must have shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{where}: labels must have shape ({len(images)},), got {labels.shape}")
    if len(images) == 0:
        raise DataError(f"{where}: no images")
    if images.dtype != np.uint8:
        if images.dtype.kind not in "iuf" or images.min() < 0 or images.max() > 255:
            raise DataError(f"{where}: images must be uint8 0-255 (got {images.dtype}, "
                            f"range {images.min()}..{images.max()})")
        images = images.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got {labels.dtype}")
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: labels must be in 0..{NUM_CLASSES - 1}; label[{i}] = {labels[i]} "
                        f"({int(bad.sum())} out of range)")
    return images, labels.astype(np.int64)


def load_mnist(path: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """-> (images uint8 (N, 28, 28), labels int64 (N,)) for split 'train' or 'test'.

    `path` is an .npz file, a folder holding the IDX files, or one of the IDX
    image files (its label file is looked up beside it)."""
    if split not in IDX_NAMES:
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"data not found: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                kx, ky = f"x_{split}", f"y_{split}"
                if kx not in z or ky not in z:
                    raise DataError(f"{path} has no {kx}/{ky} arrays (it has: {sorted(z.files)})")
                images, labels = z[kx], z[ky]
        except DataError:
            raise
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{path} is not a readable .npz of plain arrays: {e}") from None
        return validate(images, labels, f"{path} [{split}]")
    folder = path if path.is_dir() else path.parent
    img_stem, lbl_stem = IDX_NAMES[split]
    images = read_idx(_find_idx(folder, img_stem))
    labels = read_idx(_find_idx(folder, lbl_stem))
    return validate(images, labels, f"{folder} [{split}]")


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [-1, 1]."""
    return (images.astype(np.float32) / 127.5 - 1.0)[:, None]


def from_model_range(x: np.ndarray) -> np.ndarray:
    """float (..., H, W) in [-1, 1] -> uint8 0-255, clipped."""
    return np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
