"""The admin API application: ``create_app(context)`` builds it; routes live in objects_routes and runs_routes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.admin import problems
from services.admin.bearer_tokens import Permission, Principal, TokenStore
from shared.catalog import Catalog
from shared.kafka import Outgoing
from shared.querystore import MemberReader
from shared.topics import Topics

log = structlog.get_logger(__name__)
API_PREFIX = "/api/v1"


@dataclass
class AdminContext:
    """What the routes use: the catalog, the tokens, a way to publish events and to read members."""

    catalog: Catalog
    tokens: TokenStore
    topics: Topics
    publish: Callable[[list[Outgoing]], None]
    #: The member store's reader (dry runs), opened on first use and shared: its engine pools connections.
    reader: Callable[[], MemberReader]
    public_url: str = ""


_bearer = HTTPBearer(auto_error=False, description="An API token configured by the operators.")


def context_of(request: Request) -> AdminContext:
    context: AdminContext = request.app.state.context
    return context


def principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller, or 401: no token, or a token nobody configured."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise problems.ApiProblem(401, "a bearer token is required", slug="unauthenticated")
    caller = context_of(request).tokens.authenticate(credentials.credentials)
    if caller is None:
        raise problems.ApiProblem(401, "the bearer token is not valid", slug="unauthenticated")
    return caller


def requires(permission: Permission) -> Callable[[Principal], Principal]:
    """A dependency: the caller, if their role grants ``permission``; else 403."""

    def check(caller: Annotated[Principal, Depends(principal)]) -> Principal:
        if not caller.may(permission):
            raise problems.ApiProblem(
                403, f"role '{caller.role.value}' may not {permission.value.replace('_', ' ')}", slug="forbidden"
            )
        return caller

    return check


def create_app(context: AdminContext) -> FastAPI:
    """The admin API over ``context``."""
    from services.admin import objects_routes, runs_routes

    app = FastAPI(
        title="member-export admin API",
        version="1",
        description="Manage connection profiles, HTTP API templates, saved queries and export definitions; "
        "run exports on demand; follow their runs. Every route needs a bearer token except /healthz and /metrics. "
        "Errors are RFC 9457 problem details.",
        responses=problems.problem_responses(400, 401, 403, 422),
    )
    app.state.context = context
    problems.install(app)

    @app.get("/healthz", tags=["operations"], summary="Liveness and catalog reachability")
    def healthz() -> dict[str, Any]:
        context.catalog.definitions_fingerprint()  # raises (500) when the catalog is unreachable
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(objects_routes.router, prefix=API_PREFIX)
    app.include_router(runs_routes.router, prefix=API_PREFIX)
    return app
