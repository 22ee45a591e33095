"""The admin API's request metrics, through the real app over real SQLite stores, read from its own /metrics:
counted by route template (never the raw path), method and status class, and timed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.samples import Sample
from starlette.types import ASGIApp, Receive, Scope, Send

from services.admin.request_metrics import install
from tests.admin_app import InProcessApi, in_process_api, seed
from tests.metrics_helpers import created_series, parse, values

REQUESTS = "member_export_admin_http_requests_total"
DURATION_COUNT = "member_export_admin_http_request_duration_seconds_count"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApi]:
    with in_process_api(tmp_path_factory.mktemp("request-metrics")) as in_process, in_process.client() as client:
        seed(client)
        yield in_process


def _scrape(api: InProcessApi) -> list[Sample]:
    with api.client(None) as anonymous:
        answer = anonymous.get("/metrics")
    assert answer.status_code == 200
    return parse(answer.text)


def _count(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(value for _, value in values(samples, name, **labels))


def _counted(api: InProcessApi, send, **labels: str) -> tuple[float, float]:
    """How much one call of ``send`` adds to the request counter and to the duration histogram for ``labels``."""
    timed = {key: value for key, value in labels.items() if key != "status_class"}
    before = _scrape(api)
    send()
    after = _scrape(api)
    return (
        _count(after, REQUESTS, **labels) - _count(before, REQUESTS, **labels),
        _count(after, DURATION_COUNT, **timed) - _count(before, DURATION_COUNT, **timed),
    )


def test_a_request_is_counted_and_timed_under_its_route_template_not_its_path(api: InProcessApi):
    with api.client() as client:
        counted = _counted(
            api,
            lambda: client.get("/api/v1/export-definitions/nightly").raise_for_status(),
            route="/api/v1/export-definitions/{name}",
            method="GET",
            status_class="2xx",
        )
        assert counted == (1, 1)
        # A 404 of a route that matched (no such run) is still that route's.
        run_id = uuid.uuid4()
        counted = _counted(
            api,
            lambda: client.get(f"/api/v1/runs/{run_id}"),
            route="/api/v1/runs/{run_id}",
            method="GET",
            status_class="4xx",
        )
        assert counted == (1, 1)
    routes = {labels["route"] for labels, _ in values(_scrape(api), REQUESTS)}
    assert not [route for route in routes if "nightly" in route or str(run_id) in route], routes


def test_a_path_no_route_matches_is_counted_as_unmatched(api: InProcessApi):
    with api.client() as client:
        answered = []
        counted = _counted(
            api,
            lambda: answered.append(client.get(f"/api/v2/{uuid.uuid4()}").status_code),
            route="unmatched",
            method="GET",
            status_class="4xx",
        )
    assert (answered, counted) == ([404], (1, 1))


def test_requests_refused_before_routing_and_unknown_methods_count_under_their_route(api: InProcessApi):
    with api.client(None) as anonymous:
        answered = []
        counted = _counted(
            api,
            lambda: answered.append(anonymous.post("/api/v1/export-definitions", json={}).status_code),
            route="/api/v1/export-definitions",
            method="POST",
            status_class="4xx",
        )
        # A method no client should send is "other": the label's values stay bounded.
        counted_other = _counted(
            api,
            lambda: answered.append(anonymous.request("BREW", "/api/v1/export-definitions").status_code),
            route="/api/v1/export-definitions",
            method="other",
            status_class="4xx",
        )
    assert (answered, counted, counted_other) == ([401, 405], (1, 1), (1, 1))


def test_the_admin_metrics_carry_build_info_and_no_created_series(api: InProcessApi):
    samples = _scrape(api)
    assert [value for _, value in values(samples, "member_export_build_info", service="admin")] == [1.0]
    assert created_series(samples) == []


def test_a_request_another_application_answers_counts_under_that_applications_route():
    """A middleware may hand requests to an application of its own (the console's gate does): its routes count."""
    inner = FastAPI()

    @inner.get("/inner/pages/{page}")
    def page(page: str) -> dict[str, str]:
        return {"page": page}

    outer = FastAPI()

    @outer.get("/outer")
    def outer_route() -> dict[str, str]:
        return {}

    class Gate:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            handler = inner if scope["type"] == "http" and scope["path"].startswith("/inner/") else self.app
            await handler(scope, receive, send)

    outer.add_middleware(Gate)
    install(outer, service="gate-test")
    labels = {"route": "/inner/pages/{page}", "method": "GET", "status_class": "2xx"}
    before = REGISTRY.get_sample_value(REQUESTS, labels) or 0.0

    async def requests() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://admin") as client:
            return [await client.get("/inner/pages/first"), await client.get("/inner/nowhere")]

    first, nowhere = asyncio.run(requests())
    assert (first.json(), nowhere.status_code) == ({"page": "first"}, 404)
    assert REGISTRY.get_sample_value(REQUESTS, labels) == before + 1
    assert REGISTRY.get_sample_value(REQUESTS, {**labels, "route": "/inner/pages/first"}) is None
