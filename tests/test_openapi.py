"""The OpenAPI document tells the truth: a bounded schemathesis run with all
its checks against a real server (tiny weights, both models) finds nothing.
tests/schemathesis.toml names the only allowance, and why."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Server

HERE = Path(__file__).parent
MAX_SECONDS = os.environ.get("DIGITGEN_FUZZ_SECONDS", "60")


def test_schemathesis_finds_nothing(tiny_weights, tmp_path):
    cli = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which("schemathesis")
    if cli is None:
        pytest.skip("schemathesis is not installed (it is in the test extras)")
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", max_request_rows=400, max_gif_pixels=50 * 112 * 112)
    # One worker: with two, schemathesis' threads describe hypothesis filters
    # concurrently, and CPython 3.11.7's ast.parse is not safe for that
    # (SystemError "AST constructor recursion depth mismatch", cpython#106905),
    # which failed this test on a fresh install on 2026-12-01.
    try:
        proc = subprocess.run(
            [cli, "--config-file", str(HERE / "schemathesis.toml"), "run", srv.url + "/openapi.json",
             "--checks", "all", "--max-time", MAX_SECONDS, "--workers", "1", "--max-examples", "25",
             "--warnings", "off", "--seed", os.environ.get("DIGITGEN_FUZZ_SEED", "1")],
            capture_output=True, text=True, timeout=int(MAX_SECONDS) + 240, cwd=tmp_path)
    finally:
        srv.stop()
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
