"""The web console: the reference platform's Exports screens, served by the admin API under ``/console``.

Server-rendered pages (Jinja2, autoescaped) with htmx for the live parts, over the application layer's
use cases: the same rules, refusals, roles and business-unit scopes as the API and exportctl. Sign-in
with an API token opens a session (an encrypted, HttpOnly, SameSite=Strict cookie); every form and
htmx request carries the session's CSRF token. ``install(app, context)`` is all the API does to serve it.
"""

from __future__ import annotations

from fastapi import FastAPI

from services.admin.console.app import create_console
from services.admin.console.gate import ConsoleGate
from services.admin.console.sessions import SessionCodec
from services.admin.dependencies import AdminContext, DeadLetterReplays
from services.admin.settings import AdminSettings


def install(app: FastAPI, context: AdminContext, settings: AdminSettings | None = None) -> None:
    """Serve the console under ``/console`` of ``app``, ahead of the API's own middleware (call it after
    adding RequestLimits: middleware added later wraps what was added before).

    ``settings`` default to the environment's (``EXPORT_CONSOLE_*``, the Kafka settings for dead letters).
    """
    settings = settings or AdminSettings()
    if context.replays is None:  # the composition root's, else these settings': the API's replays read the same
        context.replays = DeadLetterReplays.of(settings)
    codec = SessionCodec(settings.console_session_key.get_secret_value(), settings.console_session_minutes * 60)
    console = create_console(context, settings, codec)
    app.add_middleware(
        ConsoleGate,
        console=console,
        codec=codec,
        authenticate=context.tokens.authenticate,
        max_body_bytes=settings.admin_max_body_bytes,
    )
