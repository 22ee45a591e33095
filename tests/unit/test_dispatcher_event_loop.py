"""The dispatcher's event loop setting (``EXPORT_DISPATCHER_EVENT_LOOP``) picks the loop its requests run on."""

from __future__ import annotations

import pytest
from anyio.from_thread import start_blocking_portal
from pydantic import ValidationError

from services.dispatcher.event_loop import EventLoopName, portal_options, running_loop_name
from services.dispatcher.settings import DispatcherSettings


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_the_portal_runs_the_requests_on_the_loop_the_setting_names(event_loop: EventLoopName) -> None:
    with start_blocking_portal(backend_options=portal_options(event_loop)) as portal:
        assert portal.call(running_loop_name) == event_loop


def test_uvloop_is_the_default_and_another_name_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DispatcherSettings().dispatcher_event_loop == "uvloop"
    monkeypatch.setenv("EXPORT_DISPATCHER_EVENT_LOOP", "trio")
    with pytest.raises(ValidationError, match="dispatcher_event_loop"):
        DispatcherSettings()
