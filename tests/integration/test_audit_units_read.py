"""The business units of a shared object's audit entry (a saved query's save, here) are read of the definitions using
it as their stored business unit only, never their JSON whole (10,000 definitions read whole took 0.4 s of a query's
save): the same units as a whole read gives, whatever a definition stores as its unit (a string with quotes or
non-ASCII characters, none, null, a number, a list, an object), and the same entries shown to scoped readers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from shared.application.actors import Actor, Role
from shared.application.audit import NO_UNIT, read_audit
from shared.application.objects import replace_object
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from tests.integration.test_concurrent_catalog_writes import ALICE, CHECKS

pytestmark = pytest.mark.integration

SQL = "SELECT id, email FROM members"
#: What each definition on ``q`` stores as its business unit (``...``: no ``business_unit`` stored at all), and
#: which definition: by ``q`` directly (``template`` on another query's template is impossible: each template of
#: a definition is on its query), through template ``t`` or ``t2``.
STORED_UNITS: dict[str, Any] = {
    "sales-daily": "sales",
    "sales-weekly": "sales",
    "hr-daily": "hr",
    "quoted": 'o\'brien "ops"',
    "accented": "zürich-€",
    "no-unit": ...,
    "null-unit": None,
    "number-unit": 7,
    "list-unit": ["emea"],
    "object-unit": {"unit": "emea"},
}
#: The units a save of ``q`` touches: the stored strings, and "" (:data:`NO_UNIT`) for every definition whose
#: stored unit is not a string, as a read of their JSON whole gives them.
TOUCHED = ("", "hr", 'o\'brien "ops"', "sales", "zürich-€")


def _stored(name: str, unit: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "query": "q", "template": "t2" if name.startswith("hr") else "t"}
    if unit is not ...:
        spec["business_unit"] = unit
    return spec


@pytest.fixture
def stores(catalog: CatalogStores) -> CatalogStores:
    """Query ``q`` used through templates ``t`` and ``t2`` by the definitions of :data:`STORED_UNITS`, each stored
    as that table says (an older release's JSON: written as is), and query ``other`` by a ``finance`` definition."""
    catalog.definitions.apply_all(
        [
            ConnectionProfile(name="p", base_url="https://partner.example.com"),
            SavedQuery(name="q", sql=SQL),
            SavedQuery(name="other", sql=SQL),
            HttpTemplate(name="t", query="q", profile="p", path="/m"),
            HttpTemplate(name="t2", query="q", profile="p", path="/m"),
            HttpTemplate(name="other-t", query="other", profile="p", path="/m"),
            *(
                ExportDefinition.model_validate(_stored(name, "sales"))
                for name in STORED_UNITS  # written with a valid unit, then as each is stored below
            ),
            ExportDefinition.model_validate(
                {"name": "fin-daily", "query": "other", "template": "other-t", "business_unit": "finance"}
            ),
        ]
    )
    update = sa.text("UPDATE catalog_objects SET spec = :spec WHERE kind = 'ExportDefinition' AND name = :name")
    with catalog.definitions.database.engine.begin() as connection:
        for name, unit in STORED_UNITS.items():
            connection.execute(
                update.bindparams(sa.bindparam("spec", type_=sa.JSON())), {"spec": _stored(name, unit), "name": name}
            )
    return catalog


def _whole_read_units(stores: CatalogStores) -> tuple[str, ...]:
    """The units of the definitions on ``q`` as the whole JSON of each gives them (what the audit entry's units were
    worked out from before): its string ``business_unit``, else :data:`NO_UNIT`."""
    with stores.definitions.database.engine.connect() as connection:
        specs = connection.execute(
            sa.select(sa.column("spec", sa.JSON()))
            .select_from(sa.table("catalog_objects"))
            .where(sa.column("kind") == "ExportDefinition")
        ).scalars()
        units = {
            unit if isinstance(unit := spec.get("business_unit"), str) else NO_UNIT
            for spec in specs
            if spec.get("query") == "q"
        }
    return tuple(sorted(units))


def _save_query(stores: CatalogStores, label: str) -> None:
    store = stores.definitions
    body = store.get(SavedQuery, "q").model_dump(mode="json") | {"label": label}
    replace_object(ALICE, SavedQuery, "q", body, store=store, checks=CHECKS)


def test_a_query_saves_audit_entry_touches_the_units_a_whole_read_of_its_definitions_gives(
    stores: CatalogStores,
) -> None:
    assert _whole_read_units(stores) == TOUCHED  # the fixture as meant
    _save_query(stores, "changed")
    entries = read_audit(ALICE, stores.audit, stores.definitions, name="q", kind="SavedQuery", limit=1)
    assert tuple(entries[0].business_units) == TOUCHED
    # What a scoped token must cover to change it: every one of them (a definition without a string unit is no
    # scoped token's: none may).
    dependents = stores.definitions.dependents("SavedQuery", "q")
    assert dependents == tuple(
        sorted((name, unit if isinstance(unit, str) else None) for name, unit in STORED_UNITS.items())
    )
    assert stores.definitions.dependent_units("SavedQuery", "q") == (None, *TOUCHED[1:])
    assert stores.definitions.dependent_units("SavedQuery", "other") == ("finance",)
    assert stores.definitions.dependent_units("ExportDefinition", "number-unit") == (None,)
    assert stores.definitions.dependent_units("ExportDefinition", "quoted") == ('o\'brien "ops"',)
    assert stores.definitions.dependent_units("SavedQuery", "gone") == ()


@pytest.mark.parametrize(
    ("scope", "sees"),
    [
        (frozenset(), True),  # unscoped: every entry
        (frozenset({"sales"}), False),
        (frozenset(TOUCHED) - {NO_UNIT}, False),  # every string unit, but the definitions of none are no scope's
        (frozenset(TOUCHED), True),  # a scope naming "" (a token file may): covers them all
    ],
)
def test_scoped_readers_see_a_query_saves_entry_only_when_their_scope_covers_every_unit_it_touched(
    stores: CatalogStores, scope: frozenset[str], sees: bool
) -> None:
    _save_query(stores, "changed")
    reader = Actor(name="reader", role=Role.VIEWER, business_units=scope)
    seen = {(entry.kind, entry.name) for entry in read_audit(reader, stores.audit, stores.definitions)}
    assert (("SavedQuery", "q") in seen) is sees


def statements_of(stores: CatalogStores, work: Callable[[], Any]) -> list[tuple[str, list[Any]]]:
    """The SQL statements ``work`` sends to the catalog, each with its parameters' values."""
    seen: list[tuple[str, list[Any]]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        values = list(parameters.values() if isinstance(parameters, dict) else parameters or ())
        seen.append((" ".join(statement.split()), values))

    engine = stores.definitions.database.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        work()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return seen


def test_a_query_saves_audit_entry_reads_no_definitions_json_whole(stores: CatalogStores) -> None:
    """Before: every definition on the query was read whole (``SELECT catalog_objects.name, catalog_objects.spec``
    of the definitions naming it) for its audit entry's units; the save's own check reads named fields only."""
    statements = statements_of(stores, lambda: _save_query(stores, "changed"))
    whole = [
        statement
        for statement, values in statements
        if statement.startswith("SELECT catalog_objects.name, catalog_objects.spec ") and "ExportDefinition" in values
    ]
    assert whole == []
    assert tuple(read_audit(ALICE, stores.audit, stores.definitions, name="q", limit=1)[0].business_units) == TOUCHED
