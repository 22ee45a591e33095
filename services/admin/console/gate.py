"""The console's gate (pure ASGI): requests under ``/console`` go to the console, signed in, CSRF-checked, bounded.

The admin API's own middleware wants a bearer token on every write, which a browser's form never
carries; the console has its session cookie instead. So this gate sits in front of the API and hands
``/console`` requests to the console application directly, after doing for them what the API's
middleware does for its own requests, the console's way:

- a request other than the sign-in page and the static assets needs a valid session (its token is
  authenticated again on every request): a page asked without one is sent to the sign-in page, a
  write without one is refused before any of its body is read;
- a write's body is a form (``application/x-www-form-urlencoded``), at most ``max_body_bytes``;
- a write carries the session's CSRF token (the ``X-CSRF-Token`` header htmx sends, or the form's
  ``csrf_token`` field), and its ``Origin``, when the browser sends one, is this host: a form posted
  from another page is refused, whatever cookies it rides on.

What the gate found is handed to the routes in the request's state: ``console_actor``,
``console_session`` and, for a write, ``console_form`` (the parsed fields).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from html import escape
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.admin.console.sessions import SESSION_COOKIE, SIGN_IN_COOKIE, Session, SessionCodec
from services.admin.request_limits import nul_refusal
from shared.application.actors import Actor

PREFIX = "/console"
SIGN_IN = f"{PREFIX}/sign-in"
STATIC = f"{PREFIX}/static/"
#: The sign-in form is the one write without a session: it holds a token and a CSRF token, nothing more.
SIGN_IN_MAX_BYTES = 8_192
FORM_TYPE = "application/x-www-form-urlencoded"


def under_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class ConsoleGate:
    """Route ``/console`` requests to ``console`` through the checks above; everything else to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        console: ASGIApp,
        codec: SessionCodec,
        authenticate: Callable[[str], Actor | None],
        max_body_bytes: int,
    ) -> None:
        self.app, self.console, self.codec = app, console, codec
        self.authenticate, self.max_body_bytes = authenticate, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not under_console(scope["path"]):
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if (refusal := nul_refusal(scope)) is not None:
            # The API refuses these before routing (RequestLimits); the console sits outside that middleware, and a
            # NUL looked up in PostgreSQL's text is a 500 there (session 50's hunt).
            await _answer(send, 400, f"Refused: {refusal}.")
            return
        if path.startswith(STATIC) or (path == SIGN_IN and method in {"GET", "HEAD"}):
            await self.console(scope, receive, send)
            return
        headers = _headers(scope)
        cookies = cookie_parser(headers.get("cookie", ""))
        state = scope.setdefault("state", {})
        if method in {"GET", "HEAD"}:
            session, actor = self._signed_in(cookies)
            if actor is None:
                await _to_sign_in(scope, send, headers)
                return
            state.update(console_session=session, console_actor=actor)
            await self.console(scope, receive, send)
            return
        if method != "POST":
            await _answer(send, 405, "This page takes GET and POST only.", [(b"allow", b"GET, HEAD, POST")])
            return
        if path == SIGN_IN:
            expected, limit = cookies.get(SIGN_IN_COOKIE), SIGN_IN_MAX_BYTES
        else:
            session, actor = self._signed_in(cookies)
            if session is None or actor is None:
                # Before the body is read: an anonymous caller cannot make the server buffer anything.
                await _answer(send, 401, "Your session has ended: sign in again.", _sign_in_link(headers))
                return
            state.update(console_session=session, console_actor=actor)
            expected, limit = session.csrf, self.max_body_bytes
        if not _same_origin(headers):
            await _answer(send, 403, "Refused: this form was sent from another site.")
            return
        if headers.get("content-type", FORM_TYPE).split(";")[0].strip().lower() != FORM_TYPE:
            await _answer(send, 415, "The console takes forms (application/x-www-form-urlencoded) only.")
            return
        body = await _bounded_body(receive, headers, limit)
        if body is None:
            await _answer(send, 413, f"The form is larger than {limit} bytes.")
            return
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=2_000)
        except (UnicodeDecodeError, ValueError):
            await _answer(send, 400, "The form could not be read.")
            return
        sent = headers.get("x-csrf-token") or next(iter(form.get("csrf_token", [])), None)
        if not expected or sent is None or not hmac.compare_digest(sent.encode(), expected.encode()):
            await _answer(send, 403, "Refused: the form's CSRF token is missing or wrong. Reload the page and retry.")
            return
        state["console_form"] = form
        await self.console(scope, _replaying(body, receive), send)

    def _signed_in(self, cookies: dict[str, str]) -> tuple[Session | None, Actor | None]:
        session = self.codec.read(cookies.get(SESSION_COOKIE))
        return session, (self.authenticate(session.token) if session is not None else None)


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


def _same_origin(headers: dict[str, str]) -> bool:
    """No ``Origin`` (an older browser, a same-origin GET turned POST by hand), or one naming this host."""
    origin = headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc.lower() == headers.get("host", "").lower()


async def _bounded_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes | None:
    """The whole body, or None as soon as it is larger than ``limit`` (by its Content-Length or as read)."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the already-read body once, then waits on the real one (for a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _sign_in_link(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    # htmx follows HX-Redirect with a full page load: a fragment request lands on the sign-in page.
    return [(b"hx-redirect", SIGN_IN.encode())] if headers.get("hx-request") else []


async def _to_sign_in(scope: Scope, send: Send, headers: dict[str, str]) -> None:
    if headers.get("hx-request"):
        await _answer(send, 200, "Signed out.", _sign_in_link(headers))
        return
    wanted = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
    location = f"{SIGN_IN}?next={quote(wanted, safe='')}"
    await send({"type": "http.response.start", "status": 303, "headers": [(b"location", location.encode())]})
    await send({"type": "http.response.body", "body": b""})


async def _answer(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A small page saying why (the gate answers before the console's pages and templates are involved)."""
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Member export console</title></head>'
        f'<body><main><h1>{status}</h1><p role="alert">{escape(message)}</p>'
        f'<p><a href="{SIGN_IN}">Sign in</a></p></main></body></html>'
    ).encode()
    start = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *(headers or []),
    ]
    if status >= 400:
        start.append((b"connection", b"close"))  # the request's body may be unread
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})
