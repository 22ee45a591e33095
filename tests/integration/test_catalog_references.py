"""Who names an object (may it be deleted or renamed?) is found by its references (``catalog_references``, migration
0025), kept by every write: only the objects naming it are read, so a delete is one indexed query in a catalog of
many definitions, and a definition another release stored that breaks today's rules does not stop the deletes of
others. Migration 0025 fills the references of a catalog with data; its downgrade drops them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.application.actors import Actor, Role
from shared.application.errors import Conflict, Invalid
from shared.application.objects import apply_objects, create_object, delete_object
from shared.catalog import CatalogStores
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from tests.integration.test_chained_exports import checks
from tests.integration.test_migrations import (
    NIGHTLY_ID,
    TEMPLATE_ID,
    WEEKLY_ID,
    engine,
    fill_baseline,
    name_baseline_objects,
)

pytestmark = pytest.mark.integration

__all__ = ["engine"]  # the migrations' tests' fixture: an engine on the (empty) database

ADMIN = Actor(name="alice", role=Role.ADMIN)


def _definition(name: str, after: str | None = None) -> ExportDefinition:
    schedule = {"enabled": True, "after": {"definition": after}} if after else {}
    return ExportDefinition.model_validate({"name": name, "query": "q", "template": "t", "schedule": schedule})


@pytest.fixture
def stores(catalog: CatalogStores) -> CatalogStores:
    catalog.definitions.apply_all(
        [
            ConnectionProfile(name="p", base_url="https://partner.example.com"),
            SavedQuery(name="q", sql="SELECT id FROM members"),
            HttpTemplate(name="t", query="q", profile="p", path="/m"),
            _definition("a"),
            _definition("b", after="a"),
            _definition("c"),
            _definition("old"),
        ]
    )
    # A definition stored by an older release, which today's rules refuse: it is not read (as runs do not read it).
    with catalog.definitions.database.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE catalog_objects SET spec = :spec WHERE name = 'old'").bindparams(
                sa.bindparam("spec", type_=sa.JSON())
            ),
            {"spec": {"name": "old", "query": "q", "template": "t", "priority": "urgent"}},
        )
    return catalog


def _refusal(stores: CatalogStores, kind: type, name: str) -> str:
    with pytest.raises(Conflict) as refused:
        delete_object(ADMIN, kind, name, store=stores.definitions)
    return refused.value.reason


def test_a_delete_is_refused_naming_those_that_name_it_as_they_are_now(stores: CatalogStores) -> None:
    store = stores.definitions
    assert "ExportDefinition 'b'" in _refusal(stores, ExportDefinition, "a")
    assert "ExportDefinition 'c'" not in _refusal(stores, ExportDefinition, "a")
    # b follows c now: a may go, c may not.
    store.apply(_definition("b", after="c"))
    delete_object(ADMIN, ExportDefinition, "a", store=store)
    assert "ExportDefinition 'b'" in _refusal(stores, ExportDefinition, "c")
    # c renamed is refused (b follows it); b renamed keeps what it names.
    store.rename("b", _definition("b2", after="c"))
    assert "ExportDefinition 'b2'" in _refusal(stores, ExportDefinition, "c")
    assert "used by ExportDefinition 'b2', ExportDefinition 'c':" in _refusal(stores, HttpTemplate, "t")
    # Deleted, b2 names nothing any more.
    delete_object(ADMIN, ExportDefinition, "b2", store=store)
    delete_object(ADMIN, ExportDefinition, "c", store=store)
    with store.database.engine.connect() as connection:
        named = {tuple(row) for row in connection.execute(sa.text("SELECT kind, name FROM catalog_references"))}
    # The template names its query and profile; the definition stored by an older release (references kept) its own.
    assert named == {("SavedQuery", "q"), ("ConnectionProfile", "p"), ("HttpTemplate", "t")}


def _cycles(stores: CatalogStores, *objects: ExportDefinition) -> list[str]:
    """The chain refusals of saving ``objects`` (none: saved)."""
    try:
        apply_objects(ADMIN, list(objects), store=stores.definitions, checks=checks())
    except Invalid as exc:
        return exc.problems
    return []


def test_a_chained_save_reads_its_chain_not_a_definition_another_release_stored(stores: CatalogStores) -> None:
    """The chain check follows the references (``old``, which today's rules refuse, is not read: it stopped every save
    of a chained definition, reading every definition), and still refuses a loop."""
    assert _cycles(stores, _definition("d", after="b")) == []
    assert _cycles(stores, _definition("a", after="d")) == [
        "ExportDefinition 'a': field 'schedule.after.definition': "
        "chained exports would run in a cycle: a -> d -> b -> a"
    ]
    assert stores.definitions.get(ExportDefinition, "a").schedule.after is None


def test_a_chain_is_judged_with_the_links_of_the_definitions_saved_with_it(stores: CatalogStores) -> None:
    """b follows a as stored. Saved together, the set's own links stand in for the stored ones: a cycle through a
    definition of the set is refused for each member on it, one the set breaks is not."""
    at = "field 'schedule.after.definition': chained exports would run in a cycle"
    assert _cycles(stores, _definition("a", after="c"), _definition("c", after="b")) == [
        f"ExportDefinition 'a': {at}: a -> c -> b -> a",
        f"ExportDefinition 'c': {at}: c -> b -> a -> c",
    ]
    assert _cycles(stores, _definition("b"), _definition("a", after="b")) == []
    assert stores.definitions.get(ExportDefinition, "a").schedule.after is not None


def test_a_loop_stored_by_an_older_release_ends_the_chain_check(stores: CatalogStores) -> None:
    """x and y follow each other as stored (written past the checks): a definition following x is saved, not waited
    on for ever, and one that x's loop reaches is refused naming the loop it would close."""
    stores.definitions.apply_all([_definition("x", after="c"), _definition("y", after="x")])
    stores.definitions.apply(_definition("x", after="y"))
    assert _cycles(stores, _definition("z", after="x")) == []
    assert _cycles(stores, _definition("c", after="x")) == []
    assert _cycles(stores, _definition("y", after="y")) == [
        "ExportDefinition 'y': field 'schedule.after.definition': chained exports would run in a cycle: y -> y"
    ]


