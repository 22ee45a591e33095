"""What the console's routes use: the admin API's context (its stores, publisher and checks), the pages, the
dead letters, and the console's settings."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from services.admin.console.pages import Pages
from services.admin.dependencies import AdminContext, DeadLetterReplays


@dataclass
class ConsoleContext:
    """The admin API's context plus what only the console needs."""

    admin: AdminContext
    pages: Pages
    #: The dead-letter topic, read when a run's page asks for its dead letters or a replay (a Kafka consumer per read),
    #: within the admin process's bound on its reads, and the record byte bound of a replay's batches.
    replays: DeadLetterReplays
    session_seconds: int
    secure_cookies: bool


def console_of(request: Request) -> ConsoleContext:
    context: ConsoleContext = request.app.state.console
    return context
