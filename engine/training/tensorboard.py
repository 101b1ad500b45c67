"""TensorBoard-readable scalars (`--tensorboard`: OUT/tensorboard/, view with
`tensorboard --logdir OUT/tensorboard`), written by hand so that training
needs neither TensorFlow nor the protobuf package.

An event file is a sequence of TFRecords (length, its masked CRC-32C, the
bytes, their masked CRC-32C), each an `Event` protocol buffer; a scalar
needs four fields of TensorBoard's event.proto and summary.proto:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
"""
from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1   # Castagnoli, reflected
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for byte in data:
        c = _TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's mask, so that a CRC of data holding CRCs stays well mixed."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:   # wire type 2: length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int, *, scalars: dict[str, float] | None = None,
          file_version: str | None = None) -> bytes:
    """One Event message: a file's version line, or scalars at a step."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5)
                                       + struct.pack("<f", float(v))) for tag, v in scalars.items())
        out += _bytes_field(5, values)
    return out


def record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


class EventWriter:
    """Appends scalars to a new event file in `folder` (a resumed run starts
    a second file there; TensorBoard reads them in order)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        stem, n = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}", 0
        while (folder / f"{stem}.{n}").exists():   # a second run in the same second: its own file
            n += 1
        self.path = folder / f"{stem}.{n}"
        self._file = open(self.path, "xb")
        self._file.write(record(event(now, 0, file_version="brain.Event:2")))
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float], wall_time: float | None = None) -> None:
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self._file.write(record(event(time.time() if wall_time is None else wall_time, step, scalars=numbers)))
            self._file.flush()   # TensorBoard reads as it is written

    def close(self) -> None:
        self._file.close()
