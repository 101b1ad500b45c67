"""N replicas of `digitgen serve` behind HAProxy on this machine, one command:

    python deploy/local/cluster.py [--replicas 3] [--port 8000] [--weights weights]

Needs `haproxy` on PATH (Debian: apt-get install haproxy) and the package
installed (the quick start's venv). The replicas listen on loopback ports
after --port (8001, 8002, ...) with DIGITGEN_TRUSTED_PROXIES=127.0.0.1, so
they read the client from HAProxy's X-Forwarded-For; HAProxy
(deploy/haproxy/haproxy.cfg) listens on --port. Ctrl-C (or SIGTERM) drains
the replicas (each finishes or refuses its work, HAProxy retries refusals on
the others) and then stops HAProxy. Each replica gets its share of the cores
(DIGITGEN_THREADS = CPUs / replicas).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
                                            if os.access(p, os.X_OK)), None)


def write_config(servers: list[tuple[str, int]], folder: Path) -> Path:
    """deploy/haproxy/haproxy.cfg with a `server` line per replica appended to its
    last section (the backend), written into `folder`."""
    lines = [f"    server r{i + 1} {host}:{port}" for i, (host, port) in enumerate(servers)]
    path = folder / "haproxy.cfg"
    path.write_text(CONFIG.read_text().rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    return path


class LoadBalancer:
    """HAProxy in the foreground on 127.0.0.1:port in front of `servers`;
    `url` once it answers. Its log (one line a request) goes to `log`."""

    def __init__(self, servers: list[tuple[str, int]], port: int, log: Path, folder: Path | None = None):
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        self.folder = Path(folder or tempfile.mkdtemp(prefix="digitgen-lb-"))
        self.config = write_config(servers, self.folder)
        check = subprocess.run([binary, "-c", "-f", str(self.config)], capture_output=True, text=True,
                               env={**os.environ, "DIGITGEN_LB_BIND": f"127.0.0.1:{port}"})
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects {self.config}:\n{check.stdout}{check.stderr}")
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config)], stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     env={**os.environ, "DIGITGEN_LB_BIND": f"127.0.0.1:{port}"})
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{Path(log).read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nothing answered through haproxy:\n{Path(log).read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)   # soft stop: finish what is in flight
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"a replica exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--weights", default=str(ROOT / "weights"))
    args = p.parse_args(argv)
    if haproxy_binary() is None:
        print("error: haproxy is not installed (Debian: apt-get install haproxy)", file=sys.stderr)
        return 2
    threads = max(1, (os.cpu_count() or 1) // args.replicas)
    env = {**os.environ, "DIGITGEN_WEIGHTS": args.weights, "DIGITGEN_TRUSTED_PROXIES": "127.0.0.1",
           "DIGITGEN_THREADS": str(threads)}
    servers = [("127.0.0.1", args.port + 1 + i) for i in range(args.replicas)]
    replicas = [subprocess.Popen([sys.executable, "-m", "digitgen", "serve", "--host", host, "--port", str(port)],
                                 env=env) for host, port in servers]
    lb = None
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        for (host, port), proc in zip(servers, replicas):
            wait_ready(f"http://{host}:{port}", proc)
        lb = LoadBalancer(servers, args.port, Path(tempfile.gettempdir()) / "digitgen-haproxy.log")
        print(f"{args.replicas} replicas ({threads} engine thread(s) each) behind haproxy: {lb.url} "
              f"(haproxy's log: {tempfile.gettempdir()}/digitgen-haproxy.log); Ctrl-C stops", flush=True)
        while not stopping and lb.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        for proc in replicas:   # drain: each refuses new work, HAProxy sends it to the others
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in replicas:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if lb is not None:
            lb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
