"""A catalog object in use can never be deleted or renamed from under its users, whatever two admins do at once
(real SQLite and PostgreSQL catalogs).

The application layer checks first (who refers to the object being deleted or renamed; that what a new or changed
object names exists), then the store writes, in another transaction. Each test forces the other writer's whole
write in between (run from a patched check, after it has answered): with the check only outside the store's
transaction (before), both writes were stored and the catalog was left with a definition or template naming an
object that no longer exists. Now the store's write checks again in its transaction (locking on PostgreSQL,
holding SQLite's write lock from its first read) and refuses with the answer the check gives."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from devtools.processes import wait_until
from shared.application import objects
from shared.application.actors import Actor, Role
from shared.application.errors import Conflict, Forbidden, Invalid
from shared.application.objects import apply_objects, create_object, delete_object, replace_object
from shared.catalog import CatalogStores
from shared.catalog.database import CatalogDatabase
from shared.catalog.definitions_store import WRITE_ATTEMPTS, SqlDefinitionsStore
from shared.domain.catalog_objects import (
    CatalogObject,
    ConnectionProfile,
    ExportDefinition,
    HttpTemplate,
    SavedQuery,
)
from shared.errors import ObjectInUse, ReferenceMissing
from tests.integration.test_concurrent_catalog_writes import ALICE, BOB, CHECKS, DEADLINE

pytestmark = pytest.mark.integration

SALES = Actor(name="sales-bot", role=Role.ADMIN, business_units=frozenset({"sales"}))
SQL = "SELECT id, email FROM members"


@pytest.fixture
def stores(catalog: CatalogStores) -> CatalogStores:
    """A catalog whose ``q2``, ``t2`` and ``p2`` nobody uses yet (``t`` uses ``q`` and ``p``)."""
    apply_objects(
        ALICE,
        [
            ConnectionProfile(name="p", base_url="https://partner.example.com"),
            ConnectionProfile(name="p2", base_url="https://other.example.com"),
            SavedQuery(name="q", sql=SQL),
            SavedQuery(name="q2", sql=SQL),
            HttpTemplate(name="t", query="q", profile="p"),
            HttpTemplate(name="t2", query="q", profile="p"),
        ],
        store=catalog.definitions,
        checks=CHECKS,
    )
    return catalog


def after_first_call(monkeypatch: pytest.MonkeyPatch, name: str, other_write: Callable[[], Any]) -> list[Any]:
    """Patch the application layer's check ``name`` (``referrers`` or ``checked``) so that its first call answers
    as ever, then ``other_write`` runs to its end (committed): between the check and the store's write. What the
    other write returned is in the list returned."""
    real = getattr(objects, name)
    calls: list[int] = []
    done: list[Any] = []

    def patched(*args: Any, **kwargs: Any) -> Any:
        answer = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # the other write's own checks (calls 2, 3…) answer as ever
            done.append(other_write())
        return answer

    monkeypatch.setattr(objects, name, patched)
    return done


def bobs_definition(**fields: Any) -> Callable[[Any], tuple[Any, ExportDefinition]]:
    body = {"name": "d2", "query": "q", "template": "t", "label": "Bob's"} | fields
    return lambda store: create_object(BOB, ExportDefinition, body, store=store, checks=CHECKS)


def names(store: SqlDefinitionsStore, kind: type[CatalogObject]) -> set[str]:
    return {obj.name for obj in store.list_objects(kind)}


# --- the object deleted or renamed while a new referrer is saved --------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "fields", "referrer"),
    [
        (SavedQuery, "q2", {"query": "q2"}, "ExportDefinition 'd2'"),
        (HttpTemplate, "t2", {"template": "t2"}, "ExportDefinition 'd2'"),
    ],
    ids=["query", "template"],
)
def test_an_object_deleted_while_a_definition_naming_it_is_saved_is_refused_as_in_use(
    stores: CatalogStores,
    monkeypatch: pytest.MonkeyPatch,
    kind: type[CatalogObject],
    name: str,
    fields: dict[str, Any],
    referrer: str,
):
    """Alice deletes an object nobody uses (her check finds no referrer); Bob's new definition naming it is stored
    before her delete: her delete is refused (409 in-use, the check's own text), both objects stay. Before: both
    were stored, and Bob's definition named an object that no longer existed (its runs failed)."""
    store = stores.definitions
    after_first_call(monkeypatch, "referrers", lambda: bobs_definition(**fields)(store))

    with pytest.raises(Conflict) as refused:
        delete_object(ALICE, kind, name, store=store)

    assert refused.value.slug == "in-use"
    assert refused.value.reason == f"'{name}' is used by {referrer}: delete those first"
    assert name in names(store, kind)
    assert getattr(store.get(ExportDefinition, "d2"), next(iter(fields))) == name


def test_a_profile_deleted_while_a_template_naming_it_is_saved_is_refused_as_in_use(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    store = stores.definitions
    body = {"name": "t3", "query": "q", "profile": "p2"}
    after_first_call(
        monkeypatch, "referrers", lambda: create_object(BOB, HttpTemplate, body, store=store, checks=CHECKS)
    )

    with pytest.raises(Conflict) as refused:
        delete_object(ALICE, ConnectionProfile, "p2", store=store)

    assert refused.value.reason == "'p2' is used by HttpTemplate 't3': delete those first"
    assert "p2" in names(store, ConnectionProfile)


def test_a_query_renamed_while_a_definition_naming_it_is_saved_is_refused_as_in_use(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    store = stores.definitions
    after_first_call(monkeypatch, "referrers", lambda: bobs_definition(query="q2")(store))

    with pytest.raises(Conflict) as refused:
        replace_object(ALICE, SavedQuery, "q2", {"name": "q3", "sql": SQL}, store=store, checks=CHECKS)

    assert refused.value.slug == "in-use"
    assert refused.value.reason == "'q2' is used by ExportDefinition 'd2': it cannot be renamed"
    assert "q2" in names(store, SavedQuery)
    assert "q3" not in names(store, SavedQuery)


def test_a_referrer_saved_meanwhile_outside_the_deleters_scope_is_counted_never_named(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """The store's refusal is told as the check tells it: another unit's definition is counted, not named."""
    store = stores.definitions
    after_first_call(monkeypatch, "referrers", lambda: bobs_definition(query="q2", business_unit="finance")(store))

    with pytest.raises(Conflict) as refused:
        delete_object(SALES, SavedQuery, "q2", store=store)

    assert refused.value.reason == "'q2' is used by 1 definition(s) outside this token's scope: delete those first"
    assert "d2" not in refused.value.reason


# --- a referrer saved while what it names is deleted or renamed ----------------------------------------------


def alices_delete(store: SqlDefinitionsStore, kind: type[CatalogObject], name: str) -> Callable[[], None]:
    return lambda: delete_object(ALICE, kind, name, store=store)


def alices_rename(store: SqlDefinitionsStore, kind: type[CatalogObject], name: str) -> Callable[[], Any]:
    def rename() -> Any:
        body = {"name": f"{name}-renamed"} | {
            k: v for k, v in store.get(kind, name).model_dump(mode="json").items() if k != "name"
        }
        return replace_object(ALICE, kind, name, body, store=store, checks=CHECKS)

    return rename


@pytest.mark.parametrize("how", ["deleted", "renamed"])
@pytest.mark.parametrize(
    ("kind", "name", "fields", "field"),
    [(SavedQuery, "q2", {"query": "q2"}, "query"), (HttpTemplate, "t2", {"template": "t2"}, "template")],
    ids=["query", "template"],
)
def test_a_definition_saved_naming_an_object_deleted_or_renamed_meanwhile_is_refused_as_a_missing_reference(
    stores: CatalogStores,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    kind: type[CatalogObject],
    name: str,
    fields: dict[str, Any],
    field: str,
):
    """Bob's new definition names an object that exists when checked; Alice deletes (or renames) it before Bob's
    write: his definition is refused as naming an object that does not exist (422 invalid-reference, the check's
    own text) and is not stored. Before: it was stored, naming an object that no longer existed."""
    store = stores.definitions
    other = alices_delete(store, kind, name) if how == "deleted" else alices_rename(store, kind, name)
    after_first_call(monkeypatch, "checked", other)

    with pytest.raises(Invalid) as refused:
        bobs_definition(**fields)(store)

    assert refused.value.slug == "invalid-reference"
    assert refused.value.problems == [
        f"ExportDefinition 'd2': field '{field}': {kind.__name__} '{name}' does not exist"
    ]
    assert "d2" not in names(store, ExportDefinition)
    assert name not in names(store, kind)


def test_a_template_edited_to_name_a_profile_deleted_meanwhile_is_refused_and_left_as_it_was(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    store = stores.definitions
    after_first_call(monkeypatch, "checked", alices_delete(store, ConnectionProfile, "p2"))

    with pytest.raises(Invalid) as refused:
        replace_object(BOB, HttpTemplate, "t2", {"query": "q", "profile": "p2"}, store=store, checks=CHECKS)

    assert refused.value.problems == ["HttpTemplate 't2': field 'profile': ConnectionProfile 'p2' does not exist"]
    assert store.get(HttpTemplate, "t2").profile == "p"


def test_a_manifest_naming_a_query_deleted_meanwhile_is_refused_whole_and_nothing_of_it_is_stored(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """``exportctl apply`` / the admin API's apply: the query named by one object of the set is deleted between
    the set's check and its write: nothing of the set is stored. Objects the set itself writes may be named."""
    store = stores.definitions
    after_first_call(monkeypatch, "checked", alices_delete(store, SavedQuery, "q2"))
    manifest: list[CatalogObject] = [
        SavedQuery(name="q4", sql=SQL),
        HttpTemplate(name="t4", query="q4", profile="p"),
        ExportDefinition(name="d4", query="q4", template="t4"),
        ExportDefinition(name="d2", query="q2", template="t4"),
    ]

    with pytest.raises(Invalid) as refused:
        apply_objects(BOB, manifest, store=store, checks=CHECKS)

    assert refused.value.problems == ["ExportDefinition 'd2': field 'query': SavedQuery 'q2' does not exist"]
    assert not {"q4"} & names(store, SavedQuery)
    assert not {"d2", "d4"} & names(store, ExportDefinition)


def q2_deleted_before_the_first_write_of_a_set(
    monkeypatch: pytest.MonkeyPatch, store: SqlDefinitionsStore
) -> list[int]:
    """Patch the store's write of a set (``apply_all``) so that Alice's delete of q2 is stored just before its first
    call (after the set's change list); one item a call in the list returned."""
    real = SqlDefinitionsStore.apply_all
    calls: list[int] = []

    def deleted_first(self: SqlDefinitionsStore, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            delete_object(ALICE, SavedQuery, "q2", store=store)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SqlDefinitionsStore, "apply_all", deleted_first)
    return calls


def test_a_manifest_listing_unchanged_a_query_it_names_deleted_before_its_write_is_applied_again_and_creates_it(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """Bob's manifest lists q2 exactly as stored (unchanged: not written) and a new definition naming it; Alice
    deletes q2 (nobody names it yet) between Bob's change list and his write. The manifest says what q2 is: the
    set is applied once more from the start, q2 is created again and the definition stored, as if Bob had applied
    it after Alice's delete. Before: refused (422) for naming a query that its own manifest lists."""
    store = stores.definitions
    calls = q2_deleted_before_the_first_write_of_a_set(monkeypatch, store)
    manifest: list[CatalogObject] = [
        SavedQuery(name="q2", sql=SQL),
        ExportDefinition(name="d9", query="q2", template="t"),
    ]

    changes = apply_objects(BOB, manifest, store=store, checks=CHECKS)

    assert [(c.name, c.change) for c in changes] == [("q2", "created"), ("d9", "created")]
    assert len(calls) == 2
    assert store.get(ExportDefinition, "d9").query == "q2"
    assert "q2" in names(store, SavedQuery)
    assert [(e.actor, e.action) for e in stores.audit.entries(name="q2")][:2] == [
        ("bob", "create"),
        ("alice", "delete"),
    ]


def test_a_manifest_naming_a_query_it_does_not_list_deleted_before_its_write_is_refused_without_a_second_try(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    store = stores.definitions
    calls = q2_deleted_before_the_first_write_of_a_set(monkeypatch, store)
    manifest: list[CatalogObject] = [
        SavedQuery(name="q4", sql=SQL),
        ExportDefinition(name="d9", query="q2", template="t"),
    ]

    with pytest.raises(Invalid) as refused:
        apply_objects(BOB, manifest, store=store, checks=CHECKS)

    assert refused.value.problems == ["ExportDefinition 'd9': field 'query': SavedQuery 'q2' does not exist"]
    assert len(calls) == 1
    assert "q4" not in names(store, SavedQuery)


def test_a_manifest_may_name_objects_it_writes_itself_and_an_unchanged_catalog_is_left_alone(
    stores: CatalogStores,
):
    """No regression: the set's own objects count as existing (written in the same transaction), and the rest of
    the catalog, which the set only names or does not touch, is left as it was (same revisions, nothing audited);
    the same set applied again changes nothing at all."""
    store = stores.definitions
    manifest: list[CatalogObject] = [
        ExportDefinition(name="d4", query="q4", template="t4"),
        HttpTemplate(name="t4", query="q4", profile="p"),
        SavedQuery(name="q4", sql=SQL),
    ]
    kinds = (ConnectionProfile, SavedQuery, HttpTemplate, ExportDefinition)
    before = {(kind.__name__, obj.name): revision for kind in kinds for revision, obj in store.list_versioned(kind)}
    audited = len(stores.audit.entries(limit=1000))

    changes = apply_objects(BOB, manifest, store=store, checks=CHECKS)

    assert [c.change for c in changes] == ["created"] * 3
    assert store.get(ExportDefinition, "d4").template == "t4"
    after = {(kind.__name__, obj.name): revision for kind in kinds for revision, obj in store.list_versioned(kind)}
    assert {key: after[key] for key in before} == before
    assert set(after) - set(before) == {("ExportDefinition", "d4"), ("HttpTemplate", "t4"), ("SavedQuery", "q4")}
    entries = stores.audit.entries(limit=1000)  # newest first
    assert len(entries) == audited + 3
    assert sorted((e.actor, e.action, e.name) for e in entries[:3]) == [
        ("bob", "create", "d4"),
        ("bob", "create", "q4"),
        ("bob", "create", "t4"),
    ]

    again = apply_objects(BOB, manifest, store=store, checks=CHECKS)

    assert [c.change for c in again] == ["unchanged"] * 3
    assert {(kind.__name__, obj.name): revision for kind in kinds for revision, obj in store.list_versioned(kind)} == (
        after
    )
    assert len(stores.audit.entries(limit=1000)) == audited + 3


# --- the store's own guarantee ---------------------------------------------------------------------------------


def test_the_store_refuses_to_delete_or_rename_an_object_others_name_whoever_calls_it(stores: CatalogStores):
    """The guarantee is the store's: its delete and rename refuse an object in use with no check before them."""
    store = stores.definitions

    with pytest.raises(ObjectInUse) as deleting:
        store.delete(SavedQuery, "q")
    with pytest.raises(ObjectInUse) as renaming:
        store.rename("p", ConnectionProfile(name="p-renamed", base_url="https://partner.example.com"))

    assert deleting.value.referrers == (("HttpTemplate", "t", None), ("HttpTemplate", "t2", None))
    assert renaming.value.referrers == (("HttpTemplate", "t", None), ("HttpTemplate", "t2", None))
    assert "q" in names(store, SavedQuery)
    assert "p" in names(store, ConnectionProfile)
    assert "p-renamed" not in names(store, ConnectionProfile)
    store.delete(SavedQuery, "q2")  # one nobody names goes
    assert "q2" not in names(store, SavedQuery)


def test_a_store_write_holding_its_references_refuses_one_naming_nothing(stores: CatalogStores):
    store = stores.definitions

    with pytest.raises(ReferenceMissing) as refused:
        store.apply(ExportDefinition(name="d9", query="q9", template="t"), hold_references=True)

    assert refused.value.problems == ["ExportDefinition 'd9': field 'query': SavedQuery 'q9' does not exist"]
    assert "d9" not in names(store, ExportDefinition)


def in_another_thread(write: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """``write`` started in another thread; what it returned or raised (once it has ended) in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(write())
        except BaseException as exc:  # noqa: BLE001 - said by the test
            out.append(exc)

    thread = threading.Thread(target=run, name="other writer")
    thread.start()
    return thread, out


# --- SQLite: the write lock, held from the check on (the store's own writes, with no audit entry to flush) -------


def impatient_store(stores: CatalogStores) -> SqlDefinitionsStore:
    """Another writer of the same SQLite file that does not wait for the write lock (no busy timeout): refused
    at once ("database is locked") while another transaction holds it, where a real writer would wait for it."""
    engine = create_engine(stores.database.engine.url, connect_args={"timeout": 0})
    return SqlDefinitionsStore(CatalogDatabase(engine))


def while_in_the_store_method(
    monkeypatch: pytest.MonkeyPatch, method: str, other_write: Callable[[], Any]
) -> list[Any]:
    """Patch the store's ``method`` so that, once it has answered in this thread, ``other_write`` runs to its end in
    another thread (this write's transaction still open); what it returned or raised is in the list returned."""
    real = getattr(SqlDefinitionsStore, method)
    out: list[Any] = []

    def patched(self: SqlDefinitionsStore, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        if threading.current_thread() is threading.main_thread() and not out:
            thread, done = in_another_thread(other_write)
            thread.join(DEADLINE)
            out.extend(done or ["still running"])

    monkeypatch.setattr(SqlDefinitionsStore, method, patched)
    return out


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_a_delete_holds_the_write_lock_from_its_check_for_referrers_until_it_ends(
    stores: CatalogStores, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """The store's delete of q2 (no audit entry) has found no referrer, not yet committed; another writer's
    definition naming q2 cannot be stored meanwhile (it would wait; this one does not, and is refused at once), so
    no definition names the deleted query. Without the write lock taken before the check (a read takes none on
    SQLite), the definition was stored in between and the delete went on: it named a query that no longer was."""
    store = stores.definitions
    other = impatient_store(stores)
    bobs = while_in_the_store_method(
        monkeypatch,
        "_refuse_in_use",
        lambda: other.apply(ExportDefinition(name="d2", query="q2", template="t"), hold_references=True),
    )

    store.delete(SavedQuery, "q2")

    assert [type(result) for result in bobs] == [OperationalError]
    assert "database is locked" in str(bobs[0])
    assert "q2" not in names(store, SavedQuery)
    assert "d2" not in names(store, ExportDefinition)
    other.database.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_a_referrer_holds_the_write_lock_from_its_reference_check_until_it_ends(
    stores: CatalogStores, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """The store's write of a definition naming q2 (no audit entry) has found q2, not yet committed; another
    writer's delete of q2 cannot be stored meanwhile, so the definition never names a deleted query. Without the
    write lock taken before the reference check, the delete was stored in between (it found no referrer yet) and
    then the definition too."""
    store = stores.definitions
    other = impatient_store(stores)
    alices = while_in_the_store_method(monkeypatch, "_hold_references", lambda: other.delete(SavedQuery, "q2"))

    store.apply(ExportDefinition(name="d2", query="q2", template="t"), hold_references=True)

    assert [type(result) for result in alices] == [OperationalError]
    assert "database is locked" in str(alices[0])
    assert store.get(ExportDefinition, "d2").query == "q2"
    assert "q2" in names(store, SavedQuery)
    other.database.close()


# --- PostgreSQL: two writers really at once, each in its transaction when the other starts ------------------------


def lock_waits(stores: CatalogStores) -> bool:
    """Whether a session of the test's PostgreSQL database waits for a lock now."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    with stores.database.engine.connect() as connection:
        return bool(connection.execute(text(query)).scalar())


def other_writer_waits_after(
    monkeypatch: pytest.MonkeyPatch, stores: CatalogStores, method: str, other_write: Callable[[], Any]
) -> tuple[list[threading.Thread], list[BaseException]]:
    """Patch the store's ``method`` (a lock it takes in its write's transaction) so that, once it has run in this
    thread, ``other_write`` starts in another, and this write goes on only once PostgreSQL says a session waits for
    a lock (no sleep). The other writer's thread (once started) and what it raised."""
    real = getattr(SqlDefinitionsStore, method)
    other: list[threading.Thread] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            other_write()
        except BaseException as exc:  # noqa: BLE001 - said by the test
            failures.append(exc)

    def patched(self: SqlDefinitionsStore, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        if threading.current_thread().name != "other writer" and not other:
            other.append(threading.Thread(target=run, name="other writer"))
            other[0].start()
            wait_until(
                lambda: lock_waits(stores), timeout=DEADLINE, what="the other writer waiting for this one's lock"
            )

    monkeypatch.setattr(SqlDefinitionsStore, method, patched)
    return other, failures


# PostgreSQL only: SQLite has one writer at a time (the hook tests above cover it there).
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_a_delete_started_while_a_referrer_is_being_saved_waits_for_it_then_refuses(
    stores: CatalogStores, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Bob's new definition has locked the query it names (``FOR KEY SHARE``), not yet committed; Alice's delete
    of that query (whose check saw no referrer: Bob's is not committed) waits for Bob's transaction at its ``FOR
    UPDATE`` and, once Bob's definition is committed, finds it and refuses (409 in-use)."""
    store = stores.definitions
    alices_delete = lambda: delete_object(ALICE, SavedQuery, "q2", store=store)  # noqa: E731
    alice, failures = other_writer_waits_after(monkeypatch, stores, "_hold_references", alices_delete)

    bobs_definition(query="q2")(store)
    alice[0].join(DEADLINE)

    assert not alice[0].is_alive()
    assert [type(f) for f in failures] == [Conflict]
    assert str(failures[0]) == "'q2' is used by ExportDefinition 'd2': delete those first"
    assert "q2" in names(store, SavedQuery)


# PostgreSQL only: SQLite has one writer at a time (the hook tests above cover it there).
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_a_referrer_saved_while_its_query_is_being_deleted_waits_for_the_delete_then_refuses(
    stores: CatalogStores, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Alice's delete has locked the query (``FOR UPDATE``) and found no referrer, not yet committed; Bob's new
    definition naming it (checked: the query is there) waits at its ``FOR KEY SHARE`` and, once the delete is
    committed, finds the query gone and is refused (422 invalid-reference), nothing stored."""
    store = stores.definitions
    bob, failures = other_writer_waits_after(
        monkeypatch, stores, "_refuse_in_use", lambda: bobs_definition(query="q2")(store)
    )

    delete_object(ALICE, SavedQuery, "q2", store=store)
    bob[0].join(DEADLINE)

    assert not bob[0].is_alive()
    assert [type(f) for f in failures] == [Invalid]
    assert str(failures[0]) == "ExportDefinition 'd2': field 'query': SavedQuery 'q2' does not exist"
    assert "d2" not in names(store, ExportDefinition)
    assert "q2" not in names(store, SavedQuery)


def other_writer_runs_after(
    monkeypatch: pytest.MonkeyPatch, stores: CatalogStores, method: str, other_write: Callable[[], Any]
) -> tuple[list[tuple[threading.Thread, list[Any]]], list[bool]]:
    """Patch the store's ``method`` (called with the write's session first) so that, once it has run in this thread
    (its statements sent), ``other_write`` starts in another, and this write goes on once the other has ended or
    PostgreSQL says a session waits for a lock (no sleep). The other writer (its thread, what it returned or raised)
    once started, and whether it had ended when this write went on."""
    real = getattr(SqlDefinitionsStore, method)
    other: list[tuple[threading.Thread, list[Any]]] = []
    ended_first: list[bool] = []

    def patched(self: SqlDefinitionsStore, session: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(self, session, *args, **kwargs)
        if threading.current_thread() is threading.main_thread() and not other:
            session.flush()  # what it wrote is sent: those rows are locked until this write ends
            other.append(in_another_thread(other_write))
            out = other[0][1]
            wait_until(
                lambda: bool(out) or lock_waits(stores), timeout=DEADLINE, what="the other write ended or waiting"
            )
            ended_first.append(bool(out))
        return result

    monkeypatch.setattr(SqlDefinitionsStore, method, patched)
    return other, ended_first


# PostgreSQL only: SQLite has one writer at a time.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_an_edit_of_a_named_query_keeping_its_name_does_not_wait_for_a_referrers_open_save(
    stores: CatalogStores, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Bob's new definition naming q2 holds its reference locks, not yet committed; Alice's edit of q2's label (its
    name kept) is stored meanwhile, without waiting for Bob; then Bob's definition is stored too. Before: her edit
    waited for Bob's transaction (the reference lock was ``FOR NO KEY UPDATE``, not ``FOR KEY SHARE``)."""
    store = stores.definitions
    edit, ended_while_bobs_save_was_open = other_writer_runs_after(
        monkeypatch,
        stores,
        "_hold_references",
        lambda: replace_object(ALICE, SavedQuery, "q2", {"sql": SQL, "label": "edited"}, store=store, checks=CHECKS),
    )

    bobs_definition(query="q2")(store)
    edit[0][0].join(DEADLINE)

    assert (ended_while_bobs_save_was_open, [type(result) for result in edit[0][1]]) == ([True], [tuple])
    assert store.get(SavedQuery, "q2").label == "edited"
    assert store.get(ExportDefinition, "d2").query == "q2"


# PostgreSQL only: SQLite has one writer at a time.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_a_template_edited_while_a_new_definition_naming_it_is_saved_both_are_stored_without_waiting(
    stores: CatalogStores, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Alice's edit of template t (its label; name and references kept) has written t, not yet committed; Bob's new
    definition naming q and t is saved meanwhile, without waiting for her; then her edit is stored too. Before:
    Bob waited for Alice's row of t, and Alice's reference locks then waited for Bob's of q: PostgreSQL's deadlock
    detector failed one of them (the admin API's 500, exportctl's exit 5)."""
    store = stores.definitions
    save, ended_while_alices_edit_was_open = other_writer_runs_after(
        monkeypatch, stores, "_write", lambda: bobs_definition()(store)
    )

    edited = replace_object(
        ALICE, HttpTemplate, "t", {"query": "q", "profile": "p", "label": "edited"}, store=store, checks=CHECKS
    )
    save[0][0].join(DEADLINE)

    assert edited[1].label == "edited"
    assert (ended_while_alices_edit_was_open, [type(result) for result in save[0][1]]) == ([True], [tuple])
    assert store.get(HttpTemplate, "t").label == "edited"
    assert store.get(ExportDefinition, "d2").template == "t"


# PostgreSQL only: SQLite has one writer at a time.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_a_manifest_creating_a_query_under_the_new_name_of_one_being_renamed_waits_then_is_refused(
    stores: CatalogStores, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Alice's rename of q2 to q9 has locked q2 and found no referrer, not yet committed; Bob's manifest creating a
    query q9 and a definition naming q2 waits for her (before writing any row), then finds q2 gone and is refused
    (422 invalid-reference), nothing of it stored; her rename is stored. Before: Bob inserted q9 first, then waited
    for q2 while Alice's rename waited for the name q9: PostgreSQL's deadlock detector failed one of them (500)."""
    store = stores.definitions
    manifest: list[CatalogObject] = [
        SavedQuery(name="q9", sql=SQL),
        ExportDefinition(name="d9", query="q2", template="t"),
    ]
    bob, failures = other_writer_waits_after(
        monkeypatch, stores, "_refuse_in_use", lambda: apply_objects(BOB, manifest, store=store, checks=CHECKS)
    )

    replace_object(ALICE, SavedQuery, "q2", {"name": "q9", "sql": SQL, "label": "Alice's"}, store=store, checks=CHECKS)
    bob[0].join(DEADLINE)

    assert not bob[0].is_alive()
    assert [type(f) for f in failures] == [Invalid]
    assert str(failures[0]) == "ExportDefinition 'd9': field 'query': SavedQuery 'q2' does not exist"
    assert store.get(SavedQuery, "q9").label == "Alice's"
    assert "q2" not in names(store, SavedQuery)
    assert "d9" not in names(store, ExportDefinition)


# --- a set redone after a lost race answers and audits what it wrote ------------------------------------------
# Bob's manifest is built into a change list (created, updated, unchanged) and audit entries, then written. When
# another writer renames, creates or changes one of its objects in between (or PostgreSQL ends Bob's transaction for
# another's and it is done again), the store judged the set afresh but Bob was answered, and audited, from the old
# list: told "q9 created" while he overwrote Alice's renamed q9, no ``before`` audited. Now the store writes the set
# only if each object is still at the revision the list was built on; if not, the whole set is read, judged and
# written again, or refused with a 409 after as many tries as any write gets.

#: Bob's manifest: q9 (new when he reads) and q2 (its label changed).
MANIFEST: list[CatalogObject] = [
    SavedQuery(name="q9", sql=SQL, label="bob's q9"),
    SavedQuery(name="q2", sql=SQL, label="bob's q2"),
]


def alice_renames_q2_to_q9(store: SqlDefinitionsStore) -> Any:
    return replace_object(
        ALICE, SavedQuery, "q2", {"name": "q9", "sql": SQL, "label": "alice's"}, store=store, checks=CHECKS
    )


def before_each_set_write(monkeypatch: pytest.MonkeyPatch, other_write: Any) -> list[int]:
    """Patch the store's write of a set (``apply_all``) so that ``other_write(call number)`` is stored just before
    its calls (after the set's change list); one item a call in the list returned."""
    real = SqlDefinitionsStore.apply_all
    calls: list[int] = []

    def patched(self: SqlDefinitionsStore, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        other_write(len(calls))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SqlDefinitionsStore, "apply_all", patched)
    return calls


def assert_answer_and_audit_say_what_is_stored(stores: CatalogStores, changes: list[Any], alice_q9_id: Any) -> None:
    """Bob updated Alice's renamed q9 (her object, its ``before`` audited) and created a new q2."""
    store = stores.definitions
    q9_id, q9_version, q9 = store.get_versioned(SavedQuery, "q9")
    q2_id, q2_version, q2 = store.get_versioned(SavedQuery, "q2")
    assert (q9.label, q2.label) == ("bob's q9", "bob's q2")
    assert (q9_id, q9_version) == (alice_q9_id, 3)  # Alice's object (created, renamed), then Bob's update
    assert q2_version == 1
    assert q2_id != alice_q9_id
    assert [(c.name, c.change) for c in changes] == [("q9", "updated"), ("q2", "created")]
    q9_audit, q2_audit = stores.audit.entries(name="q9"), stores.audit.entries(name="q2")
    assert [(e.actor, e.action) for e in q9_audit][:2] == [("bob", "update"), ("alice", "rename")]
    assert (q9_audit[0].before or {}).get("label") == "alice's"
    assert (q2_audit[0].actor, q2_audit[0].action, q2_audit[0].before) == ("bob", "create", None)


def test_a_manifest_whose_new_object_another_writer_creates_by_a_rename_before_its_write_updates_it_and_says_so(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """Alice renames q2 to q9 between Bob's change list ([q9 created, q2 updated]) and his write. Bob's set is
    judged again: q9 (Alice's object) is updated, its ``before`` audited, q2 created. Before: Bob was told
    [q9 created, q2 updated] and the audit said he created q9 (nothing of Alice's object overwritten)."""
    store = stores.definitions
    alice_q9_id = store.get_versioned(SavedQuery, "q2")[0]
    calls = before_each_set_write(monkeypatch, lambda call: call == 1 and alice_renames_q2_to_q9(store))

    changes = apply_objects(BOB, MANIFEST, store=store, checks=CHECKS)

    assert len(calls) == 2
    assert_answer_and_audit_say_what_is_stored(stores, changes, alice_q9_id)


def test_a_manifest_whose_object_others_change_before_each_write_is_refused_as_an_edit_conflict_writing_nothing(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    store = stores.definitions

    def alice_edits_q2(call: int) -> None:
        replace_object(ALICE, SavedQuery, "q2", {"sql": SQL, "label": f"alice's {call}"}, store=store, checks=CHECKS)

    calls = before_each_set_write(monkeypatch, alice_edits_q2)

    with pytest.raises(Conflict) as refused:
        apply_objects(BOB, MANIFEST, store=store, checks=CHECKS)

    assert refused.value.slug == "edit-conflict"
    assert f"each of {WRITE_ATTEMPTS} tries" in str(refused.value)
    assert len(calls) == WRITE_ATTEMPTS
    assert store.get(SavedQuery, "q2").label == f"alice's {WRITE_ATTEMPTS}"
    assert "q9" not in {obj.name for obj in store.list_objects(SavedQuery)}
    assert "bob" not in {e.actor for e in stores.audit.entries(name="q2")}


# PostgreSQL only: SQLite has one writer at a time (the hook tests above cover it there).
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_a_manifest_redone_after_a_real_deadlock_answers_and_audits_what_it_wrote(
    stores: CatalogStores, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Bob's set inserts q9, then (in ``_refuse_in_use``'s wake) Alice's rename of q2 to q9 locks q2 and waits for
    the name q9; Bob's update of q2 waits for Alice: PostgreSQL ends Bob's transaction (a real 40P01: he waited
    first, his deadlock check runs first) and his set is redone. Before: told [q9 created, q2 updated]."""
    store = stores.definitions
    alice_q9_id = store.get_versioned(SavedQuery, "q2")[0]
    bob_changes: list[Any] = []
    bob, failures = other_writer_waits_after(
        monkeypatch,
        stores,
        "_refuse_in_use",
        lambda: bob_changes.append(apply_objects(BOB, MANIFEST, store=store, checks=CHECKS)),
    )

    alice_renames_q2_to_q9(store)
    bob[0].join(DEADLINE)

    assert not bob[0].is_alive()
    assert not failures, failures
    assert_answer_and_audit_say_what_is_stored(stores, bob_changes[0], alice_q9_id)


# --- a set's own mistakes and its order: refused before anything is read or written ---------------------------


def test_a_set_listing_an_object_twice_is_refused_naming_it_and_nothing_is_written(stores: CatalogStores):
    """Two files of a manifest directory defining one query: which one wins is not for the catalog to guess (before
    the check, every try of the set found the other copy written and it was refused as changed by others 5 times;
    before that, the last copy won and two creates were audited)."""
    twice = [SavedQuery(name="dup", sql=SQL, label="first"), SavedQuery(name="dup", sql=SQL, label="second")]

    with pytest.raises(Invalid) as refused:
        apply_objects(BOB, [SavedQuery(name="q9", sql=SQL), *twice], store=stores.definitions, checks=CHECKS)

    assert str(refused.value) == "the set lists SavedQuery 'dup' more than once: list each object once"
    assert {"dup", "q9"}.isdisjoint(names(stores.definitions, SavedQuery))
    assert not stores.audit.entries(name="dup")


def test_a_set_a_token_may_not_write_is_refused_before_anything_stored_is_read(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """A scoped token applying another unit's definition is told only that it may not: nothing of what is stored
    under that name (an object that no longer validates, secrets that cannot be decrypted) is read first."""

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the catalog was read before the set was authorised")

    monkeypatch.setattr(SqlDefinitionsStore, "get_versioned", unreadable)
    other_units = ExportDefinition(name="mkt", query="q", template="t", business_unit="marketing")

    with pytest.raises(Forbidden):
        apply_objects(SALES, [other_units], store=stores.definitions, checks=CHECKS)


def test_a_set_done_again_after_a_lost_race_warns_once(stores: CatalogStores, monkeypatch: pytest.MonkeyPatch):
    """A profile whose host does not resolve from here is a warning, not a refusal; a set read and checked twice
    (another writer changed q2 after its first change list) says it once, as exportctl prints every warning."""

    def nowhere(host: str) -> list[str]:
        raise OSError("does not resolve")

    checks = dataclasses.replace(CHECKS, resolve_host=nowhere, warnings=[])
    store = stores.definitions
    edited = before_each_set_write(
        monkeypatch,
        lambda call: (
            call == 1
            and replace_object(ALICE, SavedQuery, "q2", {"sql": SQL, "label": "alice's"}, store=store, checks=CHECKS)
        ),
    )
    profile = ConnectionProfile(name="p9", base_url="https://partner.invalid")

    apply_objects(BOB, [profile, SavedQuery(name="q2", sql=SQL, label="bob's")], store=store, checks=checks)

    assert len(edited) == 2
    assert checks.warnings == [
        "ConnectionProfile 'p9': field 'base_url': host partner.invalid does not resolve from here"
    ]
