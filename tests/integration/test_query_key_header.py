"""A profile whose API key travels in the query (``auth: {type: api_key, in: query, name: appid, ...}``) sends it in
no header: a ``header`` given beside it is refused at save, naming the field, with the same reason through the API
(create, replace) and a manifest's apply. Before, it was stored and silently ignored. A profile an older release
saved with one (every such profile: the default ``X-API-Key`` was stored beside the query key) still loads and runs,
is read without it, and a read sent back as it is saves. The real app, in process, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from html import unescape

import pytest
import sqlalchemy as sa

from services.dispatcher.partner_auth import auth_headers, query_key_field
from shared.domain.catalog_objects import ConnectionProfile, stored_form
from tests.admin_app import InProcessApi, refused_writing_nothing
from tests.integration.test_console_fields import signed_in

PROFILES = "/api/v1/connection-profiles"
KEY = "Qk7-partner-key-0042"
AUTH = {"type": "api_key", "in": "query", "name": "appid", "key": KEY}
#: The reason every entry point gives.
REASON = "not used when in is query"


@pytest.fixture
def api(seeded_admin_api: InProcessApi) -> InProcessApi:
    return seeded_admin_api


def _refused_naming_the_header(answer: object) -> None:
    text: str = answer.text  # type: ignore[attr-defined]
    assert "auth.api_key.header" in text
    assert REASON in text
    assert KEY not in text


def test_a_header_beside_a_query_key_is_refused_at_save_through_every_entry_point(api: InProcessApi):
    body = {"name": "keyed", "base_url": "https://partner.example.com/v2", "auth": AUTH | {"header": "X-App-Key"}}
    _refused_naming_the_header(refused_writing_nothing(api, "POST", "connection-profiles", body))
    _refused_naming_the_header(refused_writing_nothing(api, "PUT", "connection-profiles/partner", body))
    applied = refused_writing_nothing(api, "POST", "apply", {"objects": [{"kind": "ConnectionProfile", "spec": body}]})
    _refused_naming_the_header(applied)
    with signed_in(api, "admin") as console:  # the console's form, an admin's: the reason beside the field
        fields = {"auth_type": "api_key", "auth_in": "query", "auth_header": "X-App-Key", "auth_name": "appid"}
        page = console.post(
            "/profiles/partner", {"base_url": "https://partner.example.com/v2", "auth_key": KEY} | fields
        )
        assert page.status_code == 422, page.text
        beside = re.search(r'<p class="field-error" id="auth_api_key_header-error">([^<]*)</p>', page.text)
        assert beside is not None  # beside the header field
        assert REASON in unescape(beside.group(1))
        assert KEY not in page.text
    with api.client() as client:
        assert client.get(f"{PROFILES}/partner").json()["auth"]["type"] != "api_key"  # nothing saved
    with api.client() as client:  # without it, the same profile saves, and is read without a header
        saved = client.post(PROFILES, json=body | {"auth": AUTH})
        assert saved.status_code == 201, saved.text
        assert client.get(f"{PROFILES}/keyed").json()["auth"]["header"] is None
        # A key in a header is as it was: X-API-Key unless named.
        header = client.post(PROFILES, json=body | {"name": "in-header", "auth": {"type": "api_key", "key": KEY}})
        assert header.status_code == 201, header.text
        assert header.json()["auth"]["header"] == "X-API-Key"


def test_a_profile_saved_with_a_header_beside_its_query_key_still_loads_runs_and_saves_as_read(api: InProcessApi):
    store = api.app.state.context.definitions
    partner = store.get(ConnectionProfile, "partner")
    # As the release before saved it: the query key, and a header beside it (the default, or one given).
    older = stored_form(partner) | {"auth": AUTH | {"header": "X-App-Key"}}
    with store.database.engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE catalog_objects SET spec = :spec WHERE kind = 'ConnectionProfile' AND name = 'partner'"
            ).bindparams(sa.bindparam("spec", type_=sa.JSON())),
            {"spec": older},
        )
    loaded = store.get(ConnectionProfile, "partner")  # the dispatcher's read
    assert loaded.auth.header is None
    assert query_key_field(loaded) == f"appid={KEY}"  # the key still goes out, in the query
    assert asyncio.run(auth_headers(loaded, None)) == {}  # type: ignore[arg-type]  # in no header
    with api.client() as client:
        read = client.get(f"{PROFILES}/partner").json()
        assert read["auth"]["header"] is None
        answer = client.put(f"{PROFILES}/partner", json=read | {"label": "Relabelled"})  # sent back as read
        assert answer.status_code == 200, answer.text
    assert store.get(ConnectionProfile, "partner").label == "Relabelled"
