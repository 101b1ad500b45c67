"""The hand-written Prometheus histogram against counts worked out by hand."""
from __future__ import annotations

from app.metrics import Histogram, Registry


def test_histogram_buckets_are_cumulative_and_a_bound_is_inclusive():
    h = Histogram(Registry(), "t_seconds", "test", (0.01, 0.1, 1.0), ("route",))
    for v in (0.001, 0.01, 0.05, 0.1, 0.1, 3.0):  # 0.01 and 0.1 sit exactly on bounds: le is <=
        h.observe(v, route="/a")
    h.observe(0.5, route="/b")
    lines = h.render()
    assert lines[2:7] == ['t_seconds_bucket{route="/a",le="0.01"} 2', 't_seconds_bucket{route="/a",le="0.1"} 5',
                          't_seconds_bucket{route="/a",le="1"} 5', 't_seconds_bucket{route="/a",le="+Inf"} 6',
                          't_seconds_sum{route="/a"} 3.261']
    assert lines[7] == 't_seconds_count{route="/a"} 6'
    assert lines[8:10] == ['t_seconds_bucket{route="/b",le="0.01"} 0', 't_seconds_bucket{route="/b",le="0.1"} 0']