def test_a_name_derived_from_a_label_skips_every_name_taken(stores: CatalogStores) -> None:
    """Looked up by name a hundred at a time: past the first hundred taken, the first free one."""
    taken = [_definition("nightly"), *(_definition(f"nightly-{n}") for n in range(2, 102)), _definition("nightly-103")]
    stores.definitions.apply_all(list(taken))
    body = {"label": "Nightly", "query": "q", "template": "t"}
    names = [create_object(ADMIN, ExportDefinition, body, store=stores.definitions, checks=checks())[1].name]
    names.append(create_object(ADMIN, ExportDefinition, body, store=stores.definitions, checks=checks())[1].name)
    assert names == ["nightly-102", "nightly-104"]


def test_0025_fills_the_references_of_a_catalog_with_data_and_downgrades_dropping_them(
    engine: Engine, database_url: str
) -> None:
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0024")
    upgrade(engine, "0025")
    with engine.connect() as connection:
        named = {
            tuple(row) for row in connection.execute(sa.text("SELECT referrer_id, kind, name FROM catalog_references"))
        }
    assert named == {
        (TEMPLATE_ID, "SavedQuery", "members-of-tier"),
        (TEMPLATE_ID, "ConnectionProfile", "partner-api"),
        *{(row, "SavedQuery", "members-of-tier") for row in (NIGHTLY_ID, WEEKLY_ID)},
        *{(row, "HttpTemplate", "partner-bulk-upsert") for row in (NIGHTLY_ID, WEEKLY_ID)},
    }
    name_baseline_objects(engine)
    catalog = CatalogStores.from_url(database_url)
    try:
        store = catalog.definitions
        assert store.referrers("HttpTemplate", "partner-bulk-upsert") == (
            ("ExportDefinition", "nightly-gold", "france"),
            ("ExportDefinition", "weekly-all", None),
        )
    finally:
        catalog.close()

    downgrade(engine, "0024")
    assert current_revision(engine) == "0024"
    with engine.connect() as connection:
        assert "catalog_references" not in sa.inspect(connection).get_table_names()
    upgrade(engine)
    with engine.connect() as connection:
        assert len(connection.execute(sa.text("SELECT * FROM catalog_references")).all()) == len(named)
