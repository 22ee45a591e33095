"""The admin API's request metrics: count and time every HTTP request by route template (pure ASGI middleware).

The ``route`` label is the matched route's template (``/api/v1/runs/{run_id}``), never the raw path: a path
holds ids and names without bound. A request no route matches is ``unmatched``. Requests refused before
routing (401, 413 by :mod:`services.admin.request_limits`) are counted under the route they were for.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Importing shared.metrics turns the _created series off in this process too.
from shared.metrics import record_build_info

#: The ``route`` label of a request no route matches (404s of unknown paths).
UNMATCHED = "unmatched"
#: The ``method`` label's values; any other method a client sends is ``other`` (the label stays bounded).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter(
    "member_export_admin_http_requests_total",
    "Admin API HTTP requests, by route template, method and status class.",
    ["route", "method", "status_class"],
)
REQUEST_SECONDS = Histogram(
    "member_export_admin_http_request_duration_seconds",
    "Admin API HTTP request duration (until the answer's last byte), by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def route_template(scope: Scope, routes: Iterable[BaseRoute]) -> str:
    """The template of the route that handles the request (``/api/v1/runs/{run_id}``), or :data:`UNMATCHED`.

    Matched here, in the router's order, rather than read from what the router leaves in the scope: requests
    refused before routing (401, 413) count under their route too, and the route recent FastAPI releases record
    there is the included router's own (``/runs/{run_id}``, without its prefix). A route matching the path but
    not the method counts (its 405 is the route's).
    """
    partial = None
    for route in _flattened(routes):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return _template(route)
        if match is Match.PARTIAL and partial is None:
            partial = route
    return UNMATCHED if partial is None else _template(partial)


def _flattened(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes, an included router's own routes in its place (with their full path)."""
    for route in routes:
        # FastAPI keeps included routers as one route each, whose candidates carry the full path.
        nested = getattr(route, "effective_candidates", None)
        if callable(nested):
            yield from _flattened(nested())
        else:
            yield route


def _template(route: BaseRoute) -> str:
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else UNMATCHED


def _inner_route(scope: Scope, handler: Any, routes: list[BaseRoute]) -> str:
    """The route template in the application that answered, when a middleware handed the request to another one
    (the console's gate does: Starlette records the application it ran in ``scope["app"]``)."""
    inner = getattr(getattr(handler, "router", None), "routes", None)
    if not isinstance(inner, list) or inner is routes:
        return UNMATCHED
    return route_template(scope, inner)


def status_class(status: int) -> str:
    """``2xx``, ``3xx``, ``4xx`` or ``5xx``."""
    return f"{status // 100}xx"


class RequestMetrics:
    """Counts and times each HTTP request of ``app``; ``routes`` are the application's routes (read at each
    request, so routes added after the middleware count)."""

    def __init__(self, app: ASGIApp, *, routes: list[BaseRoute]) -> None:
        self.app, self.routes = app, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Matched before the application runs: routing updates the scope (a mount's root_path, say).
        original = dict(scope)
        route = route_template(original, self.routes)
        status = 500  # what the server answers when the application raises before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if route == UNMATCHED:
                route = _inner_route(original, scope.get("app"), self.routes)
            method = scope["method"] if scope["method"] in METHODS else "other"
            REQUESTS.labels(route=route, method=method, status_class=status_class(status)).inc()
            REQUEST_SECONDS.labels(route=route, method=method).observe(time.perf_counter() - started)


def install(app: Any, service: str = "admin") -> None:
    """Count and time ``app``'s requests (outermost: requests refused by other middleware count too), and set
    ``member_export_build_info`` for ``service``."""
    record_build_info(service)
    app.add_middleware(RequestMetrics, routes=app.router.routes)
