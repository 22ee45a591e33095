"""Two users editing one catalog object at once, through the application layer (the admin API's and exportctl's
use cases), on the real catalog (SQLite and PostgreSQL): neither edit is lost unseen, and an edit that keeps
losing the race is refused as a conflict (409, exportctl exit 4) with nothing of it stored."""

from __future__ import annotations

import threading
from typing import Any

import psycopg.errors
import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm.exc import StaleDataError

from shared.application.actors import Actor, Role
from shared.application.checks import ObjectChecks
from shared.application.errors import Conflict, Stale
from shared.application.objects import ExpectedVersion, apply_objects, replace_object, save_definition_step
from shared.catalog import CatalogStores
from shared.catalog.definitions_store import WRITE_ATTEMPTS, SqlDefinitionsStore
from shared.cli.exits import REFUSED, code_of_refusal
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.destinations import DestinationPolicy
from shared.domain.revisions import Revision
from shared.domain.secret_references import SecretReferencePolicy
from shared.secrets_at_rest import SecretCipher

pytestmark = pytest.mark.integration

DEADLINE = 10.0  # seconds any one step may take before the test says it hung
ALICE = Actor(name="alice", role=Role.ADMIN)
BOB = Actor(name="bob", role=Role.ADMIN)
CHECKS = ObjectChecks(
    policy=DestinationPolicy.parse(""),
    resolve_host=lambda _host: ["93.184.215.14"],
    secret_references=SecretReferencePolicy.parse("PARTNER_", "/var/run/secrets/member-export"),
)


def definition(label: str) -> ExportDefinition:
    return ExportDefinition(name="d", query="q", template="t", label=label)


def alices_edit(stores: CatalogStores) -> ExportDefinition:
    """Alice replaces definition ``d`` with her label (the admin API's ``PUT``)."""
    body = {"query": "q", "template": "t", "label": "alice's"}
    return replace_object(ALICE, ExportDefinition, "d", body, store=stores.definitions, checks=CHECKS)[1]


@pytest.fixture
def stores(catalog: CatalogStores) -> CatalogStores:
    apply_objects(
        ALICE,
        [
            ConnectionProfile(name="p", base_url="https://partner.example.com"),
            SavedQuery(name="q", sql="SELECT id, email FROM members"),
            HttpTemplate(name="t", query="q", profile="p"),
            definition("first"),
        ],
        store=catalog.definitions,
        checks=CHECKS,
    )
    return catalog


