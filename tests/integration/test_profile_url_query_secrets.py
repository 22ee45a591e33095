"""A partner key in a profile's URL query (``https://api.partner/v1?api_key=...``) is refused at save, naming the
field and where the key belongs (the profile's ``auth``), never quoting it: readers would see it, the audit log keep
it, and it would not be encrypted at rest. Query parameters are judged by the one rule the logs and the attempt
inspector mask them by (``shared.domain.secret_names``). A profile saved so before still loads and runs, and every
read shows that value masked (``?api_key=**********``), the audit log's earlier entries too. Before, such a URL was
stored as given and shown whole to every reader, a viewer included. The real app, in process, SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import uuid
from html import unescape
from typing import Any

import pytest

from shared.domain.audit import AuditEntry
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate, stored_form
from shared.domain.rendering import render_request
from shared.domain.stored_rows import STORED_ROW
from shared.events import MemberBatch, utc_now
from tests.admin_app import InProcessApi, refused_writing_nothing
from tests.integration.test_console_fields import signed_in

KEY = "Zq9-very-secret-Value-4471"
URL = f"https://partner.example.com/v2?api_key={KEY}&region=eu"
SHOWN = "https://partner.example.com/v2?api_key=**********&region=eu"
PROFILES = "/api/v1/connection-profiles"


@pytest.fixture
def api(seeded_admin_api: InProcessApi) -> InProcessApi:
    return seeded_admin_api


def _refusal(answer: Any, field: str) -> str:
    text: str = answer.text
    assert KEY not in text
    assert field in text
    assert "must not hold a credential in its query (parameter " in text
    assert "give it in the profile's auth" in text
    assert "{type: api_key, in: query, name: <the parameter>, key: ...}" in text  # the way a query key is sent
    return text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "keyed", "base_url": URL}, "base_url"),
        (
            {
                "name": "keyed",
                "base_url": "https://partner.example.com/v2",
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": f"https://login.partner.example.com/token?client_secret={KEY}",
                    "client_id": "exporter",
                    "client_secret": "env:PARTNER_CLIENT_SECRET",
                },
            },
            "token_url",
        ),
    ],
)
def test_a_key_in_a_profiles_url_query_is_refused_at_save_naming_the_field(
    api: InProcessApi, body: dict[str, Any], field: str
):
    answer = refused_writing_nothing(api, "POST", "connection-profiles", body)
    _refusal(answer, field)
    applied = refused_writing_nothing(api, "POST", "apply", {"objects": [{"kind": "ConnectionProfile", "spec": body}]})
    _refusal(applied, field)
    with api.client() as client:  # a query without a credential is a query
        plain = client.post(PROFILES, json=body | {"base_url": "https://partner.example.com/v2?region=eu&version=2"})
        assert plain.status_code == 201 if field == "base_url" else 422, plain.text


def test_a_profile_saved_before_still_runs_and_every_read_masks_its_key(api: InProcessApi):
    store = api.app.state.context.definitions
    partner = store.get(ConnectionProfile, "partner")
    # As an older release saved it (and its audit entry): the key in the query, whole.
    older = ConnectionProfile.model_validate(stored_form(partner) | {"base_url": URL}, context={STORED_ROW: True})
    entry = AuditEntry(
        at=utc_now(),
        actor="admin",
        action="update",
        kind="ConnectionProfile",
        name="partner",
        business_units=(),
        before=stored_form(partner),
        after=stored_form(older),
    )
    store.apply(older, audit=[entry])
    # The dispatcher's read: the key is sent as saved.
    loaded = store.get(ConnectionProfile, "partner")
    assert loaded.base_url == URL
    batch = MemberBatch(
        run_id=uuid.uuid4(), definition="nightly", template="upsert", batch_index=0, members=[{"id": 1}]
    )
    # The key still goes out, in the base URL's query, after the template's path.
    assert render_request(store.get(HttpTemplate, "upsert"), loaded, batch).url == (
        f"https://partner.example.com/v2/members?api_key={KEY}&region=eu"
    )
    for who in ("viewer", "admin"):
        with api.client(who) as client:
            assert client.get(f"{PROFILES}/partner").json()["base_url"] == SHOWN
            listed = client.get(PROFILES)
            assert KEY not in listed.text
            audit = client.get("/api/v1/audit", params={"object": "partner"})
            assert audit.status_code == 200
            assert KEY not in audit.text
            assert audit.json()[0]["after"]["base_url"] == SHOWN
    with api.client(None) as browser:  # the console's edit form of the profile (an admin's)
        page = browser.get("/console/sign-in")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None
        signed = browser.post(
            "/console/sign-in", data={"csrf_token": csrf.group(1), "token": api.tokens["admin"]}, follow_redirects=False
        )
        assert signed.status_code == 303, signed.text
        form = browser.get("/console/profiles/partner")
        assert form.status_code == 200
        assert KEY not in form.text
        assert SHOWN in unescape(form.text)
    with api.client() as client:  # sent back as read: refused, saying where the key goes; the stored key is kept
        read = client.get(f"{PROFILES}/partner").json()
        answer = client.put(f"{PROFILES}/partner", json=read | {"label": "Relabelled"})
        assert answer.status_code == 422
        _refusal(answer, "base_url")
    assert store.get(ConnectionProfile, "partner").base_url == URL


def _store_older(api: InProcessApi) -> None:
    """The seed's profile ``partner`` as an older release saved it: the key in its base URL's query, whole."""
    store = api.app.state.context.definitions
    partner = store.get(ConnectionProfile, "partner")
    store.apply(ConnectionProfile.model_validate(stored_form(partner) | {"base_url": URL}, context={STORED_ROW: True}))


def test_a_dry_run_of_a_profile_saved_before_shows_the_request_url_with_its_key_masked(api: InProcessApi):
    # Before, the dry run (the admin API's, exportctl's, the console's preview) answered the URL it would send,
    # the key whole, to every editor and operator.
    _store_older(api)
    sent = "https://partner.example.com/v2/members?api_key={}&region=eu"
    for who in ("editor", "operator"):
        with api.client(who) as client:
            dry = client.post("/api/v1/export-definitions/nightly/dry-run", params={"requests": 2})
            assert dry.status_code == 200, dry.text
            assert KEY not in dry.text
            assert {request["url"] for request in dry.json()["requests"]} == {sent.format("**********")}
    with signed_in(api, "editor") as console:  # the console's preview of the definition
        preview = console.post("/exports/nightly/preview", {})
        assert preview.status_code == 200, preview.text
        assert KEY not in preview.text
        assert sent.format("**********") in unescape(preview.text)
    # What is sent is the key, as saved.
    assert api.app.state.context.definitions.get(ConnectionProfile, "partner").base_url == URL
