"""How long the path of one request is through the project's own code: the
functions and files one `POST /generate` runs, and how often the path
switches from one file to another, in the server as `serve()` runs it.

    python tools/trace_request.py [--repo PATH] [--weights PATH] [--query 'label=5&steps=2']

The server runs in this process (`app.main.serve` on a free port, from
--repo's checkout: another commit can be measured the same way); a profile
hook on every thread records each call into a function of app/, engine/ or
digitgen/ while one request is in flight (after an untraced warm-up one);
the client's own thread is left out. Prints the counts for the whole path
and for the HTTP layer (app/) alone, and writes JSON with --json.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=str(ROOT), help="the checkout whose app/ and engine/ to run (default: this one)")
    p.add_argument("--weights", default=None, help="default: the checkout's weights/")
    p.add_argument("--query", default="label=5&steps=2&model=base")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    repo = Path(args.repo).resolve()
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    roots = tuple(str(repo / d) + os.sep for d in ("app", "engine", "digitgen"))
    port = free_port()
    os.environ.update({"DIGITGEN_PORT": str(port), "DIGITGEN_WEIGHTS": args.weights or str(repo / "weights")})

    calls: list[tuple[str, str, int]] = []   # (file, function, thread) in call order
    armed = threading.Event()
    client_thread: list[int] = []

    def hook(frame, event, arg):
        if event == "call" and armed.is_set():
            path = frame.f_code.co_filename
            if path.startswith(roots) and threading.get_ident() not in client_thread:
                calls.append((os.path.relpath(path, repo), frame.f_code.co_qualname, threading.get_ident()))

    def client() -> None:
        import httpx

        client_thread.append(threading.get_ident())
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=120) as c:
            assert c.post("/generate?" + args.query).status_code == 200  # warm-up, untraced
            time.sleep(0.5)
            armed.set()
            r = c.post("/generate?" + args.query)
            time.sleep(0.2)  # the access line and metrics are written after the response
            armed.clear()
            assert r.status_code == 200, r.text
        os.kill(os.getpid(), 2)  # SIGINT: serve() shuts down

    threading.setprofile(hook)
    sys.setprofile(hook)
    threading.Thread(target=client, daemon=True).start()
    from app.main import serve

    serve(log_level="warning")
    sys.setprofile(None)
    threading.setprofile(None)

    def summary(rows) -> dict:
        files = [f for f, _, _ in rows]
        switches = sum(1 for a, b in zip(files, files[1:]) if a != b)
        return {"calls": len(rows), "functions": len({(f, fn) for f, fn, _ in rows}), "files": len(set(files)),
                "file_switches": switches}

    everything = summary(calls)
    http = summary([c for c in calls if c[0].startswith("app" + os.sep)])
    app_functions = sorted({f"{f}:{fn}" for f, fn, _ in calls if f.startswith("app" + os.sep)})
    out = {"query": args.query, "repo": str(repo), "whole_path": everything, "http_layer": http,
           "http_functions": app_functions,
           "files": sorted({f for f, _, _ in calls})}
    print(f"POST /generate?{args.query} through {repo}")
    print(f"{'':24}{'calls':>8}{'functions':>11}{'files':>7}{'file switches':>15}")
    for name, row in (("whole path", everything), ("HTTP layer (app/)", http)):
        print(f"{name:24}{row['calls']:>8}{row['functions']:>11}{row['files']:>7}{row['file_switches']:>15}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
