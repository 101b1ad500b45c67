"""/metrics through prometheus_client: what the service observes comes out in
both exposition formats as Prometheus' own parsers read them, the format
follows the scraper's Accept header, and OpenMetrics carries the request ID
of a latency bucket's latest request as its exemplar."""
from __future__ import annotations

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from app.metrics import ServiceMetrics, batch_buckets

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def samples(families) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s for f in families for s in f.samples}


def observed() -> ServiceMetrics:
    m = ServiceMetrics(max_batch=64)
    for seconds, rid in ((0.001, "a"), (0.01, "b"), (0.05, "c"), (0.1, "d"), (0.1, "e"), (3.0, "f")):
        m.observe_request("/generate", "POST", 200, seconds, rid)   # 0.01 and 0.1 sit on bounds: le is <=
    m.observe_request("/info", "GET", 404, 0.5)
    m.observe_step(5, 0.02)
    m.queue_depth_fn = lambda: 7
    m.rejected.labels("queue_full").inc()
    return m


def test_the_classic_text_format_is_what_prometheus_parses():
    body, content_type = observed().exposition(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    got = samples(parse_text(body.decode()))
    bucket = lambda le: got[("digitgen_http_request_duration_seconds_bucket",   # noqa: E731
                             (("le", le), ("route", "/generate")))].value
    assert [bucket("0.01"), bucket("0.1"), bucket("1.0"), bucket("+Inf")] == [2, 5, 5, 6]   # cumulative
    assert got[("digitgen_http_request_duration_seconds_count", (("route", "/generate"),))].value == 6
    assert abs(got[("digitgen_http_request_duration_seconds_sum", (("route", "/generate"),))].value - 3.261) < 1e-9
    key = ("digitgen_http_requests_total", (("method", "GET"), ("route", "/info"), ("status", "404")))
    assert got[key].value == 1
    assert got[("digitgen_queue_depth", ())].value == 7   # read at scrape time
    assert got[("digitgen_requests_rejected_total", (("reason", "queue_full"),))].value == 1
    assert got[("digitgen_denoising_steps_total", ())].value == 5
    assert got[("digitgen_images_generated_total", ())].value == 0   # an unlabelled counter is there from the start
    assert not [k for k in got if k[0].endswith("_created")]


def test_openmetrics_on_request_with_the_latest_request_id_as_each_buckets_exemplar():
    body, content_type = observed().exposition(OPENMETRICS + ", text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    got = samples(parse_openmetrics(body.decode()))
    ex = lambda le: got[("digitgen_http_request_duration_seconds_bucket",   # noqa: E731
                         (("le", le), ("route", "/generate")))].exemplar
    assert ex("0.01").labels == {"request_id": "b"} and ex("0.1").labels == {"request_id": "e"}
    assert ex("5.0").labels == {"request_id": "f"} and ex("5.0").value == 3.0
    assert ex("0.005").labels == {"request_id": "a"}
    assert ex("0.5") is None   # that bucket saw no request


def test_batch_buckets_tell_apart_each_power_of_two_up_to_the_batch_cap():
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert batch_buckets(1) == [1]
