"""MNIST fetched from its public mirrors: the four gzipped IDX files that
engine.io.data.load_mnist reads, each checked against its published size and
SHA-256 before it takes its name. Standard library only (urllib).

Per file, the mirrors are tried in order and the first that serves the right
bytes wins. A download goes to a temporary file in the target folder and is
os.replace()d onto its name only once verified, so an interrupted or failed
run leaves either the old file or the complete new one, never part of one. A
file already there with the right size and hash is not fetched again."""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Mapping

# The published files (Yann LeCun's originals, as every mirror below carries them):
# name -> (bytes, SHA-256). These are the sums TensorFlow Datasets and torchvision's
# mirrors are checked against; their MD5s (torchvision's list) are, in this order,
# f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d...
MNIST_FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte.gz": (9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte.gz": (28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte.gz": (1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte.gz": (4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}

# torchvision's first mirror, then TensorFlow's (yann.lecun.com itself now refuses most downloads)
DEFAULT_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                   "https://storage.googleapis.com/cvdf-datasets/mnist/")
MIRRORS_ENV = "DIGITGEN_MNIST_MIRRORS"
DEFAULT_TIMEOUT = 30.0
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """No mirror gave a file's right bytes; the message (one line) names the file and each mirror's failure."""


def mirrors_from(given: Iterable[str] | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """--mirror URLs when given, else $DIGITGEN_MNIST_MIRRORS (comma-separated), else the defaults;
    each ends with '/' (a file's URL is the mirror followed by its name)."""
    environ = os.environ if environ is None else environ
    chosen = [m.strip() for m in (given or ()) if m.strip()]
    if not chosen:
        chosen = [m.strip() for m in environ.get(MIRRORS_ENV, "").split(",") if m.strip()]
    return [m if m.endswith("/") else m + "/" for m in (chosen or DEFAULT_MIRRORS)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_present(path: Path, size: int, sha256: str) -> bool:
    """The file is there with the right size and hash."""
    try:
        return path.is_file() and path.stat().st_size == size and _sha256(path) == sha256
    except OSError:
        return False


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _fetch(url: str, dest, size: int, sha256: str, timeout: float, progress: Callable[[int], None]) -> None:
    """Writes url's body into the open file dest; raises ValueError/OSError/HTTPException saying what is wrong."""
    h = hashlib.sha256()
    got = 0
    with urllib.request.urlopen(url, timeout=timeout) as r:
        declared = r.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) != size:
            raise ValueError(f"serves {declared} bytes, expected {size}")
        while True:
            block = r.read(min(CHUNK, size + 1 - got))  # never more than one byte past the right size
            if not block:
                break
            got += len(block)
            if got > size:
                raise ValueError(f"serves more than the expected {size} bytes")
            h.update(block)
            dest.write(block)
            progress(got)
    if got != size:
        raise ValueError(f"truncated: {got} of {size} bytes")
    if h.hexdigest() != sha256:
        raise ValueError(f"wrong SHA-256 {h.hexdigest()[:16]}... (expected {sha256[:16]}...)")


def _reason(e: BaseException, timeout: float) -> str:
    """One short phrase for why a mirror failed."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, BaseException) else ValueError(str(e.reason))
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(e, http.client.IncompleteRead):
        return f"truncated: connection closed after {len(e.partial)} more bytes, {e.expected} still expected"
    if isinstance(e, ValueError):
        return str(e)
    return f"{type(e).__name__}: {e}".rstrip(": ")


def fetch_file(name: str, folder: Path, mirrors: list[str], size: int, sha256: str,
               timeout: float = DEFAULT_TIMEOUT, log: Callable[[str], None] | None = None) -> str | None:
    """Makes folder/name the verified file: None when it already was, else the mirror it came from."""
    log = log or _stderr
    path = folder / name
    if is_present(path, size, sha256):
        log(f"{name}: already there and verified")
        return None
    failures = []
    for mirror in mirrors:
        url = mirror + name
        log(f"{name}: {_megabytes(size)} from {url}")
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
        except OSError as e:
            raise DownloadError(f"{name}: cannot write in {folder}: {e}") from None
        progress = _progress(name, size)
        try:
            try:
                with os.fdopen(fd, "wb") as dest:
                    _fetch(url, dest, size, sha256, timeout, progress)
                    dest.flush()
                    os.fsync(dest.fileno())
            finally:
                progress(-1)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 otherwise
            os.replace(tmp, path)
        except (OSError, ValueError, http.client.HTTPException) as e:
            failures.append(f"{mirror} ({_reason(e, timeout)})")
            log(f"{name}: {mirror} failed: {_reason(e, timeout)}")
            continue
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        log(f"{name}: verified (SHA-256 {sha256[:16]}...)")
        return mirror
    raise DownloadError(f"{name}: no mirror gave the right file: " + "; ".join(failures))


def download_mnist(out: str | Path, mirrors: list[str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                   files: Mapping[str, tuple[int, str]] | None = None,
                   log: Callable[[str], None] | None = None) -> Path:
    """The four MNIST files in `out` (created if need be), each verified; -> the folder.

    `files` (name -> (bytes, SHA-256)) is MNIST_FILES unless given (tests serve their own small files).
    Raises DownloadError at the first file no mirror could give; the files finished before it stay
    (complete and verified), no partial file does."""
    log = log or _stderr
    files = MNIST_FILES if files is None else files
    mirrors = mirrors_from() if mirrors is None else [m if m.endswith("/") else m + "/" for m in mirrors]
    if not mirrors:
        raise DownloadError("no mirror to download from")
    folder = Path(out)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {folder}: {e}") from None
    try:
        for name, (size, sha256) in files.items():
            fetch_file(name, folder, mirrors, size, sha256, timeout, log)
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # nothing written: leave no empty folder behind either
        raise
    for name in files:  # load_mnist prefers an uncompressed file of the same name: say so if one is there
        plain = folder / name.removesuffix(".gz")
        if plain.exists():
            log(f"note: {plain} is also there, and the loader reads it rather than {name}")
    return folder


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _progress(name: str, size: int) -> Callable[[int], None]:
    """show(bytes so far): a percentage redrawn in place on a terminal (a few times a second; nothing
    when stderr is not one); show(-1) ends the line if one was drawn."""
    if not sys.stderr.isatty() or size < 1_000_000:
        return lambda got: None
    state = {"last": 0.0, "open": False}

    def show(got: int) -> None:
        if got < 0:
            if state["open"]:
                print(file=sys.stderr, flush=True)
            state["open"] = False
            return
        now = time.monotonic()
        if now - state["last"] >= 0.25 or got == size:
            state["last"], state["open"] = now, True
            print(f"\r  {name}: {100 * got // size:3d}% of {_megabytes(size)}", end="", file=sys.stderr, flush=True)

    return show
