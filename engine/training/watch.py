"""A live page for a training run: `digitgen train ... --watch PORT`.

A standard-library HTTP server on 127.0.0.1 (a thread beside the training
loop; it only reads the run folder) serves the page, the run's log.jsonl
from a byte offset (`/log?from=N`, so the page fetches only new lines) and
the latest sample grids. Nothing here touches the model."""
from __future__ import annotations

import json
import threading
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

PAGE = Path(__file__).with_name("watch_page")
FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/watch.js": ("watch.js", "text/javascript"),
         "/watch.css": ("watch.css", "text/css")}
SAMPLES = {"/samples/latest.png": "latest.png"}
MAX_LOG_CHUNK = 1 << 20   # a page that fell far behind catches up a megabyte at a time


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args, run: Path, total_steps: int, batch_size: int, **kwargs):
        self.run, self.total_steps, self.batch_size = run, total_steps, batch_size
        super().__init__(*args, **kwargs)

    def log_message(self, format, *args):  # the training's own output stays readable
        pass

    def _send(self, body: bytes, content_type: str, status=HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path in FILES:
            name, kind = FILES[url.path]
            return self._send((PAGE / name).read_bytes(), kind)
        if url.path == "/log":
            try:
                start = max(0, int(parse_qs(url.query).get("from", ["0"])[0]))
            except ValueError:
                return self._send(b'{"error": "from must be a byte offset"}', "application/json",
                                  HTTPStatus.BAD_REQUEST)
            return self._send(json.dumps(self._log_from(start)).encode(), "application/json")
        if url.path in SAMPLES:
            path = self.run / "samples" / SAMPLES[url.path]
            if path.is_file():
                return self._send(path.read_bytes(), "image/png")
        self._send(b"not found", "text/plain", HTTPStatus.NOT_FOUND)

    def _log_from(self, start: int) -> dict:
        """Whole lines of log.jsonl from byte `start`, and the offset to ask from next."""
        lines, end = [], start
        path = self.run / "log.jsonl"
        if path.is_file():
            with open(path, "rb") as f:
                f.seek(start)
                chunk = f.read(MAX_LOG_CHUNK)
            whole = chunk[:chunk.rfind(b"\n") + 1]   # a line being written waits for the next poll
            end = start + len(whole)
            lines = [json.loads(line) for line in whole.splitlines() if line.strip()]
        return {"lines": lines, "next": end, "total_steps": self.total_steps, "batch_size": self.batch_size,
                "run": str(self.run)}


class WatchServer:
    """The page for `run` on http://127.0.0.1:port (0: a free port), in a daemon thread."""

    def __init__(self, run: Path, port: int, total_steps: int, batch_size: int):
        handler = partial(_Handler, run=Path(run), total_steps=total_steps, batch_size=batch_size)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="watch", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
