"""A real HTTP receiver on 127.0.0.1 that records every request, for the demo and the tests.

It can be told to answer every request with a given status (``reject_status``), to answer 400 to any
request holding one of some members (``reject_members``, ids), or the first N with 503
(``fail_first``, optionally with ``Retry-After``), a status of its own to any request holding one of some
members (``member_statuses``), the first N with 429 (``throttle_first``), a share
of requests with 503/429 (``share_503``, ``share_429``), or act as an OAuth token endpoint plus a
resource server checking the token (``oauth_client``), or echo each request's headers back in its answer's
body and its Authorization in an ``X-Echo-Authorization`` header (``echo_headers``), or start each refusal's
body with a message quoting some of the request's headers (``quote_headers``) and add a text of the test's to it
(``refusal_detail``), so tests can check
what the pipeline does with a partner API that refuses or stumbles. Receipts are kept member by member.
Given an ``ssl_context``, it speaks HTTPS (requiring a client certificate if the context does: each receipt
then holds the client's certificate, and failed handshakes are counted); a receipt parses form and XML bodies too.

    python -m devtools.http_receiver --port 8080 [--reject-status 400]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs
from xml.etree.ElementTree import Element

import httpx
from defusedxml.ElementTree import fromstring

from devtools.processes import Managed, serving_thread


@dataclass
class Receipt:
    """One request as received; header names are case-insensitive, as HTTP has them."""

    method: str
    path: str
    headers: httpx.Headers
    body: Any
    status: int
    raw: bytes = b""
    #: When it arrived (wall clock, seconds since the epoch).
    received_at: float = field(default_factory=time.time)
    #: Over HTTPS with a client certificate: the certificate's subject, as ``ssl`` gives it (else None).
    client_certificate: dict[str, Any] | None = None

    def form(self) -> dict[str, list[str]]:
        """The body parsed as ``application/x-www-form-urlencoded`` (ValueError if it is not), fields in order."""
        return parse_qs(self.raw.decode("ascii"), keep_blank_values=True, strict_parsing=True)

    def xml(self) -> Element:
        """The body parsed as XML, without DTD or entities (a ParseError if it is not well-formed)."""
        root: Element = fromstring(self.raw, forbid_dtd=True)
        return root

    @property
    def members(self) -> list[dict[str, Any]]:
        if isinstance(self.body, list):
            return [m for m in self.body if isinstance(m, dict)]
        if isinstance(self.body, dict):
            members = self.body.get("members")
            return members if isinstance(members, list) else [self.body]
        return []


@dataclass
class ReceiverState:
    reject_status: int | None = None
    reject_members: frozenset[Any] = frozenset()
    #: A request holding one of these members (ids) is answered with its status (e.g. 503 or 422).
    member_statuses: dict[Any, int] = field(default_factory=dict)
    fail_first: int = 0
    throttle_first: int = 0
    retry_after: str | None = None
    #: Flaky mode: this share of requests answers 503, and this share 429 with ``Retry-After: 1``.
    share_503: float = 0.0
    share_429: float = 0.0
    random: random.Random = field(default_factory=lambda: random.Random(7))
    #: OAuth mode: (client id, secret) for POST /oauth/token; every other request needs a live token.
    oauth_client: tuple[str, str] | None = None
    live_tokens: set[str] = field(default_factory=set)
    tokens_issued: int = 0
    #: Echo mode: each answer's body holds the request's headers, as a careless partner's error page does.
    echo_headers: bool = False
    #: Quote mode: a refusal's body starts with an ``error`` quoting these request headers (those sent), as a
    #: partner saying which credential it refused does.
    quote_headers: tuple[str, ...] = ()
    #: A refusal's body also holds this text under ``detail`` (a careless receiver quoting, say, the signing
    #: secret it verifies signatures with).
    refusal_detail: str = ""
    #: Seconds each request is held before it is answered (a slow partner), and the concurrency seen.
    delay: float = 0.0
    active: int = 0
    max_active: int = 0
    receipts: list[Receipt] = field(default_factory=list)
    #: HTTPS: handshakes that failed (no client certificate, an untrusted one, a client refusing ours).
    failed_handshakes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue_token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """The token endpoint: client credentials in, a bearer token out (or 401)."""
        given = (form.get("client_id", [""])[0], form.get("client_secret", [""])[0])
        if form.get("grant_type") != ["client_credentials"] or given != self.oauth_client:
            return 401, {"error": "invalid_client"}
        self.tokens_issued += 1
        token = f"token-{self.tokens_issued}"
        self.live_tokens.add(token)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            # The client went away mid-body (e.g. a SIGKILLed dispatcher): like any real
            # server, drop the aborted request instead of recording a truncated one.
            self.close_connection = True
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:  # not JSON, or not even UTF-8 (json.JSONDecodeError and UnicodeDecodeError both are)
            body = raw.decode("utf-8", errors="replace")
        state = self.server.state
        if state.delay:
            with state.lock:
                state.active += 1
                state.max_active = max(state.max_active, state.active)
            time.sleep(state.delay)  # the slow partner being simulated
            with state.lock:
                state.active -= 1
        with state.lock:
            if state.oauth_client is not None and self.path == "/oauth/token":
                status, answer = state.issue_token(parse_qs(raw.decode()))
                self._answer(status, answer)
                return
            retry_after = state.retry_after
            draw = state.random.random()
            if state.fail_first > 0:
                state.fail_first -= 1
                status = 503
            elif state.throttle_first > 0:
                state.throttle_first -= 1
                status, retry_after = 429, "0"
            elif draw < state.share_503:
                status = 503
            elif draw < state.share_503 + state.share_429:
                status, retry_after = 429, "1"
            elif state.oauth_client is not None and (
                self.headers.get("Authorization", "").removeprefix("Bearer ") not in state.live_tokens
            ):
                status = 401
            else:
                status = state.reject_status or 200
            receipt = Receipt(self.command, self.path, httpx.Headers(self.headers.items()), body, 0, raw)
            if isinstance(self.connection, ssl.SSLSocket):
                peer = self.connection.getpeercert()
                receipt.client_certificate = dict(peer) if peer else None
            if status < 300 and any(m.get("id") in state.reject_members for m in receipt.members):
                status = 400
            if status < 300 and state.member_statuses:
                status = next(
                    (state.member_statuses[i] for m in receipt.members if (i := m.get("id")) in state.member_statuses),
                    status,
                )
            receipt.status = status
            state.receipts.append(receipt)
            echo = state.echo_headers
            quoted = [(name, self.headers[name]) for name in state.quote_headers if name in self.headers]
            detail = state.refusal_detail
        body_out: dict[str, Any] = {"accepted": status < 300}
        if quoted and status >= 300:
            body_out = {"error": "; ".join(f"{name} {value} is not accepted" for name, value in quoted), **body_out}
        if detail and status >= 300:
            body_out["detail"] = detail
        extra = {}
        if echo:
            body_out["headers"] = dict(self.headers.items())
            extra["X-Echo-Authorization"] = self.headers.get("Authorization", "")
        self._answer(status, body_out, retry_after if status in (429, 503) else None, extra)

    def _answer(
        self, status: int, answer: dict[str, Any], retry_after: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps(answer).encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = _handle  # noqa: N815 - http.server names

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, state: ReceiverState, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = state
        self.ssl_context = ssl_context

    def finish_request(self, request: Any, client_address: Any) -> None:
        # On the request's own thread: a slow or failing TLS handshake does not hold up the accepting one.
        if self.ssl_context is not None:
            try:
                request.settimeout(10)
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ValueError):
                with self.state.lock:
                    self.state.failed_handshakes += 1
                return
            try:
                super().finish_request(request, client_address)
            finally:
                # The wrapped socket replaced (detached) the accepted one, which the server closes: close this.
                with contextlib.suppress(OSError):
                    request.close()
            return
        super().finish_request(request, client_address)


class HttpReceiver(Managed):
    """Start with ``start()`` (or as a context manager); ``url`` is where it listens."""

    def __init__(
        self,
        port: int = 0,
        reject_status: int | None = None,
        fail_first: int = 0,
        retry_after: str | None = None,
        reject_members: frozenset[Any] = frozenset(),
        share_503: float = 0.0,
        share_429: float = 0.0,
        oauth_client: tuple[str, str] | None = None,
        throttle_first: int = 0,
        delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
        echo_headers: bool = False,
        quote_headers: tuple[str, ...] = (),
        refusal_detail: str = "",
    ) -> None:
        self.state = ReceiverState(
            reject_status=reject_status,
            reject_members=reject_members,
            fail_first=fail_first,
            throttle_first=throttle_first,
            retry_after=retry_after,
            share_503=share_503,
            share_429=share_429,
            oauth_client=oauth_client,
            delay=delay,
            echo_headers=echo_headers,
            quote_headers=quote_headers,
            refusal_detail=refusal_detail,
        )
        self._server = _Server(port, self.state, ssl_context)
        self._thread = serving_thread(self._server, "http-receiver")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._server.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever(), which must be running
            self._server.shutdown()
        self._server.server_close()

    def revoke_tokens(self) -> None:
        """OAuth mode: every token issued so far stops working (the partner rotated its keys)."""
        with self.state.lock:
            self.state.live_tokens.clear()

    def receipts(self) -> list[Receipt]:
        with self.state.lock:
            return list(self.state.receipts)

    def accepted_member_ids(self, key: str = "id") -> Counter[Any]:
        """How many times each member id arrived in an accepted request."""
        counts: Counter[Any] = Counter()
        for receipt in self.receipts():
            if receipt.status < 300:
                counts.update(member.get(key) for member in receipt.members)
        return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--reject-status", type=int)
    args = parser.parse_args()
    receiver = HttpReceiver(args.port, args.reject_status)
    print(f"receiving on {receiver.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        receiver._server.serve_forever()


if __name__ == "__main__":
    main()
