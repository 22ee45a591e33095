"""A stored secret goes only where it went: sent back masked (``**********``, as every read answers it) with the host
it is sent to changed, it is refused naming its field, through the admin API (a replace, an apply, a copy's later
edits) and the console's profile form (a blank secret field sends the mask). The real app, in process, over SQLite
and PostgreSQL.

Before: the mask kept the stored secret whatever else changed, so a client that may change a profile but never read
its secrets (a business-unit-scoped token, on a copy of a shared profile) had them sent to its own host at the next
delivery."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest

from shared.domain.catalog_objects import ConnectionProfile
from tests.admin_app import InProcessApi

PASSWORD = "s3cr3t-partner-password"  # tests.admin_app's seeded profile's
EVIL = "https://collector.evil.example"
MOVED = "field 'auth.password': give the secret again: the host it is sent to changed"


@pytest.fixture
def api(seeded_admin_api: InProcessApi) -> InProcessApi:
    return seeded_admin_api


def stored(api: InProcessApi, name: str = "partner") -> tuple[str, str]:
    """The profile's base URL and password as stored (what the dispatcher sends, and where)."""
    profile = api.app.state.context.definitions.get(ConnectionProfile, name)
    return profile.base_url, profile.auth.password.get_secret_value()


def read(api: InProcessApi, name: str = "partner", who: str = "admin") -> dict[str, Any]:
    with api.client(who) as client:
        answer = client.get(f"/api/v1/connection-profiles/{name}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["auth"]["password"] == "**********"
    return body


def test_a_profile_moved_to_another_host_with_its_password_masked_is_refused_and_keeps_host_and_password(
    api: InProcessApi,
):
    with api.client() as client:
        answer = client.put("/api/v1/connection-profiles/partner", json=read(api) | {"base_url": EVIL})
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert MOVED in answer.json()["detail"]
        assert PASSWORD not in answer.text
        assert stored(api) == ("https://partner.example.com/v2", PASSWORD)

        # Another path on the same host: kept.
        answer = client.put(
            "/api/v1/connection-profiles/partner", json=read(api) | {"base_url": "https://partner.example.com/v3"}
        )
        assert answer.status_code == 200, answer.text
        assert stored(api) == ("https://partner.example.com/v3", PASSWORD)

        # The password given again: moved, with it.
        body = read(api) | {"base_url": EVIL}
        body["auth"] = body["auth"] | {"password": "the-new-hosts-password"}
        answer = client.put("/api/v1/connection-profiles/partner", json=body)
        assert answer.status_code == 200, answer.text
        assert stored(api) == (EVIL, "the-new-hosts-password")


def test_a_scoped_tokens_copy_of_a_shared_profile_cannot_be_moved_to_its_own_host_with_the_password_masked(
    api: InProcessApi,
):
    """The reviewer's probe: a scoped token (refused a change of a profile shared with other units) copied it, secrets
    included, and pointed the copy at its own host with the password masked; the copy stored the password there."""
    with api.client("emea-admin") as emea:
        copied = emea.post("/api/v1/connection-profiles/partner/copy", json={"name": "mine"})
        assert copied.status_code == 201, copied.text
        assert copied.json()["base_url"] == "https://partner.example.com/v2"  # the copy goes where the original does

        answer = emea.put("/api/v1/connection-profiles/mine", json=copied.json() | {"base_url": EVIL})
        assert answer.status_code == 422, answer.text
        assert "ConnectionProfile 'mine': " + MOVED in answer.json()["detail"]
        assert stored(api, "mine") == ("https://partner.example.com/v2", PASSWORD)

        # Nor through apply, a manifest of the copy as read.
        document = {"kind": "ConnectionProfile", "spec": read(api, "mine", "emea-admin") | {"base_url": EVIL}}
        answer = emea.post("/api/v1/apply", json={"objects": [document]})
        assert answer.status_code == 422, answer.text
        assert MOVED in answer.json()["detail"]
        assert stored(api, "mine") == ("https://partner.example.com/v2", PASSWORD)


def test_apply_of_a_manifest_moving_a_profile_with_its_password_masked_is_refused_and_changes_nothing(
    api: InProcessApi,
):
    document = {"kind": "ConnectionProfile", "spec": read(api) | {"base_url": EVIL}}
    with api.client() as client:
        for dry_run in ("true", "false"):
            answer = client.post(f"/api/v1/apply?dry_run={dry_run}", json={"objects": [document]})
            assert answer.status_code == 422, answer.text
            assert "ConnectionProfile 'partner': " + MOVED in answer.json()["detail"]
    assert stored(api) == ("https://partner.example.com/v2", PASSWORD)


def test_the_console_refuses_a_profile_moved_with_its_password_left_blank_beside_the_password(api: InProcessApi):
    with api.client(None) as browser:
        page = browser.get("/console/sign-in")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None
        signed = browser.post(
            "/console/sign-in",
            data={"csrf_token": csrf.group(1), "token": api.tokens["admin"]},
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
        form = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/console/exports").text)
        assert form is not None
        fields = {"csrf_token": form.group(1), "base_url": EVIL, "auth_type": "basic", "auth_username": "exporter"}
        answer = browser.post("/console/profiles/partner", data=fields | {"auth_password": ""}, follow_redirects=False)
        assert answer.status_code == 422, answer.text
        shown = re.search(r'<p class="field-error" id="auth_basic_password-error">([^<]*)</p>', answer.text)
        assert shown is not None
        assert unescape(shown.group(1)) == "give the secret again: the host it is sent to changed"
        assert PASSWORD not in answer.text
        assert stored(api) == ("https://partner.example.com/v2", PASSWORD)
