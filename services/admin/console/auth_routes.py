"""Sign-in with an API token, sign-out, and the console's static assets."""

from __future__ import annotations

import secrets
from functools import cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from services.admin.console.context import console_of
from services.admin.console.forms import form_of
from services.admin.console.gate import PREFIX, SIGN_IN
from services.admin.console.sessions import SESSION_COOKIE, SIGN_IN_COOKIE

router = APIRouter(prefix=PREFIX)

#: Every asset served, with its media type: nothing else of the package is reachable.
ASSETS = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}


@cache
def asset_bytes(name: str) -> bytes:
    return (resources.files("services.admin.console") / "static" / name).read_bytes()


@router.get("/static/{name}")
def static_asset(name: str) -> Response:
    if name not in ASSETS:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(
        asset_bytes(name),
        media_type=ASSETS[name],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def _next_page(wanted: str | None) -> str:
    """Where to go after signing in: a console page only (never another site)."""
    if wanted and wanted.startswith(PREFIX + "/") and not wanted.startswith("//") and "\\" not in wanted:
        return wanted
    return f"{PREFIX}/exports"


@router.get("")
@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/exports", status_code=303)


@router.get("/sign-in")
def sign_in_page(
    request: Request, wanted: Annotated[str | None, Query(alias="next", max_length=2_000)] = None
) -> Response:
    return _sign_in_form(request, _next_page(wanted), console_of(request).secure_cookies)


def _sign_in_form(request: Request, next_page: str, secure: bool, *, error: str | None = None) -> Response:
    # A CSRF token for the sign-in itself (no session yet): the same random value in a cookie and in the form.
    csrf = secrets.token_urlsafe(32)
    page = console_of(request).pages.render(
        request, "sign_in.html", status=401 if error else 200, csrf=csrf, next_page=next_page, error=error
    )
    page.set_cookie(SIGN_IN_COOKIE, csrf, max_age=3600, path=PREFIX, secure=secure, httponly=True, samesite="strict")
    return page


@router.post("/sign-in")
def sign_in(request: Request) -> Response:
    console, form = console_of(request), form_of(request)
    token, next_page = form.text("token"), _next_page(form.optional("next"))
    actor = console.admin.tokens.authenticate(token) if token else None
    if actor is None:
        return _sign_in_form(request, next_page, console.secure_cookies, error="This token is not valid.")
    _, cookie = request.app.state.codec.open_session(token)
    answer = RedirectResponse(next_page, status_code=303)
    answer.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=console.session_seconds,
        path=PREFIX,
        secure=console.secure_cookies,
        httponly=True,
        samesite="strict",
    )
    answer.delete_cookie(SIGN_IN_COOKIE, path=PREFIX)
    return answer


@router.post("/sign-out")
def sign_out(request: Request) -> Response:
    answer = RedirectResponse(SIGN_IN, status_code=303)
    answer.delete_cookie(SESSION_COOKIE, path=PREFIX, secure=console_of(request).secure_cookies, httponly=True)
    return answer
