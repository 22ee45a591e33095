"""Requests are authenticated before their body is read, and their bodies are bounded (pure ASGI middleware).

An unauthenticated caller must not be able to make the API buffer megabytes (the pod's memory limit is
a few hundred MiB): a write without a valid bearer token is answered 401 before any of its body is
read, and a body over the limit is answered 413, by its ``Content-Length`` at once, or as soon as a
chunked body passes the limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.admin.problems import PROBLEM_TYPE_BASE, TITLES

#: Methods whose requests carry a body to bound.
WITH_BODY = {"POST", "PUT", "PATCH"}


class RequestLimits:
    """Refuse unauthenticated writes before reading them, and bodies over ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, *, authenticate: Callable[[str], object | None], max_body_bytes: int) -> None:
        self.app, self.authenticate, self.max_body_bytes = app, authenticate, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (refusal := nul_refusal(scope)) is not None:
            await _problem(scope, send, 422, refusal, "invalid-request")
            return
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token or self.authenticate(token.strip()) is None:
            detail = "a bearer token is required" if not token else "the bearer token is not valid"
            await _problem(scope, send, 401, detail, "unauthenticated")
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _problem(scope, send, 413, self._too_large(), "body-too-large")
            return
        received = 0
        started = answered = False

        async def bounded_receive() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Answered here: the framework turns errors raised while it reads a body into a 400.
                    # The application then sees the client gone and its own answer is dropped.
                    if not started and not answered:
                        answered = True
                        await _problem(scope, send, 413, self._too_large(), "body-too-large")
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, bounded_receive, tracking_send)

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_body_bytes} bytes (EXPORT_ADMIN_MAX_BODY_BYTES)"


def nul_refusal(scope: Scope) -> str | None:
    """Why a request naming a NUL character in its path or a query value is refused (None: it names none). No name
    or value holds one (PostgreSQL refuses NUL in text: looked up, it was a 500 there and a 404 on SQLite)."""
    if "\x00" in scope["path"]:
        return "path: a NUL character (%00) is not allowed in a path segment"
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="replace"):
        if "\x00" in name or "\x00" in value:
            return f"query parameter '{name.replace(chr(0), '%00')}': a NUL character (%00) is not allowed"
    return None


async def _problem(scope: Scope, send: Send, status: int, detail: str, slug: str) -> None:
    """Answer an RFC 9457 problem without reading the request any further."""
    body = json.dumps(
        {
            "type": PROBLEM_TYPE_BASE + slug,
            "title": TITLES.get(status, "Error"),
            "status": status,
            "detail": detail,
            "instance": scope.get("path", ""),
        }
    ).encode()
    headers: list[Any] = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    # The request is not read to its end: the connection is closed after the answer.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
