"""Errors as RFC 9457 problem details (``application/problem+json``), naming the field when one is wrong."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.admin.request_metrics import route_template
from shared.application.errors import Busy, DeadLettersUnreadable, PublishFailed, Refused
from shared.errors import CatalogTimedOut, StoredObjectInvalid
from shared.secrets_at_rest import SecretsUnreadable

log = structlog.get_logger(__name__)

#: The ``Retry-After`` (seconds) of a 503 that a retry may soon find done: ``Busy`` (another request does it now:
#: ``replay-being-published``, ``dead-letters-busy``) and ``dead-letters-unreadable``.
RETRY_AFTER_SECONDS = 10

PROBLEM_TYPE_BASE = "https://member-export.dev/problems/"
#: The media type of every error answer (RFC 9457), and the one the OpenAPI document declares them under.
PROBLEM_MEDIA_TYPE = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}


class FieldError(BaseModel):
    """One invalid field: where (dotted path) and why."""

    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, plus ``errors`` for validation failures."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


class ApiProblem(Exception):
    """Raise to answer with a problem."""

    def __init__(self, status: int, detail: str, *, slug: str | None = None, errors: list[FieldError] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.slug, self.errors = status, detail, slug, errors


def problem_response(
    request: Request,
    status: int,
    detail: str | None,
    *,
    slug: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """``status`` as problem details; ``headers`` are kept (a 405's ``Allow``), a 401 says ``WWW-Authenticate``."""
    problem = Problem(
        type=PROBLEM_TYPE_BASE + slug if slug else "about:blank",
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers or None,
    )


def field_errors(exc: ValidationError | RequestValidationError, *, skip_location: bool = False) -> list[FieldError]:
    """Field-naming errors, without the input values (they may hold secrets)."""
    errors = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        if skip_location and location and location[0] in {"body", "query", "path", "header"}:
            location = location[1:]
        errors.append(FieldError(field=".".join(location) or "(body)", message=str(error.get("msg", "invalid"))))
    return errors


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem details."""

    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(request, exc.status, exc.detail, slug=exc.slug, errors=exc.errors)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        # The use case's reason, unchanged: the same refusal reads the same through every entry point.
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if isinstance(exc, Busy) else None
        return problem_response(request, exc.status, exc.reason, slug=exc.slug, headers=headers)

    @app.exception_handler(StoredObjectInvalid)
    async def _stored_invalid(request: Request, exc: StoredObjectInvalid) -> JSONResponse:
        # Saved by an older release: what to fix is the answer (no value is in the message).
        return problem_response(request, 409, str(exc), slug="stored-object-invalid")

    @app.exception_handler(SecretsUnreadable)
    async def _secrets_unreadable(request: Request, exc: SecretsUnreadable) -> JSONResponse:
        # The operator's keys do not fit the stored secrets: not the caller's fault, and no retry helps.
        return problem_response(request, 503, str(exc), slug="secrets-unreadable")

    @app.exception_handler(CatalogTimedOut)
    async def _catalog_timed_out(request: Request, exc: CatalogTimedOut) -> JSONResponse:
        # A timeout the operator set on the catalog's database ended a read or write: nothing written, try again.
        log_catalog_timed_out(request, exc)
        return problem_response(request, 503, str(exc), slug="catalog-timed-out")

    @app.exception_handler(PublishFailed)
    async def _publish_failed(request: Request, exc: PublishFailed) -> JSONResponse:
        # Kafka down, unreachable or slower than PUBLISH_WAIT_SECONDS: what the request wrote before is kept.
        return problem_response(request, 503, publish_failed_detail(request, exc), slug="kafka-unavailable")

    @app.exception_handler(DeadLettersUnreadable)
    async def _dead_letters_unreadable(request: Request, exc: DeadLettersUnreadable) -> JSONResponse:
        # Kafka did not give the dead letters: no replay run recorded, try again.
        detail = dead_letters_unreadable_detail(request, exc)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return problem_response(request, 503, detail, slug="dead-letters-unreadable", headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc, skip_location=False)
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return problem_response(request, 422, detail, slug="invalid-request", errors=errors)

    @app.exception_handler(ValidationError)
    async def _invalid_object(request: Request, exc: ValidationError) -> JSONResponse:
        errors = field_errors(exc)
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return problem_response(request, 422, detail, slug="invalid-object", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The exception's headers are part of the answer: a 405 says which methods the path has (Allow).
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return problem_response(request, exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with the traceback by the server; the caller gets no internals.
        return problem_response(request, 500, "unexpected error; see the admin API's log")


def log_catalog_timed_out(request: Request, exc: CatalogTimedOut) -> None:
    """Tell the operator, once, of a request answered 503 ``catalog-timed-out`` (the API's or the console's): the
    operation (the method and the route's template, as the request metrics label it: no value of the request), what
    was read or written (its kind, and its name when the store said it) and the SQLSTATE; never the statement, never
    a secret."""
    log.warning(
        "catalog-timed-out",
        operation=f"{request.method} {route_template(request.scope, request.app.routes)}",
        kind=exc.kind or "catalog",
        name=exc.name,
        sqlstate=exc.sqlstate,
    )


def publish_failed_detail(request: Request, exc: PublishFailed) -> str:
    """What a request Kafka did not acknowledge is answered (the API's ``detail``, the console's page), logged once
    at warning: the operation (as :func:`log_catalog_timed_out` names it), what was published where, the client's
    error (never a credential: the connection settings are not in it) and the run recorded (queued, or cancelled),
    if one was."""
    run_id = exc.run_id
    log.warning(
        "kafka-unavailable",
        operation=f"{request.method} {route_template(request.scope, request.app.routes)}",
        what=exc.what,
        reason=exc.reason,
        outcome="unknown" if exc.unknown else "not published",
        run_id=str(run_id) if run_id else None,
    )
    if run_id is not None:
        return str(exc)
    outcome = "its outcome is unknown" if exc.unknown else "it was not published"
    return f"{exc}: {outcome}; what the request wrote in the catalog before it is kept"


def dead_letters_unreadable_detail(request: Request, exc: DeadLettersUnreadable) -> str:
    """What a request whose dead letters Kafka did not give is answered (the API's ``detail``, the console's page),
    logged once at warning: the operation (as :func:`log_catalog_timed_out` names it), the run replayed, if any, and
    the client's error (its first line, bounded; never a credential)."""
    log.warning(
        "dead-letters-unreadable",
        operation=f"{request.method} {route_template(request.scope, request.app.routes)}",
        replay_of=str(exc.replay_of) if exc.replay_of else None,
        reason=exc.reason,
    )
    return str(exc)


#: The methods a 405's ``Allow`` may name.
_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """The ``Allow`` of a 405: every method some route of the path takes (Starlette names only one route's).

    Asked of the routes themselves (``matches``), with a fresh scope per method: the public routing API.
    """
    allowed = []
    for method in _METHODS:
        scope = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", "")}
        scope["method"] = method
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.routes):
            allowed.append(method)
    return ", ".join(allowed)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting these statuses as problem details (under ``application/problem+json``)."""
    return {
        status: {"description": TITLES[status], "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}}
        for status in statuses
    }


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
#: FastAPI's own 422 body, which this API never sends (its 422 is a problem): taken out of the document.
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def openapi_with_problems(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app`` with every error answer declared as the server sends it.

    Statuses every operation of a kind can answer are added here, in one place: 401 and 403 where a
    bearer token is needed (``security``), and 503 there too (every such operation reads the catalog, which may
    time out: ``catalog-timed-out``), 422 where there is a parameter or a body to refuse, 400 and
    413 where there is a body to decode and bound. Each error response has the Problem schema under
    ``application/problem+json`` and nothing else.
    """
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem.pop("$defs", {}))
    components["Problem"] = problem
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        components.pop(name, None)
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            wanted = [status for status, applies in _COMMON_STATUSES if applies(operation)]
            for status in wanted:
                responses.setdefault(str(status), {"description": TITLES[status]})
            for status, response in responses.items():
                if status[:1] in {"4", "5"}:
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}
                    if status == "422":
                        response["description"] = TITLES[422] + ": `errors` names each invalid field"
                    # A route that says its own 503s (a read's: no Idempotency-Key to retry with) keeps its words.
                    if status == "503" and response.get("description", TITLES[503]) == TITLES[503]:
                        response["description"] = TITLES[503] + _UNAVAILABLE
    _declare_no_nul(schema)
    app.openapi_schema = schema
    return schema


