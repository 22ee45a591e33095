"""The console's check (``action=check``: every check of a save, nothing written) of a connection profile renamed in
the same form, its secrets left blank as the page shows them (the form sends them masked): the masks stand for the
profile's stored secrets (under its old name), as a save of that form keeps them; nothing is renamed or written. A
mask that stands for no stored secret, or a stored secret now going to another host, is refused beside its field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.application.masked_secrets import HOST_CHANGED, MASK
from shared.domain.catalog_objects import ConnectionProfile
from tests.admin_app import InProcessApi, in_process_api
from tests.integration.test_console_fields import _field_error, signed_in

pytestmark = pytest.mark.integration
PASSWORD = "stored-partner-password-8841"
SIGNING = "stored-signing-secret-3307"
STORED = {
    "name": "acme",
    "base_url": "https://partner.example.com/v2",
    "auth": {"type": "basic", "username": "exporter", "password": PASSWORD},
    "signing_secret": SIGNING,
}
#: The profile's page as the console shows it, renamed: its secrets blank (the form sends them masked).
RENAMED = {
    "name": "acme-eu",
    "base_url": "https://partner.example.com/v2",
    "auth_type": "basic",
    "auth_username": "exporter",
    "auth_password": "",
    "action": "check",
}


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessApi]:
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http in the test client
    with in_process_api(tmp_path) as made:
        with made.client() as client:
            answer = client.post("/api/v1/connection-profiles", json=STORED)
            assert answer.status_code == 201, answer.text
        yield made


def _stored(api: InProcessApi) -> tuple[ConnectionProfile | None, ConnectionProfile | None]:
    store = api.app.state.context.definitions
    return store.find(ConnectionProfile, "acme"), store.find(ConnectionProfile, "acme-eu")


def test_checking_a_renamed_profile_keeps_its_stored_secrets_and_writes_nothing(api: InProcessApi) -> None:
    before, _ = _stored(api)
    with signed_in(api, "admin") as console:
        assert 'name="action" value="check">Check</button>' in console.page("/profiles/acme")  # offered
        answer = console.post("/profiles/acme", RENAMED)
    assert answer.status_code == 200, answer.text
    assert "every check of a save passes" in answer.text
    for secret in (PASSWORD, SIGNING):  # never in a page
        assert secret not in answer.text
    assert _stored(api) == (before, None)  # checked, not renamed


def test_checking_a_renamed_profile_moved_to_another_host_refuses_its_kept_secrets_beside_them(
    api: InProcessApi,
) -> None:
    with signed_in(api, "admin") as console:
        answer = console.post("/profiles/acme", RENAMED | {"base_url": "https://elsewhere.example.net/v2"})
    assert answer.status_code == 422, answer.text
    assert HOST_CHANGED in _field_error(answer.text, "auth_basic_password")
    assert HOST_CHANGED in _field_error(answer.text, "signing_secret")


def test_checking_a_mask_that_stands_for_no_stored_secret_is_refused_beside_its_field(api: InProcessApi) -> None:
    with signed_in(api, "admin") as console:
        # A bearer token now (no token is stored: the basic password is not one), the mask typed as it.
        answer = console.post(
            "/profiles/acme",
            RENAMED | {"auth_type": "bearer", "auth_token": MASK},
        )
    assert answer.status_code == 422, answer.text
    assert "stands for a stored secret, and none is stored here" in _field_error(answer.text, "auth_bearer_token")
