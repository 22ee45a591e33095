"""The probes: live while the loop comes round, ready unless it is waiting out a dependency; served over HTTP
beside /metrics."""

from __future__ import annotations

import httpx

from devtools.processes import free_port
from shared.health import Health, serve_health_and_metrics
from shared.metrics import RECORDS_CONSUMED
from tests.metrics_helpers import created_series, parse, values


def test_a_loop_that_stops_coming_round_is_not_live():
    now = [0.0]
    health = Health(stall_seconds=60, clock=lambda: now[0])
    assert health.live() == (True, "ok")
    now[0] = 59.0
    assert health.live()[0]
    now[0] = 61.0
    assert health.live() == (False, "the main loop has not come round for 61 s")
    assert not health.ready()[0], "not live is not ready either"
    health.beat()
    assert health.live()[0]


def test_waiting_out_a_dependency_is_live_but_not_ready_until_it_recovers():
    health = Health(stall_seconds=60)
    health.waiting("OperationalError: connection refused")
    assert health.live()[0], "an outage is not a reason to restart the pod"
    assert health.ready() == (False, "waiting out a dependency: OperationalError: connection refused")
    health.recovered()
    assert health.ready() == (True, "ok")


def test_the_probes_and_the_metrics_are_served_over_http():
    health = Health(stall_seconds=60)
    port = free_port()
    server = serve_health_and_metrics(port, health)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/livez").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200
        health.waiting("the catalog is away")
        answer = httpx.get(f"{base}/readyz")
        assert (answer.status_code, answer.text) == (503, "waiting out a dependency: the catalog is away\n")
        assert httpx.get(f"{base}/livez").status_code == 200
        health.recovered()
        assert httpx.get(f"{base}/readyz").status_code == 200
        RECORDS_CONSUMED.labels(service="health-test", topic="t").inc()
        samples = parse(httpx.get(f"{base}/metrics").text)
        assert values(samples, "member_export_consumer_records_total", service="health-test") == [
            ({"service": "health-test", "topic": "t"}, 1.0)
        ]
        assert created_series(samples) == []
        assert httpx.get(f"{base}/ready").status_code == 404, "a probe with a wrong path fails"
    finally:
        server.shutdown()
        server.server_close()
