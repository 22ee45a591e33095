"""Two admins editing one catalog object never lose an edit silently: ``ETag`` on reads and writes (the stored
object's revision: its id and version), ``If-Match`` on PUT, DELETE and the definition steps (412 when the object
changed, or was deleted and created again, since it was read; 404 when it is gone, as without ``If-Match``), through
the real admin app over HTTP, on a SQLite and on a PostgreSQL catalog."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shared.application.audit import change
from shared.catalog import CatalogStores
from shared.catalog.definitions_store import SqlDefinitionsStore
from shared.domain.catalog_objects import CatalogObject, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.revisions import Revision
from shared.errors import VersionMismatch
from tests.admin_app import InProcessApi, in_process_api, seed

pytestmark = pytest.mark.integration

DEADLINE = 10.0  # seconds a step may take before the test says it hung
QUERY = "/api/v1/saved-queries/gold"
PROFILE = "/api/v1/connection-profiles/partner"
DEFINITION = "/api/v1/export-definitions/nightly"


@pytest.fixture
def api(tmp_path: Path, database_url: str, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[InProcessApi]:
    with (
        in_process_api(tmp_path, catalog_url=database_url, migrated_catalog=migrated_catalog) as api,
        api.client() as client,
    ):
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


def _revision(etag: str) -> Revision:
    """The revision an ``ETag`` of the API names (a strong tag: ``"<id>.<version>"``)."""
    assert etag.startswith('"'), etag
    assert etag.endswith('"'), etag
    revision = Revision.parse(etag[1:-1])
    assert revision is not None, etag
    return revision


def _version(etag: str) -> int:
    return _revision(etag).version


def test_a_read_carries_the_stored_version_as_etag_and_a_save_with_it_works_and_moves_it(api: InProcessApi):
    etag, query = _read(api, QUERY)
    assert _version(etag) == 1  # created once, never changed: version 1
    with api.client() as client:
        saved = client.put(QUERY, json=_labelled(query, "Gold, renamed"), headers={"If-Match": etag})
    assert saved.status_code == 200, saved.text
    assert _revision(saved.headers["ETag"]) == Revision(_revision(etag).object_id, 2)  # the same object, next version
    assert saved.json()["label"] == "Gold, renamed"
    assert _read(api, QUERY)[0] == saved.headers["ETag"]


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
    assert _version(_read(api, QUERY)[0]) == 2
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
    assert _revision(renamed.headers["ETag"]) == Revision(_revision(etag).object_id, 2)  # renamed, the same object
    assert _read(api, "/api/v1/http-templates/kept")[0] == renamed.headers["ETag"]


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
    assert (_version(stored_etag), stored["label"]) == (2, answers[0][1])
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
        assert _version(saved.headers["ETag"]) == 2
        assert client.delete(DEFINITION, headers={"If-Match": "*"}).status_code == 204
        gone = client.delete(DEFINITION, headers={"If-Match": "*"})
        assert gone.status_code == 404, gone.text  # as without If-Match: it does not exist
        again = client.put(DEFINITION, json=definition, headers={"If-Match": "*"})
        assert again.status_code == 404, again.text
        assert client.get(DEFINITION).status_code == 404  # not created again by the stale save


def test_a_list_of_etags_matches_when_one_of_them_is_current_and_weak_ones_never(api: InProcessApi):
    etag, query = _read(api, QUERY)
    with api.client() as client:
        weak = client.put(QUERY, json=_labelled(query, "Weak"), headers={"If-Match": f"W/{etag}"})
        assert weak.status_code == 412, weak.text
        listed = client.put(QUERY, json=_labelled(query, "Listed"), headers={"If-Match": f'"7", {etag}'})
        assert listed.status_code == 200, listed.text
    assert _read(api, QUERY) == (listed.headers["ETag"], listed.json())
    assert _version(listed.headers["ETag"]) == 2


def test_an_etag_of_before_revisions_a_plain_version_names_no_object_and_is_412_saying_so(api: InProcessApi):
    """``"1"``, as the API sent before its ETags named the object: it no longer says which object it was read from,
    so it matches none (412), even while the object is at version 1, and the refusal says that (before: "was
    changed since it was read (it is now at version 1 …)" of an object never changed)."""
    etag, query = _read(api, QUERY)
    assert _version(etag) == 1
    with api.client() as client:
        old = client.put(QUERY, json=_labelled(query, "From an old ETag"), headers={"If-Match": '"1"'})
        old_delete = client.delete(QUERY, headers={"If-Match": '"1"'})
    for answer in (old, old_delete):
        assert answer.status_code == 412, answer.text
        assert answer.json()["detail"] == (
            "SavedQuery 'gold': the revision sent (an ETag from before revisions named the object) names no object:"
            " nothing was written; read it again for its ETag and redo the change"
        )
    assert _read(api, QUERY) == (etag, query)


def _a_spare_template(api: InProcessApi) -> tuple[str, dict[str, Any]]:
    """A template nothing uses (it may be deleted), read: its ETag and body."""
    with api.client() as client:
        assert client.post("/api/v1/http-templates/upsert/copy", json={"name": "spare"}).status_code == 201
    return _read(api, SPARE)


SPARE = "/api/v1/http-templates/spare"


def test_an_etag_read_before_a_delete_never_matches_the_object_created_again_under_its_name(api: InProcessApi):
    """Deleted and created again, the object is at version 1 again, as when it was read: the ETag read names the
    object too, so a stale writer's save or delete is refused (before, both were done: a lost update)."""
    etag, spare = _a_spare_template(api)
    with api.client("editor") as bob:
        assert bob.delete(SPARE).status_code == 204
        created = bob.post("/api/v1/http-templates", json=_labelled(spare, "Bob's new one"))
        assert created.status_code == 201, created.text
    assert _version(created.headers["ETag"]) == _version(etag) == 1
    assert created.headers["ETag"] != etag
    with api.client() as alice:
        stale_save = alice.put(SPARE, json=_labelled(spare, "Alice's"), headers={"If-Match": etag})
        stale_delete = alice.delete(SPARE, headers={"If-Match": etag})
    for stale in (stale_save, stale_delete):
        assert stale.status_code == 412, stale.text
        detail = stale.json()["detail"]
        assert f"HttpTemplate 'spare' {NOT_THE_OBJECT}" in detail, detail
        assert "this one is at version 1, last changed by editor" in detail, detail
    assert _read(api, SPARE) == (created.headers["ETag"], created.json())
    with api.client() as alice:
        fresh = alice.put(SPARE, json=_labelled(spare, "Alice's"), headers={"If-Match": created.headers["ETag"]})
    assert fresh.status_code == 200, fresh.text


#: What a 412 says of a revision that is not one of the object under the name (the catalog cannot tell whose).
NOT_THE_OBJECT = (
    "is not the object of the revision sent: that revision may be another object's, or one of an object of this name"
    " since deleted"
)


def test_an_etag_of_another_object_is_412_saying_it_is_not_this_objects_not_that_it_was_deleted(api: InProcessApi):
    """The ETag of another object (the template ``upsert``'s, sent to ``spare``: a client mixing up its reads)
    names an object that still exists under its own name: the 412 says the revision is not one of this object,
    as far as is known (before: "was deleted and created again since it was read": nobody deleted anything)."""
    etag, spare = _a_spare_template(api)
    upsert_etag, _ = _read(api, "/api/v1/http-templates/upsert")
    with api.client() as alice:
        save = alice.put(SPARE, json=_labelled(spare, "Alice's"), headers={"If-Match": upsert_etag})
        delete = alice.delete(SPARE, headers={"If-Match": upsert_etag})
    for refused in (save, delete):
        assert refused.status_code == 412, refused.text
        assert refused.json()["type"].endswith("changed-since-read"), refused.json()
        detail = refused.json()["detail"]
        assert detail.startswith(f"HttpTemplate 'spare' {NOT_THE_OBJECT} (this one is at version 1, last changed by"), (
            detail
        )
        assert detail.endswith("): nothing was written; read it again and redo the change"), detail
        assert "created again" not in detail
    assert _read(api, SPARE) == (etag, spare)  # nothing written


def test_a_conditional_write_of_an_object_gone_or_out_of_scope_answers_as_without_if_match(api: InProcessApi):
    """Another unit's definition deleted: a write conditional on it answers 404, as without ``If-Match``, saying
    nothing of who deleted it or when (before: 412 naming the deleter and the time)."""
    with api.client() as admin:
        other = admin.post(DEFINITION + "/copy", json={"name": "apac"})
        assert other.status_code == 201, other.text
        moved = admin.put("/api/v1/export-definitions/apac", json=other.json() | {"business_unit": "apac"})
        assert moved.status_code == 200, moved.text
        etag = moved.headers["ETag"]
    with api.client("emea-admin") as emea:
        unconditional_delete = emea.delete("/api/v1/export-definitions/apac")
        conditional_delete = emea.delete("/api/v1/export-definitions/apac", headers={"If-Match": etag})
    assert unconditional_delete.status_code == conditional_delete.status_code == 403  # it is there, not theirs
    with api.client() as admin:
        assert admin.delete("/api/v1/export-definitions/apac").status_code == 204
    with api.client("emea-admin") as emea:
        answers = {
            "without": emea.delete("/api/v1/export-definitions/apac"),
            "with its ETag": emea.delete("/api/v1/export-definitions/apac", headers={"If-Match": etag}),
            "with *": emea.delete("/api/v1/export-definitions/apac", headers={"If-Match": "*"}),
            "a save with its ETag": emea.put(
                "/api/v1/export-definitions/apac/schedule", json={"enabled": False}, headers={"If-Match": etag}
            ),
        }
    for how, answer in answers.items():
        assert answer.status_code == 404, (how, answer.text)
        assert answer.json()["detail"] == "ExportDefinition 'apac' does not exist", how
        assert "admin" not in answer.text, how


#: What the 400 says of a value that is no entity-tag list, and of a tag this API never sends.
_NO_LIST = "header 'If-Match': give the ETag read, as sent"
_NOT_OURS = ' is no ETag of this API: give the ETag read, as sent (quoted: "<id>.<version>", the id in 32 lowercase hex'


@pytest.mark.parametrize(
    ("header", "said"),
    [
        *((header, _NO_LIST) for header in ["1", '"1', "W/1", '"1" "2"', "**"]),
        ("", "header 'If-Match': no entity-tag in it"),
        # Valid entity-tags, none of this API's (before: 412 ``unknown-revision``, "an ETag from before revisions").
        *((header, _NOT_OURS) for header in ['"abc.-1"', 'W/"' + "x" * 10_000 + '"', '"' + "," * 5_000 + '"']),
        ('"1", "a.1"', _NOT_OURS),
    ],
)
def test_a_malformed_if_match_is_400_naming_the_header_and_nothing_is_written(
    api: InProcessApi, header: str, said: str
):
    etag, query = _read(api, QUERY)
    with api.client() as client:
        put = client.put(QUERY, json=_labelled(query, "Malformed"), headers={"If-Match": header})
        delete = client.delete(QUERY, headers={"If-Match": header})
    for answer in (put, delete):
        assert answer.status_code == 400, answer.text
        assert answer.json()["type"].endswith("/invalid-header")
        assert answer.json()["detail"].startswith("header 'If-Match': ")
        assert said in answer.json()["detail"]
        assert len(answer.content) < 1_000  # a long tag is quoted cut
    assert _read(api, QUERY) == (etag, query)


def test_without_if_match_the_last_save_wins_as_before_and_answers_its_etag(api: InProcessApi):
    _, query = _read(api, QUERY)
    with api.client() as client:
        first = client.put(QUERY, json=_labelled(query, "First"))
        last = client.put(QUERY, json=_labelled(query, "Last"))
        created = client.post("/api/v1/saved-queries", json=_labelled(query, "New") | {"name": "new"})
        copied = client.post(QUERY + "/copy", json={})
    assert (first.status_code, last.status_code) == (200, 200)
    assert (_version(first.headers["ETag"]), _version(last.headers["ETag"])) == (2, 3)
    assert _read(api, QUERY) == (last.headers["ETag"], last.json())
    assert created.status_code == copied.status_code == 201
    assert _version(created.headers["ETag"]) == _version(copied.headers["ETag"]) == 1
    assert created.headers["ETag"] != copied.headers["ETag"]  # two objects


def test_a_writes_etag_is_the_revision_it_stored_even_when_another_write_follows_at_once(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    """Another writer's edit is stored right after this write's, before its answer is made: the answer's ETag is
    still the revision this write stored (before, the answer read the object again for it, found another's edit
    and sent no ETag), and a save with it is refused, the other edit being newer."""
    etag, query = _read(api, QUERY)
    real_conditional = SqlDefinitionsStore._conditional
    followed: list[str] = []

    def write_then_another(self: SqlDefinitionsStore, write: Any, kind: str, name: str, expected: Any) -> Any:
        done = real_conditional(self, write, kind, name, expected)
        if not followed:
            followed.append(name)
            self.apply(SavedQuery.model_validate(query | {"label": "Bob's, right after"}))
        return done

    monkeypatch.setattr(SqlDefinitionsStore, "_conditional", write_then_another)
    with api.client() as client:
        saved = client.put(QUERY, json=_labelled(query, "Alice's"), headers={"If-Match": etag})
    monkeypatch.undo()
    assert saved.status_code == 200, saved.text
    assert saved.json()["label"] == "Alice's"
    assert _revision(saved.headers["ETag"]) == Revision(_revision(etag).object_id, 2)
    stored_etag, stored = _read(api, QUERY)
    assert (_version(stored_etag), stored["label"]) == (3, "Bob's, right after")
    with api.client() as client:
        again = client.put(QUERY, json=_labelled(query, "Alice's again"), headers={"If-Match": saved.headers["ETag"]})
    assert again.status_code == 412, again.text


@pytest.mark.parametrize("action", ["update"])
def test_a_refusal_found_at_the_write_names_the_other_writer_never_the_refused_one(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch, action: str
):
    """Bob (editor) saves the template between Alice's (admin) read and her conditional write: the store refuses it
    and says who changed it last: Bob, as the catalog holds it after her write rolled back (before, the message was
    made in her transaction and named her own unsaved change: "last changed by admin"). A delete of Bob's in that
    window: see :func:`test_an_object_gone_at_the_conditional_write_is_404_naming_no_one`."""
    _, spare = _a_spare_template(api)
    real_read = SqlDefinitionsStore.get_versioned
    bobs: list[str] = []

    def read_then_bob_writes(self: SqlDefinitionsStore, kind: Any, name: str) -> Any:
        found = real_read(self, kind, name)
        if name == "spare" and not bobs:
            bobs.append(action)
            current: CatalogObject = found[2]
            if action == "delete":
                self.delete(type(current), name, audit=[change("editor", "delete", self, before=current)])
            else:
                edited = current.model_copy(update={"label": "Bob's"})
                self.apply(edited, audit=[change("editor", "update", self, before=current, after=edited)])
        return found

    monkeypatch.setattr(SqlDefinitionsStore, "get_versioned", read_then_bob_writes)
    with api.client() as alice:
        if action == "delete":
            refused = alice.delete(SPARE, headers={"If-Match": "*"})
        else:
            refused = alice.put(SPARE, json=_labelled(spare, "Alice's"), headers={"If-Match": "*"})
    monkeypatch.undo()
    assert refused.status_code == 412, refused.text
    detail = refused.json()["detail"]
    assert "by editor" in detail, detail
    assert "admin" not in detail, detail
    assert "it is now at version 2, last changed by editor" in detail, detail
    assert _audit(api, "spare")[0]["actor"] == "editor"  # nothing of Alice's recorded


def _between_read_and_write(monkeypatch: pytest.MonkeyPatch, name: str, other: Callable[[SqlDefinitionsStore], None]):
    """``other`` done (and committed) once, right after the use case's read of ``name`` and before its write."""
    real_read = SqlDefinitionsStore.get_versioned
    done: list[str] = []

    def read_then_other(self: SqlDefinitionsStore, kind: Any, read_name: str) -> Any:
        found = real_read(self, kind, read_name)
        if read_name == name and not done:
            done.append(read_name)
            other(self)
        return found

    monkeypatch.setattr(SqlDefinitionsStore, "get_versioned", read_then_other)


def _renamed(kind: type[CatalogObject], old: str, new: str, who: str) -> Callable[[SqlDefinitionsStore], None]:
    def rename(store: SqlDefinitionsStore) -> None:
        current = store.get(kind, old)
        renamed = current.model_copy(update={"name": new})
        store.rename(old, renamed, audit=[change(who, "rename", store, before=current, after=renamed)])

    return rename


def _deleted(kind: type[CatalogObject], name: str, who: str) -> Callable[[SqlDefinitionsStore], None]:
    def delete(store: SqlDefinitionsStore) -> None:
        store.delete(kind, name, audit=[change(who, "delete", store, before=store.get(kind, name))])

    return delete


@pytest.mark.parametrize("how", ["deleted", "renamed"])
@pytest.mark.parametrize("write", ["update", "rename", "delete", "step"])
def test_an_object_gone_at_the_conditional_write_is_404_naming_no_one(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch, how: str, write: str
):
    """Bob (editor) deletes or renames the object between the use case's check of Alice's ``If-Match`` and her
    write: no object is under the name any more, so the answer is 404, as without ``If-Match``, naming no one and
    no time (before: 412 "was deleted by <the last writer under the old name> at <then> since it was read": for a
    rename, its creator and the creation time, though nobody deleted it)."""
    kind: type[CatalogObject]
    if write == "step":
        path, kind, name = DEFINITION, ExportDefinition, "nightly"
        etag, _ = _read(api, path)
    else:
        etag, _ = _a_spare_template(api)
        path, kind, name = SPARE, HttpTemplate, "spare"
    with api.client() as client:
        body = client.get(path).json()
    gone = _deleted(kind, name, "editor") if how == "deleted" else _renamed(kind, name, "z", "editor")
    _between_read_and_write(monkeypatch, name, gone)
    with api.client() as alice:
        if write == "delete":
            answer = alice.delete(path, headers={"If-Match": etag})
        elif write == "rename":
            answer = alice.put(path, json=body | {"name": "alices"}, headers={"If-Match": etag})
        elif write == "step":
            answer = alice.put(path + "/schedule", json={"enabled": False}, headers={"If-Match": etag})
        else:
            answer = alice.put(path, json=_labelled(body, "Alice's"), headers={"If-Match": etag})
    monkeypatch.undo()
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"] == f"{kind.__name__} '{name}' does not exist"
    with api.client() as client:
        assert client.get(path).status_code == 404  # not created again
        assert client.get(path.rsplit("/", 1)[0] + "/alices").status_code == 404


@pytest.mark.parametrize("write", ["update", "step"])
def test_a_save_without_if_match_racing_a_delete_never_creates_the_object_again(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch, write: str
):
    """Bob deletes the object between the use case's read and its write of Alice's unconditional save: 404, and the
    object stays deleted (before: created again with a new id at version 1, audited as Alice's "update")."""
    kind: type[CatalogObject]
    if write == "update":
        _a_spare_template(api)
        path, kind, name = SPARE, HttpTemplate, "spare"
    else:
        path, kind, name = DEFINITION, ExportDefinition, "nightly"
    with api.client() as client:
        body = client.get(path).json()
    _between_read_and_write(monkeypatch, name, _deleted(kind, name, "editor"))
    with api.client() as alice:
        if write == "update":
            answer = alice.put(path, json=_labelled(body, "Alice's"))
        else:
            answer = alice.put(path + "/schedule", json={"enabled": False})
    monkeypatch.undo()
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"] == f"{kind.__name__} '{name}' does not exist"
    with api.client() as client:
        assert client.get(path).status_code == 404
    assert [entry["action"] for entry in _audit(api, name)][:1] == ["delete"]  # no "update" of Alice's after it


def test_a_conditional_write_refused_after_the_object_moved_out_of_the_writers_unit_names_no_writer(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    """The admin moves the definition to another business unit between the use case's check of the emea admin's
    ``If-Match`` and the write: the answer is 403, as without ``If-Match`` for a definition out of sight, naming
    neither the writer nor the time (before: 412 "… last changed by admin at …")."""
    etag, _ = _read(api, DEFINITION, "emea-admin")

    def move(store: SqlDefinitionsStore) -> None:
        current = store.get(ExportDefinition, "nightly")
        moved = current.model_copy(update={"business_unit": "apac"})
        store.apply(moved, audit=[change("admin", "update", store, before=current, after=moved)])

    _between_read_and_write(monkeypatch, "nightly", move)
    with api.client("emea-admin") as emea:
        answer = emea.put(DEFINITION + "/schedule", json={"enabled": False}, headers={"If-Match": etag})
    monkeypatch.undo()
    assert answer.status_code == 403, answer.text
    assert answer.json()["type"].endswith("/out-of-scope")
    assert "admin" not in answer.json()["detail"].replace("emea-admin", "")
    assert _read(api, DEFINITION)[1]["business_unit"] == "apac"


# --- the store's conditional write, where two writers really race (PostgreSQL: no lock before the UPDATE) ------


@pytest.fixture
def pg_catalog(
    postgres_database_factory: Callable[[], str], migrated_catalog: Callable[[str], CatalogStores]
) -> Iterator[CatalogStores]:
    """PostgreSQL only: on SQLite a write's transaction takes the database's lock before it reads the row."""
    stores = migrated_catalog(postgres_database_factory())
    yield stores
    stores.close()


def test_two_conditional_writes_that_both_read_the_version_store_one_and_refuse_the_other(
    pg_catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """Both writes check the stored version in their transaction, then both update: the compare and the write are
    one step (``WHERE version = ...``), so the second is refused, not retried on a fresh read."""
    store = pg_catalog.definitions
    _, read = store.apply_versioned(SavedQuery(name="q", sql="SELECT id FROM members"))
    both_checked = threading.Barrier(2, timeout=DEADLINE)
    real_check = SqlDefinitionsStore._require_version

    def check_then_wait(self: SqlDefinitionsStore, *args: Any) -> None:
        real_check(self, *args)
        both_checked.wait()

    monkeypatch.setattr(SqlDefinitionsStore, "_require_version", check_then_wait)

    def write(label: str) -> str:
        try:
            store.apply(SavedQuery(name="q", sql="SELECT id FROM members", label=label), expected_version=read)
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
    _, read = store.apply_versioned(SavedQuery(name="q", sql="SELECT id FROM members"))
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
        store.apply(SavedQuery(name="q", sql="SELECT id FROM members", label="mine"), expected_version=read)
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
        assert "If-Match" in operation["responses"]["400"]["description"], path  # not only a body undecodable
        assert ("body" in operation["responses"]["400"]["description"]) == (method == "put"), path  # DELETE: none
    read = paths["/api/v1/http-templates/{name}"]["get"]["responses"]["200"]
    assert "ETag" in read["headers"]


# --- review 3: who a 412 names, a change never allowed, secrets, the old token's problem type ------------------


APAC_COPY = "/api/v1/export-definitions/apac-nightly"


def _an_apac_definition_using_gold(api: InProcessApi) -> None:
    """``apac-nightly``: a copy of ``nightly`` (so using the shared query ``gold``) of the business unit apac."""
    with api.client() as admin:
        copy = admin.post(DEFINITION + "/copy", json={"name": "apac-nightly"})
        assert copy.status_code == 201, copy.text
        moved = admin.put(APAC_COPY, json=copy.json() | {"business_unit": "apac"})
        assert moved.status_code == 200, moved.text


def _audit_as(api: InProcessApi, who: str, name: str) -> list[tuple[str, str]]:
    with api.client(who) as client:
        answer = client.get("/api/v1/audit", params={"object": name})
    assert answer.status_code == 200, answer.text
    return [(entry["actor"], entry["action"]) for entry in answer.json()]


def _anonymous(detail: str, kind: str, name: str, version: int) -> None:
    assert detail == (
        f"{kind} '{name}' was changed since it was read (it is now at version {version}): nothing was written; read"
        " it again and redo the change"
    ), detail


def test_a_412_of_a_shared_query_names_its_writer_only_to_a_token_that_may_read_that_change_in_the_audit_log(
    api: InProcessApi,
):
    """The editor changes ``gold`` while an apac definition uses it (the change touches apac and emea), then that
    definition goes: the emea admin may change ``gold`` again but may not read the editor's change in the audit
    log, so its stale save and delete are told what became of ``gold``, not who changed it or when (before: "last
    changed by editor at …", from a 412, while the audit log hid that very entry from the same token)."""
    _an_apac_definition_using_gold(api)
    etag, query = _read(api, QUERY, "emea-admin")
    with api.client("editor") as bob:
        assert bob.put(QUERY, json=_labelled(query, "Bob's")).status_code == 200
    with api.client() as admin:
        assert admin.delete(APAC_COPY).status_code == 204
    assert ("editor", "update") not in _audit_as(api, "emea-admin", "gold")  # the audit log's rule
    with api.client("emea-admin") as emea:
        stale_save = emea.put(QUERY, json=_labelled(query, "Emea's"), headers={"If-Match": etag})
        stale_delete = emea.delete(QUERY, headers={"If-Match": etag})
    for answer in (stale_save, stale_delete):
        assert answer.status_code == 412, answer.text
        assert answer.json()["type"].endswith("/changed-since-read")
        _anonymous(answer.json()["detail"], "SavedQuery", "gold", 2)
    with api.client() as admin:  # unscoped: reads every entry, is told who
        told = admin.put(QUERY, json=_labelled(query, "Admin's"), headers={"If-Match": etag})
    assert told.status_code == 412, told.text
    assert "it is now at version 2, last changed by editor at " in told.json()["detail"]


def test_a_412_of_a_definition_moved_away_and_back_names_no_writer_then_names_one_of_the_tokens_unit(
    api: InProcessApi,
):
    """The editor moves ``nightly`` to apac and back to emea: the last change touched apac, so the emea admin's stale
    step save names no one (before: "last changed by editor"); the editor's next change, of emea only, is one the
    emea admin may read, and then it is named."""
    etag, _ = _read(api, DEFINITION, "emea-admin")
    with api.client("editor") as bob:
        body = bob.get(DEFINITION).json()
        assert bob.put(DEFINITION, json=body | {"business_unit": "apac"}).status_code == 200
        assert bob.put(DEFINITION, json=body | {"business_unit": "emea"}).status_code == 200
    with api.client("emea-admin") as emea:
        stale = emea.put(DEFINITION + "/schedule", json={"enabled": False}, headers={"If-Match": etag})
    assert stale.status_code == 412, stale.text
    _anonymous(stale.json()["detail"], "ExportDefinition", "nightly", 3)
    with api.client("editor") as bob:
        assert bob.put(DEFINITION, json=body | {"label": "Bob's"}).status_code == 200
    assert _audit_as(api, "emea-admin", "nightly")[0] == ("editor", "update")
    with api.client("emea-admin") as emea:
        stale = emea.put(DEFINITION + "/schedule", json={"enabled": False}, headers={"If-Match": etag})
    assert stale.status_code == 412, stale.text
    assert "it is now at version 4, last changed by editor at " in stale.json()["detail"]


def test_a_change_of_a_shared_object_the_token_could_never_make_is_403_whatever_revision_it_sends(
    api: InProcessApi,
):
    """``gold`` is used by an apac definition: the emea admin may neither change nor delete it. With an ``ETag`` of
    before another's change that is 403, as with the current one (before: 412 naming the other writer, then 403
    once read again)."""
    _an_apac_definition_using_gold(api)
    etag, query = _read(api, QUERY, "emea-admin")
    with api.client("editor") as bob:
        assert bob.put(QUERY, json=_labelled(query, "Bob's")).status_code == 200
    current, _ = _read(api, QUERY, "emea-admin")
    with api.client("emea-admin") as emea:
        answers = {
            (tag, how): emea.put(QUERY, json=_labelled(query, "Emea's"), headers={"If-Match": tag})
            if how == "save"
            else emea.delete(QUERY, headers={"If-Match": tag})
            for tag in (etag, current, '"1"')
            for how in ("save", "delete")
        }
    for key, answer in answers.items():
        assert answer.status_code == 403, (key, answer.text)
        assert answer.json()["type"].endswith("/out-of-scope"), key
        assert "editor" not in answer.text, key
    assert _read(api, QUERY)[1]["label"] == "Bob's"


def test_a_412_reads_no_secret_of_the_object_a_stored_object_unreadable_after_the_check_is_still_412(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    """Past the use case's read, loading a profile fails (its key gone, say): the refusal of a stale save is still a
    412, made from the stored row without loading the profile again (before: loaded and decrypted a second time for
    the refusal, so this was a 503 "secrets unreadable")."""
    from shared.secrets_at_rest import SecretsUnreadable

    etag, profile = _read(api, PROFILE)
    with api.client() as client:
        assert client.put(PROFILE, json=_labelled(profile, "Partner, moved")).status_code == 200

    def unreadable(self: SqlDefinitionsStore, kind: Any, row: Any) -> Any:
        raise SecretsUnreadable("no key decrypts it")

    def read_then_key_gone(store: SqlDefinitionsStore) -> None:
        monkeypatch.setattr(SqlDefinitionsStore, "_load", unreadable)

    _between_read_and_write(monkeypatch, "partner", read_then_key_gone)
    with api.client() as alice:
        stale = alice.put(PROFILE, json=_labelled(profile, "Partner, mine"), headers={"If-Match": etag})
    monkeypatch.undo()
    assert stale.status_code == 412, stale.text
    assert "ConnectionProfile 'partner' was changed since it was read (it is now at version 2" in stale.text


def test_an_etag_of_before_revisions_has_its_own_problem_type(api: InProcessApi):
    """The refusal of an ``ETag`` naming no object is no change since a read: its type says so (before: the type
    of a change since the read, ``changed-since-read``), and the OpenAPI document names both types of a 412."""
    _, query = _read(api, QUERY)
    with api.client() as client:
        old = client.put(QUERY, json=_labelled(query, "From an old ETag"), headers={"If-Match": '"1"'})
        old_delete = client.delete(QUERY, headers={"If-Match": '"1"'})
        described = client.get("/openapi.json").json()["paths"][QUERY.replace("gold", "{name}")]
    for answer in (old, old_delete):
        assert answer.status_code == 412, answer.text
        assert answer.json()["type"] == "https://member-export.dev/problems/unknown-revision"
    for method in ("put", "delete"):
        description = described[method]["responses"]["412"]["description"]
        assert "`changed-since-read`" in description, description
        assert "`unknown-revision`" in description, description
