"""`--tensorboard`: the scalars of log.jsonl in a TensorBoard event file,
read back here by a decoder written from the formats' specifications
(protocol buffers' wire format, TFRecord framing with CRC-32C), not from
the writer: every record's checksums hold, the first is the version line
TensorBoard looks for, and each logged step's scalars are there."""
from __future__ import annotations

import struct

import pytest

from engine.training.tensorboard import crc32c, masked_crc
from engine.training.train import main
from test_train import args, data, log  # noqa: F401 (the fixture)


def records(path):
    raw, i, out = path.read_bytes(), 0, []
    while i < len(raw):
        (length,) = struct.unpack_from("<Q", raw, i)
        (length_crc,) = struct.unpack_from("<I", raw, i + 8)
        assert length_crc == masked_crc(raw[i:i + 8]), f"record at byte {i}: the length's CRC is wrong"
        body = raw[i + 12:i + 12 + length]
        (body_crc,) = struct.unpack_from("<I", raw, i + 12 + length)
        assert body_crc == masked_crc(body), f"record at byte {i}: the data's CRC is wrong"
        out.append(body)
        i += 12 + length + 4
    return out


def fields(buf: bytes) -> list[tuple[int, object]]:
    """(field number, value) of a protocol buffer message, by the wire format:
    varints as ints, fixed 64/32 as raw bytes, length-delimited as bytes."""
    out, i = [], 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            b = buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value
    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, varint()))
        elif wire == 1:
            out.append((number, buf[i:i + 8]))
            i += 8
        elif wire == 5:
            out.append((number, buf[i:i + 4]))
            i += 4
        elif wire == 2:
            n = varint()
            out.append((number, buf[i:i + n]))
            i += n
        else:
            pytest.fail(f"wire type {wire} in an event")
    return out


def test_crc32c_is_castagnoli():
    assert crc32c(b"123456789") == 0xE3069283       # the standard check value (RFC 3720, iSCSI)
    assert crc32c(b"") == 0


def test_the_event_file_holds_every_logged_scalar(data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert main(args(data, out, "--steps", "4", "--tensorboard")) == 0
    assert main(["--resume", "--out", str(out), "--steps", "6", "--no-progress", "--tensorboard"]) == 0
    files = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2, files                                  # a resumed run adds its own file
    seen = {}
    for path in files:
        events = [dict(fields(r)) | {"_all": fields(r)} for r in records(path)]
        assert events[0][3] == b"brain.Event:2"                   # Event.file_version
        seen |= scalars(events[1:])
    logged = [line for line in log(out) if "loss" in line]
    assert [line["step"] for line in logged] == [1, 2, 3, 4, 5, 6]
    for line in logged:
        for tag in ("loss", "lr", "grad_norm", "img_per_s"):
            assert seen[(line["step"], tag)] == pytest.approx(line[tag], rel=1e-6), (line["step"], tag)


def scalars(events) -> dict:
    seen = {}
    for e in events:
        step, wall = e[2], struct.unpack("<d", e[1])[0]           # Event.step, Event.wall_time
        assert wall > 1.7e9
        for number, summary in e["_all"]:
            if number != 5:                                       # Event.summary
                continue
            for vnum, value in fields(summary):
                assert vnum == 1                                  # Summary.value
                v = dict(fields(value))
                seen[(step, v[1].decode())] = struct.unpack("<f", v[2])[0]   # Value.tag, Value.simple_value
    return seen
