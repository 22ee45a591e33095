"""The console's application: its routes, and refusals answered as pages (a use case's reason, unchanged)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.admin.console import (
    auth_routes,
    definition_routes,
    exports_routes,
    member_routes,
    object_routes,
    runs_routes,
    schedule_routes,
)
from services.admin.console.context import ConsoleContext
from services.admin.console.pages import Pages
from services.admin.console.sessions import SessionCodec
from services.admin.dependencies import AdminContext, DeadLetterReplays
from services.admin.problems import log_catalog_timed_out, publish_failed_detail
from services.admin.settings import AdminSettings
from shared.application.errors import PublishFailed, Refused
from shared.errors import CatalogTimedOut, StoredObjectInvalid
from shared.secrets_at_rest import SecretsUnreadable


def create_console(context: AdminContext, settings: AdminSettings, codec: SessionCodec) -> FastAPI:
    """The console over ``context`` (no OpenAPI document: its routes are pages, not the API)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    pages = Pages()
    app.state.codec = codec
    replays = context.replays or DeadLetterReplays.of(settings)  # the API's (install() sets them), one wiring
    app.state.console = ConsoleContext(
        admin=context,
        pages=pages,
        replays=replays,  # MAX_DEAD_LETTER_READS at once, with the API's
        session_seconds=settings.console_session_minutes * 60,
        secure_cookies=settings.console_secure_cookies,
    )

    def refusal_page(request: Request, status: int, reason: str) -> HTMLResponse:
        return pages.render(request, "error.html", status=status, status_code=status, reason=reason)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> HTMLResponse:
        return refusal_page(request, exc.status, exc.reason)

    @app.exception_handler(StoredObjectInvalid)
    async def _stored_invalid(request: Request, exc: StoredObjectInvalid) -> HTMLResponse:
        return refusal_page(request, 409, str(exc))

    @app.exception_handler(SecretsUnreadable)
    async def _secrets_unreadable(request: Request, exc: SecretsUnreadable) -> HTMLResponse:
        return refusal_page(request, 503, str(exc))

    @app.exception_handler(CatalogTimedOut)
    async def _catalog_timed_out(request: Request, exc: CatalogTimedOut) -> HTMLResponse:
        log_catalog_timed_out(request, exc)
        return refusal_page(request, 503, str(exc))

    @app.exception_handler(PublishFailed)
    async def _publish_failed(request: Request, exc: PublishFailed) -> HTMLResponse:
        return refusal_page(request, 503, publish_failed_detail(request, exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> HTMLResponse:
        # A hand-edited address (``?page=x``): said as a page, naming the parameter, never its value.
        where = "; ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors())
        return refusal_page(request, 422, f"this address has a value the page does not take: {where}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        return refusal_page(request, exc.status_code, str(exc.detail))

    for module in (
        auth_routes,
        exports_routes,
        definition_routes,
        schedule_routes,
        runs_routes,
        member_routes,
        object_routes,
    ):
        app.include_router(module.router)
    return app
