"""What the console's routes use: the admin API's context (its stores, publisher and checks), the pages, the
dead letters, and the console's settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from services.admin.console.pages import Pages
from services.admin.dependencies import AdminContext
from shared.application.ports import DeadLetterSource


@dataclass
class ConsoleContext:
    """The admin API's context plus what only the console needs."""

    admin: AdminContext
    pages: Pages
    #: The dead-letter topic, read when a run's page asks for its dead letters (a Kafka consumer per read).
    dead_letters: Callable[[], DeadLetterSource]
    max_record_bytes: int
    session_seconds: int
    secure_cookies: bool


def console_of(request: Request) -> ConsoleContext:
    context: ConsoleContext = request.app.state.console
    return context
