"""Review probe (a pytest plugin: ``-p tests.probes.uvloop_portal``): the collected tests' blocking portals run on
uvloop, as the dispatcher's now does by default (``EXPORT_DISPATCHER_EVENT_LOOP``), so that the TLS, proxy and
resolver tests meet the loop production uses. Each portal checks that it is on uvloop."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal
from anyio.from_thread import start_blocking_portal as anyio_portal

from services.dispatcher.event_loop import portal_options, running_loop_name

#: Portals started on uvloop in this session (said in the terminal summary: the probe did take effect).
STARTED = [0]


@contextmanager
def uvloop_portal(*args: Any, **kwargs: Any) -> Iterator[BlockingPortal]:
    kwargs.setdefault("backend_options", portal_options("uvloop"))
    with anyio_portal(*args, **kwargs) as portal:
        assert portal.call(running_loop_name) == "uvloop"
        STARTED[0] += 1
        yield portal


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for module in {item.module for item in items if isinstance(item, pytest.Function) and item.module}:
        if getattr(module, "start_blocking_portal", None) is anyio_portal:
            module.start_blocking_portal = uvloop_portal
    helpers = sys.modules.get("tests.dispatcher_helpers")
    if helpers is not None and getattr(helpers, "start_blocking_portal", None) is anyio_portal:
        helpers.start_blocking_portal = uvloop_portal  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"blocking portals started on uvloop: {STARTED[0]}")
