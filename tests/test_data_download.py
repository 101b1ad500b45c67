"""`digitgen data mnist` against real HTTP servers on loopback serving real
(small, made here) gzipped IDX files: the first mirror with the right bytes
wins, and a mirror that is down, slow, short or wrong moves on to the next
and leaves nothing half-written."""
from __future__ import annotations

import gzip
import hashlib
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from conftest import ROOT
from digitgen import cli
from engine.io import download
from engine.io.data import IDX_NAMES, load_mnist
from engine.io.download import MNIST_FILES, DownloadError, download_mnist, mirrors_from


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_files() -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The four files, gzipped (name -> bytes), and the arrays in them."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("test", 4)):
        img, lbl = IDX_NAMES[split]
        arrays[img] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[lbl] = rng.integers(0, 10, n).astype(np.uint8)
    return {name + ".gz": gzip.compress(idx_bytes(a), mtime=0) for name, a in arrays.items()}, arrays


FILES, ARRAYS = make_files()
TABLE = {name: (len(body), hashlib.sha256(body).hexdigest()) for name, body in FILES.items()}


class Mirror:
    """An HTTP server on 127.0.0.1 (port 0) serving FILES under /mnist/ as `mode` says:
    good, 404, wrong (right size, one byte changed), truncated (declares the whole length, sends half
    and closes), short (declares and sends half), stall (answers nothing until released), or
    stall-body (headers and half the body, then nothing until released)."""

    def __init__(self, mode: str = "good", only: set[str] | None = None):
        self.mode, self.only = mode, only  # `only`: the files this mode applies to (the others are good)
        self.requests: list[str] = []
        self.release = threading.Event()  # never set by a test until its cleanup
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                mirror.requests.append(self.path)
                name = self.path.removeprefix("/mnist/")
                mode = mirror.mode if mirror.only is None or name in mirror.only else "good"
                if name not in FILES or mode == "404":
                    self.send_error(404)
                    return
                body = FILES[name]
                if mode == "stall":
                    mirror.release.wait()
                    return
                if mode == "wrong":
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                half = body[:len(body) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(half) if mode == "short" else len(body)))
                self.end_headers()
                if mode in ("truncated", "short", "stall-body"):
                    self.wfile.write(half)
                    self.wfile.flush()
                    if mode == "stall-body":
                        mirror.release.wait()
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda request, address: None  # a released handler writing to a closed socket
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mnist/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """No proxy from the environment between urllib and the loopback servers."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.delenv(download.MIRRORS_ENV, raising=False)


@pytest.fixture
def mirror():
    made = []

    def make(mode="good", only=None):
        made.append(Mirror(mode, only))
        return made[-1]

    yield make
    for m in made:
        m.close()


def fetch(out, mirrors, timeout=5.0, **kw):
    lines = []
    folder = download_mnist(out, [m.url for m in mirrors], timeout=timeout, files=TABLE, log=lines.append, **kw)
    return folder, lines


def assert_complete(folder):
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # no .part file left
    for name, body in FILES.items():
        assert (folder / name).read_bytes() == body
    for split in ("train", "test"):
        images, labels = load_mnist(folder, split)
        img, lbl = IDX_NAMES[split]
        np.testing.assert_array_equal(images, ARRAYS[img])
        np.testing.assert_array_equal(labels, ARRAYS[lbl])


def test_the_constants_name_the_files_the_loader_reads():
    assert set(MNIST_FILES) == {stem + ".gz" for pair in IDX_NAMES.values() for stem in pair}
    for size, sha256 in MNIST_FILES.values():
        assert size > 0 and len(sha256) == 64 and int(sha256, 16) >= 0


def test_a_good_mirror_writes_the_folder_the_trainer_reads(mirror, tmp_path):
    m = mirror()
    folder, lines = fetch(tmp_path / "data" / "mnist", [m])
    assert_complete(folder)
    assert sorted(m.requests) == sorted(f"/mnist/{name}" for name in FILES)
    assert any("verified" in line for line in lines)


@pytest.mark.parametrize("mode", ["404", "wrong", "truncated", "short"])
def test_a_bad_first_mirror_moves_on_to_the_second(mirror, tmp_path, mode):
    bad, good = mirror(mode), mirror()
    folder, lines = fetch(tmp_path / "mnist", [bad, good])
    assert_complete(folder)
    assert len(bad.requests) == len(good.requests) == len(FILES)
    assert sum("failed" in line for line in lines) == len(FILES)


@pytest.mark.parametrize("mode", ["stall", "stall-body"])
def test_a_silent_mirror_times_out_and_the_next_is_used(mirror, tmp_path, mode):
    """The slow server waits on an event nobody sets: only the client's timeout ends the wait."""
    slow, good = mirror(mode, only={"t10k-labels-idx1-ubyte.gz"}), mirror()
    folder, lines = fetch(tmp_path / "mnist", [slow, good], timeout=0.3)
    assert_complete(folder)
    assert good.requests == ["/mnist/t10k-labels-idx1-ubyte.gz"]
    assert any("no answer within 0.3 s" in line for line in lines)


