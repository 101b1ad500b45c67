"""The `digitgen` command as a user runs it (a real subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def digitgen(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "digitgen", *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=300)


def test_bench_help_lists_the_benches_under_its_own_name():
    r = digitgen("bench", "--help")
    assert r.returncode == 0
    for name in ("engine", "service", "ablation"):
        assert name in r.stdout
    r = digitgen("bench", "service", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: digitgen bench service")
    bad = digitgen("bench", "nope")
    assert bad.returncode == 2 and "unknown bench 'nope'" in bad.stderr


def test_a_quick_engine_bench_does_not_replace_the_recorded_result(tmp_path):
    recorded = ROOT / "bench" / "results" / "engine.json"
    before = recorded.read_bytes()
    tiny = tmp_path / "tiny.json"
    tiny.write_text('{"sample_size": 28, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16], '
                    '"layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"], '
                    '"up_block_types": ["UpBlock2D", "UpBlock2D"], "add_attention": false, "norm_num_groups": 4, '
                    '"num_class_embeds": 11}')
    r = digitgen("bench", "engine", "--quick", "--no-reference", "--config", str(tiny), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert recorded.read_bytes() == before


def test_generate_says_what_it_wrote(tiny_weights, tmp_path):
    r = digitgen("generate", "5", "--seed", "42", "--steps", "2", "--weights", str(tiny_weights), "-o",
                 str(tmp_path / "five.png"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {tmp_path / 'five.png'} (seed 42)"  # one image: no "image i" talk
    grid = digitgen("generate", "--all", "-n", "2", "--seed", "7", "--steps", "2", "--weights", str(tiny_weights),
                    "-o", str(tmp_path / "all.png"))
    assert grid.returncode == 0 and "(seed + i) mod 2^32" in grid.stdout
    fast = digitgen("generate", "3", "--model", "fast", "--seed", "1", "--weights", str(tiny_weights), "-o",
                    str(tmp_path / "three.png"))
    assert fast.returncode == 0 and (tmp_path / "three.png").stat().st_size > 0


def test_generate_refuses_a_label_and_all_together(tiny_weights):
    r = digitgen("generate", "5", "--all", "--weights", str(tiny_weights))
    assert r.returncode == 2 and "not both" in r.stderr


def test_serve_with_a_malformed_port_setting_says_which(tiny_weights):
    """Kubernetes injects DIGITGEN_PORT=tcp://... for a Service named digitgen
    (unless enableServiceLinks is off): a clear exit 2, not a traceback."""
    r = subprocess.run([sys.executable, "-m", "digitgen", "serve", "--weights", str(tiny_weights)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "DIGITGEN_PORT": "tcp://10.96.0.12:80"})
    assert r.returncode == 2, r.stderr
    assert "DIGITGEN_PORT='tcp://10.96.0.12:80' is not a valid int" in r.stderr
    assert "Traceback" not in r.stderr


def test_generate_runs_the_request_the_service_runs(tiny_weights, tmp_path, server):
    """The same parameters give the same bytes from the command line as from
    POST /generate: one resolver, one default model (the service's: fast when
    it is there), the same seeds, the same PNG."""
    import httpx

    for args, params in [(["--seed", "42"], {"seed": 42}),
                         (["--model", "base", "--seed", "9", "--steps", "3", "--scheduler", "ddim", "--eta", "0.5",
                           "--size", "56"],
                          {"model": "base", "seed": 9, "steps": 3, "scheduler": "ddim", "eta": 0.5, "size": 56})]:
        r = digitgen("generate", "5", *args, "--weights", str(tiny_weights), "-o", str(tmp_path / "cli.png"))
        assert r.returncode == 0, r.stderr
        served = httpx.post(server.url + "/generate", params={"label": 5, "model": "fast", **params}, timeout=60)
        assert served.status_code == 200 and served.content == (tmp_path / "cli.png").read_bytes(), args
    bad = digitgen("generate", "5", "--eta", "0.5", "--model", "base", "--weights", str(tiny_weights))
    assert bad.returncode == 2 and "eta is taken only by the ddim and tcd samplers" in bad.stderr
