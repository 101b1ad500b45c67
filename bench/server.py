"""The service in a process of its own, for the benches: `digitgen serve`
on a free loopback port with the DIGITGEN_* settings given, ready when
/readyz says so."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def gauge(url: str, name: str) -> float:
    """One unlabelled sample from the server's /metrics."""
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise SystemExit(f"no {name} in /metrics")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    def __init__(self, weights: Path, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DIGITGEN_WEIGHTS": str(weights), "DIGITGEN_PORT": str(self.port),
               **{f"DIGITGEN_{k.upper()}": str(v) for k, v in settings.items()}}
        self.proc = subprocess.Popen([sys.executable, "-m", "digitgen", "serve"], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server did not start (exit status {self.proc.returncode})")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > end:
                self.close()
                raise SystemExit("the server did not become ready in 120 s")
            time.sleep(0.2)

    def usage(self) -> dict:
        """RSS (MB), threads and open files of the server process (Linux /proc)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        field = {line.split(":")[0]: line.split()[1] for line in status if ":" in line and len(line.split()) > 1}
        return {"rss_mb": int(field["VmRSS"]) / 1024, "threads": int(field["Threads"]),
                "open_files": len(os.listdir(f"/proc/{self.proc.pid}/fd"))}

    def close(self) -> int:
        """SIGTERM, and its exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def closed_loop(url: str, model: str, clients: int, seconds: float, seed0: int = 0,
                tick=None) -> tuple[list[tuple[int, float, str]], float]:
    """`clients` threads each POST /generate back to back for `seconds`
    (requests still running then are waited for): ([(status, seconds,
    body if not 200)], wall seconds). Status 0: the connection failed.
    `tick(elapsed)` is called from the calling thread about once a second."""
    import threading

    results: list[tuple[int, float, str]] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int):
        with httpx.Client(base_url=url, timeout=600) as c:
            i = 0
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = c.post("/generate", params={"model": model, "label": (k + i) % 10,
                                                    "seed": seed0 + 1000 * k + i})
                    code, text = r.status_code, ("" if r.status_code == 200 else r.text)
                except httpx.TransportError as e:
                    code, text = 0, str(e)
                with lock:
                    results.append((code, time.perf_counter() - t0, text))
                i += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    if tick is not None:
        while any(t.is_alive() for t in threads):
            time.sleep(1.0)
            tick(time.perf_counter() - t0)
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0