def test_an_edit_made_while_another_is_stored_lands_on_top_of_it_and_both_are_audited(
    stores: CatalogStores, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Alice replaces the definition (the admin API's PUT); Bob's apply is stored while hers is under way.

    On PostgreSQL Bob's edit is stored between Alice's read of the row and her write (no row lock is held): her
    write, conditional on the version she read, loses and is tried again on a fresh read. On SQLite her
    transaction takes the database's write lock when it first checks the objects her definition names (her audit
    entry flushed), before the row is read, so Bob's edit can only be stored before that check. Either way both
    answer success, hers is stored on top as version 3, and both edits are in the audit log (with the old code on
    PostgreSQL, Bob's edit waited for her row lock: it hung)."""
    real_write, real_hold = SqlDefinitionsStore._write, SqlDefinitionsStore._hold_references
    tries: list[str] = []
    held: list[int] = []

    def bobs_edit() -> None:
        editor = threading.Thread(
            target=apply_objects,
            args=(BOB, [definition("bob's")]),
            kwargs={"store": stores.definitions, "checks": CHECKS},
            name="bob",
        )
        editor.start()
        editor.join(DEADLINE)
        assert not editor.is_alive(), "Bob's edit hung"

    def write(self: SqlDefinitionsStore, session: Any, obj: Any, **how: Any) -> Any:
        if threading.current_thread().name == "bob":
            return real_write(self, session, obj, **how)
        tries.append(obj.label)
        result = real_write(self, session, obj, **how)
        if len(tries) == 1 and database_url.startswith("postgresql"):
            bobs_edit()
        return result

    def hold(self: SqlDefinitionsStore, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread().name != "bob" and not held and not database_url.startswith("postgresql"):
            held.append(1)
            bobs_edit()
        real_hold(self, *args, **kwargs)

    monkeypatch.setattr(SqlDefinitionsStore, "_write", write)
    monkeypatch.setattr(SqlDefinitionsStore, "_hold_references", hold)
    stored = alices_edit(stores)
    assert stored.label == "alice's"

    version, now = stores.definitions.get_versioned(ExportDefinition, "d")[1:]
    assert (version, now.label) == (3, "alice's")
    assert len(tries) == (2 if database_url.startswith("postgresql") else 1)  # PostgreSQL: read again once
    updates = [(e.actor, (e.after or {}).get("label")) for e in stores.audit.entries(name="d") if e.action == "update"]
    assert sorted(updates) == [("alice", "alice's"), ("bob", "bob's")]


def test_an_edit_that_loses_every_try_is_refused_as_a_conflict_and_nothing_of_it_is_stored(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """Every try of the write finds the row changed at its flush (as another writer's edit makes it): after
    ``WRITE_ATTEMPTS`` tries the use case refuses with a Conflict (the admin API's 409, exportctl's exit 4)
    whose reason says what to do, and neither the object nor its audit entry is stored."""
    real_write = SqlDefinitionsStore._write
    tries: list[str] = []

    def losing(self: SqlDefinitionsStore, session: Any, obj: Any, **how: Any) -> Any:
        tries.append(obj.name)
        real_write(self, session, obj, **how)
        raise StaleDataError("UPDATE statement on table 'catalog_objects' expected to update 1 row(s); 0 were matched")

    monkeypatch.setattr(SqlDefinitionsStore, "_write", losing)
    with pytest.raises(Conflict) as refused:
        alices_edit(stores)

    assert (refused.value.status, refused.value.slug, code_of_refusal(refused.value)) == (409, "edit-conflict", REFUSED)
    assert refused.value.reason == (
        f"ExportDefinition 'd' was changed by others at each of {WRITE_ATTEMPTS} tries to write it: "
        "nothing was written, try again"
    )
    assert len(tries) == WRITE_ATTEMPTS
    monkeypatch.undo()
    version, now = stores.definitions.get_versioned(ExportDefinition, "d")[1:]
    assert (version, now.label) == (1, "first")
    assert [e.action for e in stores.audit.entries(name="d")] == ["create"]


BOBS_STEP = {"error": {"enabled": True, "recipients": ["bob@example.com"]}}  # the Notifications step


def bobs_step(stores: CatalogStores) -> ExportDefinition:
    return save_definition_step(
        BOB, "d", BOBS_STEP, store=stores.definitions, checks=CHECKS, field_name="notifications"
    )[1]


def test_a_step_saved_while_another_step_is_saved_keeps_both(stores: CatalogStores, monkeypatch: pytest.MonkeyPatch):
    """Alice saves one step (no If-Match); while it is being checked, Bob saves the Notifications step. Both
    answer success and the definition has both. Before, Alice's step was merged into the definition as she read
    it and written unconditionally: Bob's recipients were silently undone."""
    from shared.application import objects

    real_checked = objects.checked
    calls: list[int] = []

    def checked(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # between Alice's read and her write (Bob's own check answers as ever)
            bobs_step(stores)
        return real_checked(*args, **kwargs)

    monkeypatch.setattr(objects, "checked", checked)
    alices = save_definition_step(ALICE, "d", {"label": "alice's"}, store=stores.definitions, checks=CHECKS)[1]

    stored = stores.definitions.get(ExportDefinition, "d")
    assert alices == stored
    assert (stored.label, stored.notifications.error.recipients) == ("alice's", ["bob@example.com"])


def test_a_step_saved_with_if_match_while_another_step_is_saved_is_refused_as_stale(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """With If-Match the writer asked for the definition as read: another's save meanwhile is 412, never merged."""
    from shared.application import objects

    id_, version, _ = stores.definitions.get_versioned(ExportDefinition, "d")
    real_checked = objects.checked
    calls: list[int] = []

    def checked(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            bobs_step(stores)
        return real_checked(*args, **kwargs)

    monkeypatch.setattr(objects, "checked", checked)
    with pytest.raises(Stale):
        save_definition_step(
            ALICE,
            "d",
            {"label": "alice's"},
            store=stores.definitions,
            checks=CHECKS,
            expected_version=ExpectedVersion.of(Revision(id_, version)),
        )
    stored = stores.definitions.get(ExportDefinition, "d")
    assert (stored.label, stored.notifications.error.recipients) == ("first", ["bob@example.com"])


ENDED_FOR_ANOTHER = [psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure]


def ended_for_another(monkeypatch: pytest.MonkeyPatch, error: type[Exception], times: int) -> list[str]:
    """The store's write of a row ends, its first ``times`` tries, as PostgreSQL ends a transaction it chose to
    fail so that another could go on (``error``, as the driver raises it); the tries, by the label written."""
    real_write = SqlDefinitionsStore._write
    tries: list[str] = []

    def ended(self: SqlDefinitionsStore, session: Any, obj: Any, **how: Any) -> Any:
        tries.append(obj.label)
        result = real_write(self, session, obj, **how)
        if len(tries) <= times:
            session.flush()
            raise OperationalError("UPDATE catalog_objects SET …", {}, error("the database ended the transaction"))
        return result

    monkeypatch.setattr(SqlDefinitionsStore, "_write", ended)
    return tries


@pytest.mark.parametrize("if_match", [False, True], ids=["plain", "if-match"])
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # the errors are PostgreSQL's
@pytest.mark.parametrize("error", ENDED_FOR_ANOTHER, ids=["deadlock", "serialization-failure"])
def test_an_edit_the_database_ends_for_another_transaction_is_done_again_and_stored_once(
    stores: CatalogStores, database_url: str, monkeypatch: pytest.MonkeyPatch, error: type[Exception], if_match: bool
):
    """PostgreSQL fails one of two transactions waiting for each other (a deadlock, SQLSTATE 40P01) or that it
    cannot serialise (40001): that is a race lost, not an error of the write. Alice's edit is rolled back and done
    again, stored once and audited once (with ``If-Match``, still conditional on the revision she read). Before:
    the driver's error went up to the caller (the admin API's 500, exportctl's exit 5)."""
    row_id, version, _ = stores.definitions.get_versioned(ExportDefinition, "d")
    expected = ExpectedVersion(frozenset({Revision(row_id, version)})) if if_match else None
    tries = ended_for_another(monkeypatch, error, times=1)

    body = {"query": "q", "template": "t", "label": "alice's"}
    stored = replace_object(
        ALICE, ExportDefinition, "d", body, store=stores.definitions, checks=CHECKS, expected_version=expected
    )[1]

    assert stored.label == "alice's"
    assert tries == ["alice's", "alice's"]
    version, now = stores.definitions.get_versioned(ExportDefinition, "d")[1:]
    assert (version, now.label) == (2, "alice's")
    assert [e.action for e in stores.audit.entries(name="d")] == ["update", "create"]  # newest first


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # the errors are PostgreSQL's
@pytest.mark.parametrize("error", ENDED_FOR_ANOTHER, ids=["deadlock", "serialization-failure"])
def test_an_edit_the_database_ends_at_every_try_is_refused_as_a_conflict_and_nothing_of_it_is_stored(
    stores: CatalogStores, database_url: str, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
):
    tries = ended_for_another(monkeypatch, error, times=WRITE_ATTEMPTS)

    with pytest.raises(Conflict) as refused:
        alices_edit(stores)

    assert (refused.value.status, refused.value.slug) == (409, "edit-conflict")
    assert len(tries) == WRITE_ATTEMPTS
    monkeypatch.undo()
    version, now = stores.definitions.get_versioned(ExportDefinition, "d")[1:]
    assert (version, now.label) == (1, "first")
    assert [e.action for e in stores.audit.entries(name="d")] == ["create"]


def test_a_profile_edited_while_secrets_are_rotated_keeps_the_edit_readable_with_the_new_key_alone(
    database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """``exportctl secrets rotate`` rewrites every profile with the new key while a service (already given the
    new key) stores a new token for one of them. The edit is not overwritten by the rotation's copy of the
    profile as it read it (on SQLite, which locks no row, the old code did: the new token was lost); the
    rotation is done again on a fresh read, and the profile reads back edited, with only the new key."""
    old_key, new_key = SecretCipher.generate_key(), SecretCipher.generate_key()
    before = CatalogStores.from_url(database_url, migrate=True, cipher=SecretCipher([old_key]))
    before.definitions.apply(
        ConnectionProfile(name="p", base_url="https://a.example", auth={"type": "bearer", "token": "first-token"})
    )
    before.close()
    stores = CatalogStores.from_url(database_url, cipher=SecretCipher([new_key, old_key]))
    service = SqlDefinitionsStore(stores.database, SecretCipher([new_key, old_key]))
    edited = ConnectionProfile(name="p", base_url="https://b.example", auth={"type": "bearer", "token": "second-token"})
    editor = threading.Thread(target=service.apply, args=(edited,), name="service")
    real_stored = SqlDefinitionsStore._stored

    def stored(self: SqlDefinitionsStore, obj: Any) -> Any:
        if threading.current_thread().name != "service" and editor.ident is None:
            editor.start()  # the rotation has read the profile (PostgreSQL: and locked it), not yet written it
            if not database_url.startswith("postgresql"):
                editor.join(DEADLINE)  # on PostgreSQL the edit waits for the rotation's row lock instead
        return real_stored(self, obj)

    monkeypatch.setattr(SqlDefinitionsStore, "_stored", stored)
    try:
        assert stores.definitions.reencrypt_secrets() == (1, 1)
        editor.join(DEADLINE)
        assert not editor.is_alive()
        monkeypatch.undo()
        with_new_key_alone = SqlDefinitionsStore(stores.database, SecretCipher([new_key]))
        profile = with_new_key_alone.get(ConnectionProfile, "p")
        assert str(profile.base_url).rstrip("/") == "https://b.example"
        assert profile.auth.token.get_secret_value() == "second-token"
    finally:
        stores.close()