# Every text the API takes (a path segment, a query value, a body's string or map key) is refused with a 422 when it
# holds a NUL character (PostgreSQL's text cannot hold one): the document says so, so a client generated from it (or
# a contract fuzzer) knows a NUL is not a valid value rather than meeting an undeclared refusal. Only what requests
# carry: an answer (a problem naming a refused map key) may hold one.
NO_NUL_PATTERN = "^[^\\u0000]*$"
_REF_PREFIX = "#/components/schemas/"


def _declare_no_nul(schema: dict[str, Any]) -> None:
    """Give every free-text string and map key a request carries the pattern that excludes NUL (in place)."""
    components = schema.get("components", {}).get("schemas", {})
    pending: list[Any] = []
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            pending.extend(parameter.get("schema") for parameter in operation.get("parameters", []))
            pending.append(operation.get("requestBody"))
    seen: set[str] = set()
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith(_REF_PREFIX) and reference not in seen:
                seen.add(reference)
                pending.append(components.get(reference.removeprefix(_REF_PREFIX)))
            if node.get("type") == "string" and not {"pattern", "enum", "const"} & node.keys():
                node["pattern"] = NO_NUL_PATTERN
            if node.get("type") == "object" and node.get("additionalProperties") not in (None, False):
                node.setdefault("propertyNames", {"pattern": NO_NUL_PATTERN})
            pending.extend(value for key, value in node.items() if key != "$ref")


def _with_token(operation: dict[str, Any]) -> bool:
    return bool(operation.get("security"))


def _with_input(operation: dict[str, Any]) -> bool:
    return bool(operation.get("parameters") or operation.get("requestBody"))


def _with_body(operation: dict[str, Any]) -> bool:
    return "requestBody" in operation


#: 400 where a body may not even be decoded (not UTF-8); 422 is for a body that is JSON but invalid.
_COMMON_STATUSES = [
    (400, _with_body),
    (401, _with_token),
    (403, _with_token),
    (413, _with_body),
    (422, _with_input),
    (503, _with_token),
]
#: What a 503 says in the document (the problem's ``type`` says which).
_UNAVAILABLE = (
    ": the catalog's database timed out (`catalog-timed-out`: nothing was written, try again), Kafka did not "
    "acknowledge what the request publishes (`kafka-unavailable`: `detail` names it, and the run recorded queued "
    "or cancelled if one was; retry a run's request with the same Idempotency-Key, a cancel by cancelling again), "
    "or a dependency is not usable as configured"
)
