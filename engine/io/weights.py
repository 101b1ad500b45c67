"""Weights and checkpoints as files: JSON configs and safetensors tensors
(plain arrays and string metadata; no pickle anywhere).

A safetensors file is read header first: 8 bytes (little-endian length N),
N bytes of JSON ({name: {dtype, shape, data_offsets}, "__metadata__": {..}}),
then the tensor data. The header is parsed here, bounded, and checked (for
consistency with itself and the file's real size, and against the model's
parameter shapes when there is a model) before a single tensor byte is read;
then exactly the checked bytes are read. A hostile file (a header declaring a
4 GiB tensor in a sparse file, overlapping offsets, a truncated file) is
refused with one line naming the file and the tensor, at the cost of reading
its header."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The shipped UNet's header is 22 kB, a training checkpoint's (four copies of
# the names, and metadata) under 100 kB. Whatever 8 MiB of JSON holds, it
# parses in under ~70 MB, so the header alone cannot exhaust memory.
MAX_HEADER_BYTES = 8 * 1024 * 1024

# The bound on any model this engine builds or loads. The shipped UNet has
# 1.5 M parameters (6 MB); 100 M (400 MB in float32, twice that with the
# gradient buffers every Parameter keeps) is ~65x it: room for any MNIST
# model, while a config or weights file asking for more is refused before
# anything is allocated.
MAX_MODEL_PARAMETERS = 100_000_000

# safetensors dtype -> NumPy dtype (the format is little-endian). BF16 and the
# F8 types have no NumPy dtype and are refused.
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
          "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
# what a model's weights may be stored as (cast to the parameter's dtype on load)
FLOAT_DTYPES = ("F32", "F16", "F64")
NUMPY_MAX_DIMS = 64  # NumPy's limit on an array's dimensions


class WeightsError(RuntimeError):
    """Weights are missing, unreadable or do not match their config."""


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise WeightsError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{what} is not valid JSON: {path}: {e}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{what} must hold a JSON object: {path}")
    return data


# -- the header -----------------------------------------------------------------
@dataclass(frozen=True)
class TensorEntry:
    dtype: str                 # safetensors name, a key of DTYPES
    shape: tuple[int, ...]
    start: int                 # byte offsets in the file (not in the data section)
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    what: str
    tensors: dict[str, TensorEntry]   # in file order
    metadata: dict[str, str]

    def corrupt(self, reason: str) -> WeightsError:
        return _corrupt(self.path, self.what, reason)


def _corrupt(path: Path, what: str, reason: str) -> WeightsError:
    return WeightsError(f"{what} is corrupt or not a safetensors file: {path}: {reason}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _no_duplicates(pairs):
    # json.loads would keep the last of two entries with one name; the file is ambiguous
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"the header names {k!r} twice")
        d[k] = v
    return d


def _parse_entry(name: str, entry, data_start: int, fail) -> TensorEntry:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise fail(f"tensor {name!r}: the header entry must hold exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise fail(f"tensor {name!r} has dtype {dtype!r}, which this loader does not read "
                   f"(it reads {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise fail(f"tensor {name!r} has shape {shape!r}, not a list of non-negative ints")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise fail(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end")
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    if len(shape) > NUMPY_MAX_DIMS or math.prod(d or 1 for d in shape) * itemsize >= 2 ** 63:
        # (NumPy refuses such shapes even when a 0 makes the tensor empty)
        raise fail(f"tensor {name!r} has shape {shape!r}, more than a NumPy array can hold")
    size = math.prod(shape) * itemsize
    if offsets[1] - offsets[0] != size:
        raise fail(f"tensor {name!r}: data_offsets {offsets} span {offsets[1] - offsets[0]:,} bytes, "
                   f"its {dtype} shape {shape} needs {size:,}")
    return TensorEntry(dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def _check_layout(tensors: dict[str, TensorEntry], data_start: int, file_size: int, fail) -> None:
    """The tensors tile the data section exactly, as the format requires: no
    overlap, no hole, and the file ends where the last tensor does."""
    pos = data_start
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if t.start < pos:
            raise fail(f"tensor {name!r} overlaps the tensor before it (data_offsets "
                       f"[{t.start - data_start}, {t.end - data_start}])")
        if t.start > pos:
            raise fail(f"{t.start - pos:,} bytes before tensor {name!r} belong to no tensor")
        pos = t.end
    if pos > file_size:
        raise fail(f"truncated: the header describes {pos - data_start:,} bytes of tensor data, "
                   f"the file holds {file_size - data_start:,}")
    if pos < file_size:
        raise fail(f"{file_size - pos:,} bytes after the last tensor belong to no tensor")


def read_header(path: Path, what: str = "weights file") -> SafetensorsHeader:
    """Parse and check a safetensors header (its length bounded by
    MAX_HEADER_BYTES) against itself and the file's size; reads no tensor."""
    path = Path(path)

    def fail(reason):
        return _corrupt(path, what, reason)

    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise fail(f"{file_size} bytes is too short for a header")
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_BYTES:
                raise fail(f"header length {n:,} bytes is over this loader's limit of {MAX_HEADER_BYTES:,}")
            if 8 + n > file_size:
                raise fail(f"truncated: header length {n:,} bytes, the file has {file_size - 8:,} after it")
            raw = f.read(n)
    except FileNotFoundError:
        raise WeightsError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise WeightsError(f"{what} not found: {path} is a folder") from None
    except OSError as e:
        raise WeightsError(f"{what} cannot be read: {path}: {e}") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise fail(f"the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise fail("the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise fail("__metadata__ must map names to strings")
    data_start = 8 + n
    tensors = {name: _parse_entry(name, entry, data_start, fail) for name, entry in header.items()}
    _check_layout(tensors, data_start, file_size, fail)
    tensors = dict(sorted(tensors.items(), key=lambda kv: kv[1].start))
    return SafetensorsHeader(path, what, tensors, metadata)


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def match_header(header: SafetensorsHeader, expected: dict[str, tuple], what: str = "weights",
                 dtypes=FLOAT_DTYPES) -> None:
    """Raise WeightsError (one line, naming the tensor) unless the header holds
    exactly the `expected` names, each with its shape and one of `dtypes`."""
    def fail(reason):
        return WeightsError(f"{what} {header.path} do not match their config: {reason}")

    def more(names):
        return f" (and {len(names) - 1} more)" if len(names) > 1 else ""

    unexpected = [k for k in header.tensors if k not in expected]
    if unexpected:
        raise fail(f"unexpected tensor {unexpected[0]!r} (the config's model has no such parameter)"
                   + more(unexpected))
    missing = [k for k in expected if k not in header.tensors]
    if missing:
        raise fail(f"tensor {missing[0]!r} is missing" + more(missing))
    for name, shape in expected.items():
        t = header.tensors[name]
        if t.dtype not in dtypes:
            raise fail(f"tensor {name!r} is {t.dtype}, not {' or '.join(dtypes)}")
        if t.shape != tuple(shape):
            raise fail(f"tensor {name!r} has shape {_shape(t.shape)}, the config says {_shape(shape)}")


def check_weights(path: Path, expected: dict[str, tuple], what: str = "weights") -> SafetensorsHeader:
    """The header of a model's weights file, checked against the model's
    parameter shapes (computed from its config: nothing is built yet)."""
    header = read_header(path, f"{what} file")
    match_header(header, expected, what)
    return header


# -- the tensors -------------------------------------------------------------
def _read_into(f, header: SafetensorsHeader, name: str, out: np.ndarray) -> np.ndarray:
    """Read tensor `name` into `out` (C-contiguous, of its dtype and shape):
    exactly its checked bytes, in chunks the OS accepts."""
    t = header.tensors[name]
    view = memoryview(out.reshape(-1).view(np.uint8))
    f.seek(t.start)
    done = 0
    while done < len(view):
        got = f.readinto(view[done:done + (1 << 30)])
        if not got:
            raise header.corrupt(f"tensor {name!r}: the file ended while reading it (changed on disk?)")
        done += got
    return out


def _read_tensor(f, header: SafetensorsHeader, name: str) -> np.ndarray:
    t = header.tensors[name]
    return _read_into(f, header, name, np.empty(t.shape, DTYPES[t.dtype]))


def _open(header: SafetensorsHeader):
    try:
        return open(header.path, "rb", buffering=0)
    except OSError as e:
        raise WeightsError(f"{header.what} cannot be read: {header.path}: {e}") from None


def load_safetensors(path: Path, what: str = "weights file",
                     expected: dict[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, its header checked first (and
    against `expected` names and shapes, any dtype, when given). For files
    without a model config to check against (training checkpoints): the
    read is bounded by the file's real size."""
    header = read_header(path, what)
    if expected is not None:
        match_header(header, expected, what, dtypes=tuple(DTYPES))
    with _open(header) as f:
        try:
            return {name: _read_tensor(f, header, name) for name in header.tensors}
        except OSError as e:
            raise WeightsError(f"{what} cannot be read: {path}: {e}") from None


def load_weights_into(model, path: Path, what: str = "weights", header: SafetensorsHeader | None = None):
    """Load a safetensors file into `model`: its header must name exactly the
    model's parameters with their shapes and a float dtype, and every value
    must be finite. `header` is the one check_weights returned (before the
    model was built); without it the header is read and checked here.

    Tensors are read straight into the parameters (float32 files) or through
    one tensor-sized buffer, so loading needs no second copy of the model.
    Raises WeightsError; the model's weights are then undefined."""
    params = dict(model.named_parameters())
    expected = {k: p.shape for k, p in params.items()}
    if header is None:
        header = check_weights(path, expected, what)
    else:
        match_header(header, expected, what)
    with _open(header) as f:
        try:
            for name, t in header.tensors.items():
                p = params[name]
                same = np.dtype(DTYPES[t.dtype]) == p.data.dtype and p.data.flags.c_contiguous
                values = _read_into(f, header, name, p.data) if same else _read_tensor(f, header, name)
                if not np.isfinite(values).all():
                    raise WeightsError(f"{what} file {header.path}: tensor {name!r} holds NaN or inf")
                if not same:
                    p.data[...] = values
        except OSError as e:
            raise WeightsError(f"{what} file cannot be read: {header.path}: {e}") from None
    model._refresh_precomputed()  # what load_state_dict does after copying (weights written in place)
    return model


def save_safetensors(arrays: dict[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Atomic write (temp file + rename) so an interrupted save never leaves a
    truncated file behind."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # safetensors creates 0600 files; weights are meant to be shared
    tmp.replace(path)
