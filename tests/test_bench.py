"""The benchmarks still run and write their JSON (smoke runs on a tiny
config; no timing is asserted: speed targets live in the benchmarks)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_UNET


def _run(script, tmp_path, *args):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_UNET))
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--config", str(cfg), "--json", str(out),
                           *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads(out.read_text())


def test_engine_bench_smoke(tmp_path):
    stdout, info = _run("engine.py", tmp_path, "--quick", "--no-reference")
    assert [r["metric"] for r in info["rows"]] == [
        "forward latency B=1", "forward latency B=2", "forward latency B=8", "forward throughput B=64",
        "training throughput B=64"]
    assert all(r["numpy_s"] > 0 for r in info["rows"])
    assert "forward throughput B=64" in stdout


def test_ablation_bench_smoke_and_shipped_variants_are_batch_invariant(tmp_path):
    stdout, info = _run("ablation.py", tmp_path, "--rounds", "1", "--batches", "6")
    by = {r["variant"]: r for r in info["rows"]}
    assert set(by) == {"engine", "no shards", "untiled chunks", "one GEMM per tile"}
    # what seeded requests rely on: a sample's bits are the same alone and in a batch
    assert by["engine"]["batch_invariant"] and by["no shards"]["batch_invariant"]
    assert by["untiled chunks"]["batch_invariant"]
    assert "a sample's bits as alone" in stdout


def test_service_bench_smoke_measures_both_models(tiny_weights, tmp_path):
    out = tmp_path / "service.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "service.py"), "--weights", str(tiny_weights),
                           "--quick", "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(out.read_text())
    assert {(r["model"], r["clients"]) for r in info["rows"]} == {(m, c) for m in ("base", "fast") for c in (1, 4, 16)}
    assert info["models"]["fast"]["scheduler"] == "tcd" and info["models"]["base"]["steps"] == 20
    assert {"fast / base: one digit's p50 at 1 client", "fast / base: digits/s at 16 clients"} <= {
        r["metric"] for r in info["ratios"]}


def test_a_quick_service_bench_does_not_replace_the_recorded_result(tiny_weights, tmp_path):
    recorded = ROOT / "bench" / "results" / "service.json"
    before = recorded.read_bytes()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "service.py"), "--weights", str(tiny_weights),
                           "--quick", "--model", "fast"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert recorded.read_bytes() == before


def test_soak_bench_smoke_loses_nothing(tiny_weights, tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--weights", str(tiny_weights),
                           "--minutes", "0.1", "--clients", "4", "--light-seconds", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    info = json.loads(out.read_text())
    assert info["soak"]["unexpected_count"] == 0 and info["soak"]["requests"] > 0
    assert set(info["burst"]["statuses"]) <= {"503", "200"}
    assert info["soak"]["usage"]["peak_rss_mb"] > 0
    gifs = info["largest_gifs"]
    assert gifs["statuses"] == {"200": 4} and gifs["rss_mb"]["peak"] >= gifs["rss_mb"]["before"] > 0


def test_burst_floor_bench_smoke_refuses_every_burst(tiny_weights, tmp_path):
    out = tmp_path / "burst_floor.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "burst_floor.py"), "--weights", str(tiny_weights),
                           "--bursts", "1", "--n", "5", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    *fixed, running = rows.values()  # bare (h11, httptools), held, held + load; then the engine running
    assert len(fixed) == 4 and all(r["statuses"] == [503] and r["requests_each"] == 5 for r in fixed)
    # the tiny model may finish its filler before the bursts end on a fast machine: then some are served
    assert running["requests_each"] == 5 and set(running["statuses"]) <= {200, 503}
    assert running["statuses"] == [503] or not running["engine_busy_throughout"]


def test_crowd_bench_smoke_serves_every_client(tiny_weights, tmp_path):
    out = tmp_path / "crowd.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "crowd.py"), "--weights", str(tiny_weights),
                           "--crowds", "0:0,50:5", "--rounds", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for row in json.loads(out.read_text())["rows"].values():
        assert all(c["ok"] == c["of"] == 2 for c in row["clients"].values()), row


def test_memory_bench_smoke_reports_the_peak_and_what_stays(tiny_weights, tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py"), "--weights", str(tiny_weights),
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    row = json.loads(out.read_text())["row"]
    assert row["peak_mb"] >= row["rss_after_mb"] > 0 and row["engine_scratch_mb"] > 0


def test_explore_bench_smoke_times_a_grid_and_a_morph(tiny_weights, tmp_path):
    out = tmp_path / "explore.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "explore.py"), "--weights", str(tiny_weights),
                           "--rounds", "1", "--clients", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(r["median_s"] > 0 for r in rows.values())
    assert all(r["neighbour_digit_p50_s"] for name, r in rows.items() if ", 1 other" in name), rows


@pytest.mark.browser
def test_page_bench_smoke_times_the_first_frame_on_a_phone(tiny_weights, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("no chromium binary on PATH")
    out = tmp_path / "page.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "page.py"), "--weights", str(tiny_weights),
                           "--rounds", "1", "--json", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    median = json.loads(out.read_text())["median"]
    assert 0 < median["first_frame_ms"] <= median["first_step_ms"] <= median["run_ms"]
    assert median["first_frame_in_view"] is True


@pytest.mark.skipif(shutil.which("haproxy") is None and not os.access("/usr/sbin/haproxy", os.X_OK),
                    reason="haproxy is not installed (apt-get install haproxy; scripts/test.sh does it)")
def test_cluster_bench_smoke_retries_refusals_and_drains_without_loss(tiny_weights, tmp_path):
    out = tmp_path / "cluster.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cluster.py"), "--weights", str(tiny_weights),
                           "--seconds", "1.5", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {"1 replica, no balancer", "1 replica behind HAProxy", "2 replicas behind HAProxy",
            "3 replicas behind HAProxy"} <= rows.keys()
    failover = rows["failover: 3 replicas, the first holding 1 request, 16 clients"]
    assert failover["refused_by_replicas"] >= 1 and failover["not_ok"] == {}, failover   # every refusal retried
    drain = rows["drain: SIGTERM to 1 of 3 replicas under 16 clients"]
    # uvicorn re-raises the SIGTERM it handled once it has shut down: -15 is a clean drain too
    assert drain["sigterm_at_s"] is not None and drain["drained_replica_exit"] in (0, -15) and drain["not_ok"] == {}, \
        drain
