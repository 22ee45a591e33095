"""The console's pieces without a browser: the composer's fields, sessions, and the gate in front of the API."""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest

from services.admin.console.definition_form import COMPOSER_FIELDS, as_form, schedule_body
from services.admin.console.schedule_view import dst_note
from services.admin.console.sessions import SessionCodec
from shared.domain.schedule import Every, Repeat, Schedule, next_fire_times
from tests.admin_app import in_process_api

SAMPLES = {"minute": "5", "time": "06:30", "weekday": "mon", "day": "15", "month": "2"}


@pytest.mark.parametrize("every", [e.value for e in Every])
def test_the_composer_shows_exactly_the_fields_the_domain_takes(every):
    fields = {name: SAMPLES[name] for name in COMPOSER_FIELDS[every]}
    form = as_form({"recurrence": "repeat", "every": every, **fields, "timezone": "UTC"})
    schedule = Schedule.model_validate(schedule_body(form))
    assert schedule.repeat == Repeat.model_validate({"every": every, **fields})
    for name in set(SAMPLES) - set(COMPOSER_FIELDS[every]):
        with pytest.raises(ValueError, match="does not use"):
            Repeat.model_validate({"every": every, **fields, name: SAMPLES[name]})


def test_a_dst_overlap_is_said_for_a_fixed_time_schedule():
    schedule = Schedule.model_validate(
        {"timezone": "Europe/Paris", "repeat": {"every": "day", "time": "02:30"}, "from": "2027-10-31"}
    )
    first = next_fire_times(schedule, dt.datetime(2027, 10, 30, tzinfo=dt.UTC), 1)[0]
    note = dst_note(schedule, first)
    assert note is not None
    assert "02:30 happens twice on 2027-10-31 (DST overlap): fires at its first occurrence only" in note


def test_a_session_opens_only_unaltered_with_its_key_and_before_it_expires():
    codec = SessionCodec("key one", lifetime_seconds=60)
    session, cookie = codec.open_session("tok-123")
    assert codec.read(cookie) == session
    assert "tok-123" not in cookie  # the token is encrypted in the cookie
    altered = cookie[:20] + ("A" if cookie[20] != "A" else "B") + cookie[21:]
    assert codec.read(altered) is None
    assert SessionCodec("key two", lifetime_seconds=60).read(cookie) is None
    assert codec.read(cookie, now=int(time.time()) + 61) is None
    assert session.csrf_matches(session.csrf)
    assert not session.csrf_matches("guess")


def _signed_in(client, token: str) -> str:
    page = client.get("/console/sign-in")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    answer = client.post("/console/sign-in", data={"token": token, "csrf_token": csrf}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/exports").text).group(1)


def test_the_gate_signs_in_bounds_and_checks_every_write(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")
    with in_process_api(tmp_path) as api, api.client(None) as client:
        assert (
            client.get("/console/exports", follow_redirects=False)
            .headers["location"]
            .startswith("/console/sign-in?next=")
        )
        # Writes without a session are refused before their body is read.
        assert client.post("/console/exports/x/delete", data={"a": "b"}).status_code == 401
        page = client.get("/console/sign-in")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        wrong = client.post("/console/sign-in", data={"token": "nope", "csrf_token": csrf})
        assert wrong.status_code == 401
        assert "This token is not valid." in wrong.text
        forged = client.post("/console/sign-in", data={"token": api.tokens["admin"], "csrf_token": "forged"})
        assert forged.status_code == 403
        csrf = _signed_in(client, api.tokens["viewer"])
        headers = {"X-CSRF-Token": csrf}
        assert client.post("/console/schedule/preview", data={"x": "y" * 2_000_000}, headers=headers).status_code == 413
        assert client.post("/console/schedule/preview", json={"x": 1}, headers=headers).status_code == 415
        assert client.post("/console/schedule/preview", data={"recurrence": "none"}, headers=headers).status_code == 200
        answer = client.get("/console/exports")
        assert "default-src 'self'" in answer.headers["content-security-policy"]
        assert client.post("/console/sign-out", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
        assert client.get("/console/exports", follow_redirects=False).status_code == 303
        # The API is untouched: bearer tokens, problem details.
        assert client.get("/api/v1/saved-queries").status_code == 401
        assert client.get("/api/v1/saved-queries", headers=api.headers("viewer")).status_code == 200