@pytest.mark.parametrize("mode", ["404", "wrong", "truncated", "short"])
def test_when_every_mirror_fails_the_error_names_the_file_and_each_failure(mirror, tmp_path, mode):
    a, b = mirror(mode), mirror("404")
    out = tmp_path / "mnist"
    with pytest.raises(DownloadError) as e:
        fetch(out, [a, b])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("train-images-idx3-ubyte.gz: ")
    assert f"{a.url} (" in msg and f"{b.url} (HTTP 404" in msg
    expected = {"404": "HTTP 404", "wrong": "wrong SHA-256", "truncated": "truncated", "short": "serves"}[mode]
    assert expected in msg.split(b.url)[0]
    assert not out.exists()  # nothing written: not even the folder it made


def test_a_later_file_failing_keeps_the_verified_ones_and_leaves_no_partial_file(mirror, tmp_path):
    m = mirror("wrong", only={"t10k-images-idx3-ubyte.gz"})
    out = tmp_path / "mnist"
    with pytest.raises(DownloadError, match=r"^t10k-images-idx3-ubyte.gz: .*wrong SHA-256"):
        fetch(out, [m])
    assert sorted(p.name for p in out.iterdir()) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_files_already_there_and_right_are_not_downloaded_again(mirror, tmp_path):
    out = tmp_path / "mnist"
    fetch(out, [mirror()])
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = mirror()
    _, lines = fetch(out, [again])
    assert again.requests == []
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert sum("already there" in line for line in lines) == len(FILES)
    # a damaged one is fetched again, and only it
    (out / "train-labels-idx1-ubyte.gz").write_bytes(b"not the file")
    fetch(out, [again])
    assert again.requests == ["/mnist/train-labels-idx1-ubyte.gz"]
    assert_complete(out)


def test_a_right_file_is_kept_when_every_mirror_fails_to_replace_a_wrong_one(mirror, tmp_path):
    """os.replace only after verifying: a failed download leaves the old file exactly as it was."""
    out = tmp_path / "mnist"
    out.mkdir()
    (out / "train-images-idx3-ubyte.gz").write_bytes(b"old bytes")
    with pytest.raises(DownloadError):
        fetch(out, [mirror("truncated")])
    assert sorted(p.name for p in out.iterdir()) == ["train-images-idx3-ubyte.gz"]
    assert (out / "train-images-idx3-ubyte.gz").read_bytes() == b"old bytes"


def test_mirrors_come_from_the_flags_else_the_environment_else_the_defaults():
    assert mirrors_from(["http://a/x", "http://b/y/"], {download.MIRRORS_ENV: "http://c/"}) == ["http://a/x/",
                                                                                                 "http://b/y/"]
    assert mirrors_from(None, {download.MIRRORS_ENV: " http://c/ ,, http://d "}) == ["http://c/", "http://d/"]
    assert mirrors_from(None, {download.MIRRORS_ENV: ""}) == list(download.DEFAULT_MIRRORS)
    assert mirrors_from([], {}) == list(download.DEFAULT_MIRRORS)


def test_the_cli_downloads_from_the_environment_mirrors(mirror, tmp_path, monkeypatch, capsys):
    """`digitgen data mnist` end to end in-process, with the real constants swapped for the test files'."""
    bad, good = mirror("404"), mirror()
    monkeypatch.setattr(download, "MNIST_FILES", TABLE)
    monkeypatch.setenv(download.MIRRORS_ENV, f"{bad.url},{good.url}")
    out = tmp_path / "data" / "mnist"
    assert cli.main(["data", "mnist", "--out", str(out), "--timeout", "5"]) == 0
    assert_complete(out)
    captured = capsys.readouterr()
    assert captured.out.strip() == f"wrote {out} (train with: digitgen train --data {out})"
    assert "verified" in captured.err and "HTTP 404" in captured.err


def test_the_cli_error_is_one_line_naming_the_file_and_every_mirror(mirror, tmp_path):
    """A real subprocess, the real constants: --mirror given twice, both failing."""
    a, b = mirror("404"), mirror("stall")
    out = tmp_path / "mnist"
    r = subprocess.run([sys.executable, "-m", "digitgen", "data", "mnist", "--out", str(out), "--mirror", a.url,
                        "--mirror", b.url, "--timeout", "0.3"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin", "no_proxy": "*"})
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"error: train-images-idx3-ubyte.gz: no mirror gave the right file: {a.url} (HTTP 404 Not Found); "
                    f"{b.url} (no answer within 0.3 s)")
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not out.exists()


def test_the_cli_help():
    r = subprocess.run([sys.executable, "-m", "digitgen", "data", "mnist", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: digitgen data mnist")
    for option in ("--out", "--mirror", "--timeout"):
        assert option in r.stdout
    top = subprocess.run([sys.executable, "-m", "digitgen", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert "data" in top.stdout
