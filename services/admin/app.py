"""The admin API application: ``create_app(context)`` builds it; routes live in objects_routes and runs_routes."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.admin import (
    attempts_routes,
    audit_routes,
    console,
    dead_letters_routes,
    deliveries_routes,
    docs_assets,
    objects_routes,
    problems,
    runs_routes,
)
from services.admin.dependencies import AdminContext
from services.admin.request_limits import RequestLimits
from services.admin.request_metrics import install as install_request_metrics

log = structlog.get_logger(__name__)
API_PREFIX = "/api/v1"


def create_app(context: AdminContext, *, max_body_bytes: int = 1_048_576) -> FastAPI:
    """The admin API over ``context``."""

    app = FastAPI(
        title="member-export admin API",
        # Swagger UI and ReDoc come from docs_assets: their assets are served here, not loaded from a CDN.
        docs_url=None,
        redoc_url=None,
        version="1",
        description="Manage connection profiles, HTTP API templates, saved queries and export definitions; "
        "run exports on demand; follow their runs. Every route needs a bearer token except /livez, /healthz, "
        "/metrics and the documentation (/docs, /redoc, /openapi.json). "
        "Errors are RFC 9457 problem details (application/problem+json).",
    )
    app.state.context = context
    app.add_middleware(RequestLimits, authenticate=context.tokens.authenticate, max_body_bytes=max_body_bytes)
    console.install(app, context)  # the web console under /console: outside RequestLimits (it has its own sessions)
    install_request_metrics(app)  # added last: the outermost middleware, it counts what RequestLimits refuses
    problems.install(app)
    app.openapi = lambda: problems.openapi_with_problems(app)  # type: ignore[method-assign]

    @app.get("/livez", tags=["operations"], summary="Liveness: the server answers (no dependency is asked)")
    def livez() -> dict[str, Any]:
        # The kubelet's liveness probe: a catalog outage must not restart every admin pod (readiness says it).
        return {"status": "ok"}

    @app.get("/healthz", tags=["operations"], summary="Readiness: the catalog is reachable")
    def healthz() -> dict[str, Any]:
        context.runs.list_runs(limit=1)  # raises (500) when the catalog is unreachable
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    docs_assets.install(app)
    app.include_router(objects_routes.router, prefix=API_PREFIX)
    app.include_router(runs_routes.router, prefix=API_PREFIX)
    app.include_router(audit_routes.router, prefix=API_PREFIX)
    app.include_router(attempts_routes.router, prefix=API_PREFIX)
    app.include_router(deliveries_routes.router, prefix=API_PREFIX)
    app.include_router(dead_letters_routes.router, prefix=API_PREFIX)
    return app
