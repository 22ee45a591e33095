"""Review probes of the validated objects a bulk read keeps (issue 18, s32-schedcache): what a row's ``version``
does not tell."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from shared.catalog import CatalogStores
from shared.catalog.definitions_store import SqlDefinitionsStore
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery

DEADLINE = 10.0  # seconds any one step may take before the test says it hung


def definition(label: str) -> ExportDefinition:
    return ExportDefinition(name="d", query="q", template="t", label=label)


@pytest.fixture
def stores(catalog: CatalogStores) -> CatalogStores:
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id, email FROM members"))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", batch_size=100))
    catalog.definitions.apply(definition("first"))
    return catalog


def test_two_edits_of_a_definition_at_once_never_leave_the_extractor_with_the_one_overwritten(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """The row is not locked between an edit's read and its write (``FOR UPDATE`` is not SQLite's, and no
    row lock is held on PostgreSQL either): the second edit read version 1, the first stores version 2 meanwhile.
    The second must not store version 2 again (the extractor that read the first edit at version 2 would keep
    it): it is read and stored again, as version 3, which the extractor sees, as a fresh read does."""
    extractor = SqlDefinitionsStore(stores.definitions.database, stores.definitions.cipher)
    real_row = SqlDefinitionsStore._row
    read, written = threading.Event(), threading.Event()

    def row(*args: Any, **kwargs: Any) -> Any:
        found = real_row(*args, **kwargs)
        if threading.current_thread().name == "second edit" and not read.is_set():
            read.set()  # the row read (version 1): the first edit is stored before this one writes
            assert written.wait(DEADLINE)
        return found

    monkeypatch.setattr(SqlDefinitionsStore, "_row", staticmethod(row))
    failures: list[BaseException] = []

    def second_edit() -> None:
        try:
            stores.definitions.apply(definition("second"))
        except BaseException as exc:  # noqa: BLE001 - said by the test below
            failures.append(exc)

    editor = threading.Thread(target=second_edit, name="second edit")
    editor.start()
    assert read.wait(DEADLINE)
    stores.definitions.apply(definition("first edit"))
    assert extractor.many_run_objects(names=["d"])[0]["d"].definition.label == "first edit"
    written.set()
    editor.join(DEADLINE)
    assert not editor.is_alive()
    assert not failures

    stored = SqlDefinitionsStore(stores.definitions.database, stores.definitions.cipher)
    now = stored.many_run_objects(names=["d"])[0]["d"].definition.label
    assert extractor.many_run_objects(names=["d"])[0]["d"].definition.label == now == "second"
    assert stored.get_versioned(ExportDefinition, "d")[1] == 3


def test_a_burst_of_more_objects_than_the_bound_still_reuses_most_of_those_kept(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """Each definition with its own query and template (3 objects a definition): 5,000 such definitions due at one
    instant (``EXPORT_EXTRACTOR_START_BATCH``'s default) are 15,000 objects against a bound of 6,000. Here: 3 such
    definitions (9 objects) read ahead, then at the instant, with room for 6."""
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    names = ["a", "b", "c"]
    for name in names:
        catalog.definitions.apply(SavedQuery(name=f"q{name}", sql="SELECT id, email FROM members"))
        catalog.definitions.apply(HttpTemplate(name=f"t{name}", query=f"q{name}", profile="p"))
        catalog.definitions.apply(ExportDefinition(name=name, query=f"q{name}", template=f"t{name}"))
    extractor = SqlDefinitionsStore(catalog.definitions.database, catalog.definitions.cipher, validated=6)
    assert len(extractor.many_run_objects(names=names)[0]) == 3  # the read ahead
    validated: list[str] = []
    real = extractor._validate

    def counted(kind: Any, row_kind: str, name: str, spec: Any) -> Any:
        validated.append(name)
        return real(kind, row_kind, name, spec)

    monkeypatch.setattr(extractor, "_validate", counted)
    assert len(extractor.many_run_objects(names=names)[0]) == 3  # at the instant
    assert len(validated) <= 9 - 6  # the 6 kept are reused (least recently used first alone reused none)


def test_of_two_compare_and_set_updates_from_the_same_version_only_one_is_stored(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """``replace_if_version`` (the compare-and-set update, e.g. the notifier's pause): two updates read at
    version 1 at once; the second reads before the first writes and writes after it has."""
    real_row = SqlDefinitionsStore._row
    read, written = threading.Event(), threading.Event()

    def row(*args: Any, **kwargs: Any) -> Any:
        found = real_row(*args, **kwargs)
        if threading.current_thread().name == "second update":
            read.set()
            assert written.wait(DEADLINE)
        return found

    monkeypatch.setattr(SqlDefinitionsStore, "_row", staticmethod(row))
    answers: list[bool] = []
    version = stores.definitions.get_versioned(ExportDefinition, "d")[1]
    editor = threading.Thread(
        target=lambda: answers.append(stores.definitions.replace_if_version(definition("second"), version)),
        name="second update",
    )
    editor.start()
    assert read.wait(DEADLINE)
    answers.append(stores.definitions.replace_if_version(definition("first"), version))
    written.set()
    editor.join(DEADLINE)
    assert not editor.is_alive()
    assert answers == [True, False]  # the first stored, the second (read at version 1 too) refused
    version, stored = stores.definitions.get_versioned(ExportDefinition, "d")[1:]
    assert (version, stored.label) == (2, "first")


def test_a_definition_read_as_text_is_the_object_the_orm_reads(catalog: CatalogStores):
    """The bulk read decodes ``CAST(spec AS TEXT)`` with ``json.loads``; the one-by-one read takes the ORM's JSON:
    the same object on SQLite and PostgreSQL (unicode, escapes, numbers, key order)."""
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id, email FROM members"))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p"))
    parameters = {"z": 1e2, "a": 0.1, "big": 2**63 + 1, "text": 'é ☃ 😀 "quoted" \\ \n\t', "nested": {"b": [1, None]}}
    catalog.definitions.apply(
        ExportDefinition(name="d", query="q", template="t", label="Zürich ☃ 😀", parameters=parameters)
    )
    fresh = SqlDefinitionsStore(catalog.definitions.database, catalog.definitions.cipher)
    from_text = fresh.many_run_objects(names=["d"])[0]["d"].definition
    from_orm = catalog.definitions.get(ExportDefinition, "d")
    assert from_text == from_orm
    assert list(from_text.parameters) == list(parameters)
    assert type(from_text.parameters["z"]) is float
