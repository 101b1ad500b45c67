"""The engine's thread count follows the CPUs a container may really use:
its cgroup's quota (docker run --cpus, a Kubernetes limit), not the host's
core count that os.cpu_count() reports."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.nn import runtime

ROOT = Path(__file__).resolve().parents[1]


def cgroup(tmp_path, v2: str | None = None, v1: tuple[int, int] | None = None):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return str(tmp_path)


@pytest.fixture
def sixteen_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)


@pytest.mark.parametrize("files, expected", [
    (dict(v2="200000 100000"), 2),     # docker run --cpus 2 (cgroup v2)
    (dict(v2="150000 100000"), 2),     # 1.5 CPUs: two threads, each busy part of the time
    (dict(v2="50000 100000"), 1),
    (dict(v2="max 100000"), 16),       # no limit: the CPUs it may run on
    (dict(v1=(300000, 100000)), 3),    # cgroup v1
    (dict(v1=(-1, 100000)), 16),       # v1 without a limit
    (dict(), 16),                      # no cgroup files at all
    (dict(v2="garbage"), 16),          # unreadable: as if there were none
])
def test_the_cpu_quota_bounds_the_cpus_available(tmp_path, sixteen_cores, files, expected):
    assert runtime.cpus_available(cgroup(tmp_path, **files)) == expected


def test_default_threads_take_the_quota_and_digitgen_threads_wins(tmp_path, sixteen_cores, monkeypatch):
    monkeypatch.setattr(runtime, "cpus_available", lambda: 2)
    monkeypatch.delenv("DIGITGEN_THREADS", raising=False)
    assert runtime.default_threads() == 2
    monkeypatch.setenv("DIGITGEN_THREADS", "5")
    assert runtime.default_threads() == 5
    monkeypatch.setattr(runtime, "cpus_available", lambda: 64)
    monkeypatch.delenv("DIGITGEN_THREADS")
    assert runtime.default_threads() == runtime.MAX_THREADS


@pytest.mark.parametrize("threads", [1, 2])
def test_configure_makes_blas_single_threaded_at_one_engine_thread_too(threads):
    """A process of its own: BLAS's thread count is process-wide. Before
    configure() OpenBLAS runs a thread per core it sees; after it, one, so
    that DIGITGEN_THREADS=1 (a replica beside others) uses one core."""
    code = ("from engine.nn import runtime, blas; before = blas.blas_threads(); "
            f"runtime.configure({threads}); print(before, blas.blas_threads(), runtime.threads())")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS_NUM", "OMP_NUM"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    before, after, engine = out.stdout.split()
    if before == "None":
        pytest.skip("NumPy's BLAS here is not OpenBLAS")
    assert (int(after), int(engine)) == (1, threads)
