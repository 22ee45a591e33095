"""Two admins editing one catalog object never lose an edit silently: ``ETag`` on reads and writes, ``If-Match``
on PUT, DELETE and the definition steps (412 when the object changed or went since it was read), through the
real admin app over HTTP, on a SQLite and on a PostgreSQL catalog."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shared.catalog import CatalogStores
from shared.catalog.definitions_store import SqlDefinitionsStore
from shared.domain.catalog_objects import SavedQuery
from shared.errors import VersionMismatch
from tests.admin_app import InProcessApi, in_process_api, seed

pytestmark = pytest.mark.integration

DEADLINE = 10.0  # seconds a step may take before the test says it hung
QUERY = "/api/v1/saved-queries/gold"
PROFILE = "/api/v1/connection-profiles/partner"
DEFINITION = "/api/v1/export-definitions/nightly"


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[InProcessApi]:
    with in_process_api(tmp_path, catalog_url=database_url) as api, api.client() as client:
        seed(client)
        yield api


def _read(api: InProcessApi, path: str, who: str = "admin") -> tuple[str, dict[str, Any]]:
    with api.client(who) as client:
        answer = client.get(path)
    assert answer.status_code == 200, answer.text
    return answer.headers["ETag"], answer.json()


def _audit(api: InProcessApi, name: str) -> list[dict[str, Any]]:
    with api.client() as client:
        answer = client.get("/api/v1/audit", params={"object": name})
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, Any]] = answer.json()
    return entries


def _labelled(body: dict[str, Any], label: str) -> dict[str, Any]:
    return body | {"label": label}


def test_a_read_carries_the_stored_version_as_etag_and_a_save_with_it_works_and_moves_it(api: InProcessApi):
    etag, query = _read(api, QUERY)
    assert etag == '"1"'  # created once, never changed: version 1
    with api.client() as client:
        saved = client.put(QUERY, json=_labelled(query, "Gold, renamed"), headers={"If-Match": etag})
    assert saved.status_code == 200, saved.text
    assert saved.headers["ETag"] == '"2"'
    assert saved.json()["label"] == "Gold, renamed"
    assert _read(api, QUERY)[0] == '"2"'


def test_a_save_from_an_old_etag_is_412_and_leaves_the_object_and_the_audit_log_as_the_other_left_them(
    api: InProcessApi,
):
    etag, query = _read(api, QUERY)  # alice (admin) reads the query
    with api.client("editor") as bob:  # bob saves a change meanwhile
        assert bob.put(QUERY, json=_labelled(query, "Bob's"), headers={"If-Match": etag}).status_code == 200
    entries = _audit(api, "gold")
    with api.client() as alice:
        stale = alice.put(QUERY, json=_labelled(query, "Alice's"), headers={"If-Match": etag})
    assert stale.status_code == 412, stale.text
    assert stale.headers["content-type"].startswith("application/problem+json")
    problem = stale.json()
    assert problem["type"].endswith("/changed-since-read")
    assert "SavedQuery 'gold' was changed since it was read" in problem["detail"]
    assert "by editor" in problem["detail"]
    assert "read it again" in problem["detail"]
    assert _read(api, QUERY)[1]["label"] == "Bob's"
    assert _read(api, QUERY)[0] == '"2"'
    assert _audit(api, "gold") == entries  # nothing of alice's stale save recorded


def test_a_stale_save_of_a_profile_says_so_without_its_secrets(api: InProcessApi):
    etag, profile = _read(api, PROFILE)
    with api.client() as client:
        changed = client.put(PROFILE, json=_labelled(profile, "Partner, moved"), headers={"If-Match": etag})
        assert changed.status_code == 200, changed.text
        body = _labelled(profile, "Partner, mine") | {
            "auth": {"type": "basic", "username": "exporter", "password": "another-s3cr3t-9931"}
        }
        stale = client.put(PROFILE, json=body, headers={"If-Match": etag})
    assert stale.status_code == 412, stale.text
    assert "s3cr3t" not in stale.text
    assert _read(api, PROFILE)[1]["label"] == "Partner, moved"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/filter", {"query": "gold", "parameters": {"tier": "silver"}}),
        ("/destination", {"template": "upsert"}),
        ("/schedule", {"enabled": False, "repeat": {"every": "day", "time": "03:00"}, "from": "2026-01-01"}),
        ("/notifications", {"error": {"enabled": False, "recipients": []}}),
    ],
)
def test_a_definition_step_saved_from_an_old_etag_is_412_and_changes_nothing(
    api: InProcessApi, path: str, body: dict[str, Any]
):
    etag, definition = _read(api, DEFINITION)
    with api.client() as client:
        other = client.put(DEFINITION, json=_labelled(definition, "Someone else's"))
        assert other.status_code == 200, other.text
        current = other.headers["ETag"]
        stale = client.put(DEFINITION + path, json=body, headers={"If-Match": etag})
        assert stale.status_code == 412, stale.text
        assert _read(api, DEFINITION) == (current, other.json())
        fresh = client.put(DEFINITION + path, json=body, headers={"If-Match": current})
    assert fresh.status_code == 200, fresh.text
    assert fresh.headers["ETag"] == _read(api, DEFINITION)[0]


def test_a_rename_from_an_old_etag_is_412_and_the_old_name_stays(api: InProcessApi):
    etag, query = _read(api, "/api/v1/http-templates/upsert")
    with api.client() as client:
        assert client.put("/api/v1/http-templates/upsert", json=_labelled(query, "Changed")).status_code == 200
        renamed = client.put(
            "/api/v1/http-templates/upsert", json=query | {"name": "upsert-2"}, headers={"If-Match": etag}
        )
        assert renamed.status_code == 412, renamed.text
        assert client.get("/api/v1/http-templates/upsert-2").status_code == 404
        current, template = _read(api, "/api/v1/http-templates/upsert")
        assert template["label"] == "Changed"
        renamed = client.put(
            "/api/v1/http-templates/upsert", json=template | {"name": "upsert-2"}, headers={"If-Match": current}
        )
    assert renamed.status_code == 409, renamed.text  # the current ETag passes; the template is still in use
    assert renamed.json()["type"].endswith("/in-use")


def test_a_rename_with_the_current_etag_renames_and_answers_the_next_version(api: InProcessApi):
    with api.client() as client:
        assert client.post("/api/v1/http-templates/upsert/copy", json={"name": "spare"}).status_code == 201
        etag, spare = _read(api, "/api/v1/http-templates/spare")
        renamed = client.put("/api/v1/http-templates/spare", json=spare | {"name": "kept"}, headers={"If-Match": etag})
        assert renamed.status_code == 200, renamed.text
        assert client.get("/api/v1/http-templates/spare").status_code == 404
    assert renamed.headers["ETag"] == '"2"'
    assert _read(api, "/api/v1/http-templates/kept")[0] == '"2"'


def test_two_saves_from_one_etag_at_once_store_exactly_one(api: InProcessApi, monkeypatch: pytest.MonkeyPatch):
    """Both saves read the query at its version before either writes (a barrier holds the first two reads): one
    is stored (200), the other is refused (412), never both stored (with the old code both answered 200)."""
    etag, query = _read(api, QUERY)
    both_read = threading.Barrier(2, timeout=DEADLINE)
    held: list[str] = []
    real_read = SqlDefinitionsStore.get_versioned

    def read_then_wait(self: SqlDefinitionsStore, kind: Any, name: str) -> Any:
        found = real_read(self, kind, name)
        if kind is SavedQuery and len(held) < 2:
            held.append(name)
            both_read.wait()
        return found

    monkeypatch.setattr(SqlDefinitionsStore, "get_versioned", read_then_wait)

    def save(label: str) -> tuple[int, str]:
        with api.client() as client:
            answer = client.put(QUERY, json=_labelled(query, label), headers={"If-Match": etag})
        return answer.status_code, label

    with ThreadPoolExecutor(2) as pool:
        answers = sorted(pool.map(save, ["Alice's", "Bob's"]), key=lambda answer: answer[0])
    assert [status for status, _ in answers] == [200, 412]
    monkeypatch.undo()
    stored_etag, stored = _read(api, QUERY)
    assert (stored_etag, stored["label"]) == ('"2"', answers[0][1])
    assert [entry["action"] for entry in _audit(api, "gold")] == ["update", "create"]


def test_a_delete_from_an_old_etag_is_412_and_the_object_stays(api: InProcessApi):
    etag, definition = _read(api, DEFINITION)
    with api.client() as client:
        assert client.put(DEFINITION, json=_labelled(definition, "Changed")).status_code == 200
        stale = client.delete(DEFINITION, headers={"If-Match": etag})
        assert stale.status_code == 412, stale.text
        assert client.get(DEFINITION).status_code == 200
        assert client.delete(DEFINITION, headers={"If-Match": _read(api, DEFINITION)[0]}).status_code == 204
        assert client.get(DEFINITION).status_code == 404


def test_if_match_star_matches_any_existing_version_and_no_deleted_object(api: InProcessApi):
    _, definition = _read(api, DEFINITION)
    with api.client() as client:
        saved = client.put(DEFINITION, json=_labelled(definition, "Starred"), headers={"If-Match": "*"})
        assert saved.status_code == 200, saved.text
        assert saved.headers["ETag"] == '"2"'
        assert client.delete(DEFINITION, headers={"If-Match": "*"}).status_code == 204
        gone = client.delete(DEFINITION, headers={"If-Match": "*"})
        assert gone.status_code == 412, gone.text
        assert "ExportDefinition 'nightly' was deleted by admin" in gone.json()["detail"]
        again = client.put(DEFINITION, json=definition, headers={"If-Match": "*"})
        assert again.status_code == 412, again.text
        assert client.get(DEFINITION).status_code == 404  # not created again by the stale save


def test_a_list_of_etags_matches_when_one_of_them_is_current_and_weak_ones_never(api: InProcessApi):
    _, query = _read(api, QUERY)
    with api.client() as client:
        weak = client.put(QUERY, json=_labelled(query, "Weak"), headers={"If-Match": 'W/"1"'})
        assert weak.status_code == 412, weak.text
        listed = client.put(QUERY, json=_labelled(query, "Listed"), headers={"If-Match": '"7", "1"'})
        assert listed.status_code == 200, listed.text
    assert _read(api, QUERY) == ('"2"', listed.json())


@pytest.mark.parametrize("header", ["1", '"1', "W/1", '"1" "2"', "", "**"])
def test_a_malformed_if_match_is_400_naming_the_header_and_nothing_is_written(api: InProcessApi, header: str):
    etag, query = _read(api, QUERY)
    with api.client() as client:
        put = client.put(QUERY, json=_labelled(query, "Malformed"), headers={"If-Match": header})
        delete = client.delete(QUERY, headers={"If-Match": header})
    for answer in (put, delete):
        assert answer.status_code == 400, answer.text
        assert "If-Match" in answer.json()["detail"]
    assert _read(api, QUERY) == (etag, query)


def test_without_if_match_the_last_save_wins_as_before_and_answers_its_etag(api: InProcessApi):
    _, query = _read(api, QUERY)
    with api.client() as client:
        first = client.put(QUERY, json=_labelled(query, "First"))
        last = client.put(QUERY, json=_labelled(query, "Last"))
        created = client.post("/api/v1/saved-queries", json=_labelled(query, "New") | {"name": "new"})
        copied = client.post(QUERY + "/copy", json={})
    assert (first.status_code, last.status_code) == (200, 200)
    assert (first.headers["ETag"], last.headers["ETag"]) == ('"2"', '"3"')
    assert _read(api, QUERY) == ('"3"', last.json())
    assert created.status_code == copied.status_code == 201
    assert created.headers["ETag"] == copied.headers["ETag"] == '"1"'


# --- the store's conditional write, where two writers really race (PostgreSQL: no lock before the UPDATE) ------


@pytest.fixture
def pg_catalog(postgres_database_factory: Callable[[], str]) -> Iterator[CatalogStores]:
    """PostgreSQL only: on SQLite a write's transaction takes the database's lock before it reads the row."""
    stores = CatalogStores.from_url(postgres_database_factory(), migrate=True)
    yield stores
    stores.close()


def test_two_conditional_writes_that_both_read_the_version_store_one_and_refuse_the_other(
    pg_catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """Both writes check the stored version in their transaction, then both update: the compare and the write are
    one step (``WHERE version = ...``), so the second is refused, not retried on a fresh read."""
    store = pg_catalog.definitions
    store.apply(SavedQuery(name="q", sql="SELECT id FROM members"))
    both_checked = threading.Barrier(2, timeout=DEADLINE)
    real_check = SqlDefinitionsStore._require_version

    def check_then_wait(self: SqlDefinitionsStore, *args: Any) -> None:
        real_check(self, *args)
        both_checked.wait()

    monkeypatch.setattr(SqlDefinitionsStore, "_require_version", check_then_wait)

    def write(label: str) -> str:
        try:
            store.apply(SavedQuery(name="q", sql="SELECT id FROM members", label=label), expected_version=1)
        except VersionMismatch as exc:
            return str(exc)
        return "stored"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(write, ["a", "b"]))
    assert outcomes[1] == "stored"
    assert "SavedQuery 'q' was changed since it was read (it is now at version 2" in outcomes[0]
    monkeypatch.undo()
    _, version, stored = store.get_versioned(SavedQuery, "q")
    assert version == 2
    assert stored.label in {"a", "b"}


def test_an_edit_stored_by_another_between_a_writes_version_check_and_its_update_refuses_that_write(
    pg_catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """Another writer's edit is committed after this write checked the version and before it updates (a read takes
    no row lock on PostgreSQL): the update is conditional on the version checked, so this write is refused and the
    other edit stays. (Before, the write read the row afresh for its update, the checked row object having been
    dropped from the session's weak identity map, and stored on top of the other edit: a lost update.)"""
    store = pg_catalog.definitions
    store.apply(SavedQuery(name="q", sql="SELECT id FROM members"))
    real_check = SqlDefinitionsStore._require_version
    others: list[threading.Thread] = []

    def check_then_another_edit(self: SqlDefinitionsStore, *args: Any) -> None:
        real_check(self, *args)
        if not others:
            other = threading.Thread(
                target=store.apply, args=(SavedQuery(name="q", sql="SELECT id FROM members", label="other"),)
            )
            others.append(other)
            other.start()
            other.join(DEADLINE)
            assert not other.is_alive(), "the other edit hung"

    monkeypatch.setattr(SqlDefinitionsStore, "_require_version", check_then_another_edit)
    with pytest.raises(VersionMismatch, match="now at version 2"):
        store.apply(SavedQuery(name="q", sql="SELECT id FROM members", label="mine"), expected_version=1)
    monkeypatch.undo()
    _, version, stored = store.get_versioned(SavedQuery, "q")
    assert (version, stored.label) == (2, "other")


def test_the_openapi_document_declares_if_match_its_412_and_400_and_the_etag_of_reads(tmp_path: Path):
    with in_process_api(tmp_path) as api, api.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    conditional = [
        ("put", "/api/v1/saved-queries/{name}"),
        ("delete", "/api/v1/connection-profiles/{name}"),
        ("put", "/api/v1/export-definitions/{name}/schedule"),
    ]
    for method, path in conditional:
        operation = paths[path][method]
        assert "if-match" in {parameter["name"].lower() for parameter in operation["parameters"]}, path
        assert {"400", "412"} <= set(operation["responses"]), path
        assert "application/problem+json" in operation["responses"]["412"]["content"]
    read = paths["/api/v1/http-templates/{name}"]["get"]["responses"]["200"]
    assert "ETag" in read["headers"]
