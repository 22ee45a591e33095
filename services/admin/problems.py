"""Errors as RFC 9457 problem details (``application/problem+json``), naming the field when one is wrong."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.application.errors import Refused
from shared.errors import StoredObjectInvalid
from shared.secrets_at_rest import SecretsUnreadable

PROBLEM_TYPE_BASE = "https://member-export.dev/problems/"
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
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
) -> JSONResponse:
    problem = Problem(
        type=PROBLEM_TYPE_BASE + slug if slug else "about:blank",
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
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
        return problem_response(request, exc.status, exc.reason, slug=exc.slug)

    @app.exception_handler(StoredObjectInvalid)
    async def _stored_invalid(request: Request, exc: StoredObjectInvalid) -> JSONResponse:
        # Saved by an older release: what to fix is the answer (no value is in the message).
        return problem_response(request, 409, str(exc), slug="stored-object-invalid")

    @app.exception_handler(SecretsUnreadable)
    async def _secrets_unreadable(request: Request, exc: SecretsUnreadable) -> JSONResponse:
        # The operator's keys do not fit the stored secrets: not the caller's fault, and no retry helps.
        return problem_response(request, 503, str(exc), slug="secrets-unreadable")

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
        return problem_response(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with the traceback by the server; the caller gets no internals.
        return problem_response(request, 500, "unexpected error; see the admin API's log")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting these statuses as problem details."""
    return {
        status: {"model": Problem, "content": {"application/problem+json": {}}, "description": TITLES[status]}
        for status in statuses
    }
