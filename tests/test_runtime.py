"""The engine's thread count follows the CPUs a container may really use:
its cgroup's quota (docker run --cpus, a Kubernetes limit), not the host's
core count that os.cpu_count() reports."""
from __future__ import annotations

import os

import pytest

from engine.nn import runtime


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
