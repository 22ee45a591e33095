"""The business units a save or delete of a query, template or profile works out (its audit entry's units, what a
scoped token must cover to change it, what the audit log shows a scoped reader) are found by the definitions that
name it, directly or through a template (``catalog_references``, migration 0025), read as stored: only those. A
definition another release stored that today's rules refuse no longer makes those writes fail with
``stored-object-invalid`` (before, every definition was read and validated), and its unit counts as any other's."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from shared.application.actors import Actor, Role
from shared.application.audit import read_audit
from shared.application.errors import Forbidden
from shared.application.objects import create_object, delete_object, replace_object
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from tests.integration.test_concurrent_catalog_writes import ALICE, CHECKS

pytestmark = pytest.mark.integration

SALES = Actor(name="sales-bot", role=Role.ADMIN, business_units=frozenset({"sales"}))
SALES_READER = Actor(name="sales-viewer", role=Role.VIEWER, business_units=frozenset({"sales"}))
SQL = "SELECT id, email FROM members"


def _definition(name: str, unit: str, *, query: str = "q", template: str = "t") -> ExportDefinition:
    return ExportDefinition.model_validate({"name": name, "query": query, "template": template, "business_unit": unit})


@pytest.fixture
def stores(catalog: CatalogStores) -> CatalogStores:
    """Template ``t`` (query ``q``, profile ``p``) used by a ``sales`` definition; ``q`` used directly by an ``hr``
    one (through ``t2``, unused otherwise); template ``legacy-t`` (query ``q3``, profile ``p3``) used only by an
    ``emea`` definition an older release stored, which today's rules refuse (``priority: urgent``); a query named
    ``t`` (as the template) used by a ``finance`` definition through template ``fin-t``."""
    catalog.definitions.apply_all(
        [
            ConnectionProfile(name="p", base_url="https://partner.example.com"),
            ConnectionProfile(name="p3", base_url="https://partner.example.com"),
            SavedQuery(name="q", sql=SQL),
            SavedQuery(name="q3", sql=SQL),
            SavedQuery(name="t", sql=SQL),
            HttpTemplate(name="t", query="q", profile="p", path="/m"),
            HttpTemplate(name="t2", query="q", profile="p", path="/m"),
            HttpTemplate(name="legacy-t", query="q3", profile="p3", path="/m"),
            HttpTemplate(name="fin-t", query="t", profile="p", path="/m"),
            _definition("sales-daily", "sales"),
            _definition("hr-daily", "hr", template="t2"),
            _definition("fin-daily", "finance", query="t", template="fin-t"),
            _definition("legacy", "emea", query="q3", template="legacy-t"),
        ]
    )
    with catalog.definitions.database.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE catalog_objects SET spec = :spec WHERE name = 'legacy'").bindparams(
                sa.bindparam("spec", type_=sa.JSON())
            ),
            {
                "spec": {
                    "name": "legacy",
                    "query": "q3",
                    "template": "legacy-t",
                    "business_unit": "emea",
                    "priority": "urgent",
                }
            },
        )
    return catalog


def _body(obj: Any, **changes: Any) -> dict[str, Any]:
    return obj.model_dump(mode="json") | changes


def _last_units(stores: CatalogStores, kind: type, name: str) -> tuple[str, ...]:
    entries = read_audit(ALICE, stores.audit, stores.definitions, name=name, kind=kind.__name__, limit=1)
    return tuple(entries[0].business_units)


def test_saves_and_deletes_of_shared_objects_are_not_stopped_by_a_definition_todays_rules_refuse(
    stores: CatalogStores,
) -> None:
    """Before: each of these failed with StoredObjectInvalid ("ExportDefinition 'legacy' as stored breaks this
    release's rules"), as the audit entry's units were worked out from every definition."""
    store = stores.definitions
    replace_object(
        ALICE, HttpTemplate, "t2", _body(store.get(HttpTemplate, "t2"), path="/n"), store=store, checks=CHECKS
    )
    replace_object(
        ALICE, SavedQuery, "q", _body(store.get(SavedQuery, "q"), label="changed"), store=store, checks=CHECKS
    )
    create_object(ALICE, HttpTemplate, {"name": "new-t", "query": "q", "profile": "p"}, store=store, checks=CHECKS)
    delete_object(ALICE, HttpTemplate, "new-t", store=store)
    assert store.find(HttpTemplate, "new-t") is None
    assert store.get(HttpTemplate, "t2").path == "/n"


def test_an_audit_entry_touches_the_units_of_the_definitions_using_the_object_directly_or_through_a_template(
    stores: CatalogStores,
) -> None:
    store = stores.definitions
    replace_object(ALICE, HttpTemplate, "t", _body(store.get(HttpTemplate, "t"), path="/n"), store=store, checks=CHECKS)
    assert _last_units(stores, HttpTemplate, "t") == ("sales",)  # not finance's, whose query is named 't'
    replace_object(
        ALICE, SavedQuery, "q", _body(store.get(SavedQuery, "q"), label="changed"), store=store, checks=CHECKS
    )
    assert _last_units(stores, SavedQuery, "q") == ("hr", "sales")  # through t and t2
    replace_object(
        ALICE, SavedQuery, "t", _body(store.get(SavedQuery, "t"), label="changed"), store=store, checks=CHECKS
    )
    assert _last_units(stores, SavedQuery, "t") == ("finance",)  # directly and through fin-t
    profile = _body(store.get(ConnectionProfile, "p"), base_url="https://partner2.example.com")
    replace_object(ALICE, ConnectionProfile, "p", profile, store=store, checks=CHECKS)
    assert _last_units(stores, ConnectionProfile, "p") == ("finance", "hr", "sales")
    # The definition stored by an older release counts as any other (read as stored: its unit).
    replace_object(
        ALICE,
        HttpTemplate,
        "legacy-t",
        _body(store.get(HttpTemplate, "legacy-t"), path="/n"),
        store=store,
        checks=CHECKS,
    )
    assert _last_units(stores, HttpTemplate, "legacy-t") == ("emea",)
    replace_object(
        ALICE, SavedQuery, "q3", _body(store.get(SavedQuery, "q3"), label="changed"), store=store, checks=CHECKS
    )
    assert _last_units(stores, SavedQuery, "q3") == ("emea",)


def test_a_scoped_token_may_change_a_shared_object_only_when_every_definition_using_it_is_in_its_scope(
    stores: CatalogStores,
) -> None:
    store = stores.definitions
    # Only sales uses template t (finance's definition uses a query named 't', another object): the token may.
    replace_object(SALES, HttpTemplate, "t", _body(store.get(HttpTemplate, "t"), path="/n"), store=store, checks=CHECKS)
    assert store.get(HttpTemplate, "t").path == "/n"
    # q is hr's too (through t2), p finance's and hr's: refused, naming no definition.
    for kind, name, change, outside in (
        (SavedQuery, "q", {"label": "changed"}, 1),
        (HttpTemplate, "t2", {"path": "/n"}, 1),
        (ConnectionProfile, "p", {"base_url": "https://partner2.example.com"}, 2),
    ):
        with pytest.raises(Forbidden) as refused:
            replace_object(SALES, kind, name, _body(store.get(kind, name), **change), store=store, checks=CHECKS)
        assert refused.value.slug == "out-of-scope"
        assert f"used by {outside} definition(s) outside this token's scope" in str(refused.value)
        assert "hr-daily" not in str(refused.value)
        assert "fin-daily" not in str(refused.value)
    # The emea definition an older release stored is another unit's as any other: refused, not a 409.
    for kind, name in ((HttpTemplate, "legacy-t"), (SavedQuery, "q3"), (ConnectionProfile, "p3")):
        with pytest.raises(Forbidden, match="used by 1 definition\\(s\\) outside this token's scope"):
            delete_object(SALES, kind, name, store=store)
        assert store.find(kind, name) is not None


def test_a_scoped_reader_sees_the_entries_of_objects_its_units_use_whatever_other_definitions_are_stored(
    stores: CatalogStores,
) -> None:
    """Before: the audit log's read failed for a scoped reader (every definition validated for an entry's units now)."""
    store = stores.definitions
    replace_object(ALICE, HttpTemplate, "t", _body(store.get(HttpTemplate, "t"), path="/n"), store=store, checks=CHECKS)
    replace_object(
        ALICE, HttpTemplate, "t2", _body(store.get(HttpTemplate, "t2"), path="/n"), store=store, checks=CHECKS
    )
    seen = {(entry.kind, entry.name) for entry in read_audit(SALES_READER, stores.audit, store)}
    assert seen == {("HttpTemplate", "t")}


def test_a_template_a_definition_sends_one_change_kind_with_is_in_that_definitions_scope(
    stores: CatalogStores,
) -> None:
    """A change-mode definition of unit ``hr`` sends its removals with template ``t-delete``: a token scoped to
    ``sales`` may not change or delete it (before, only a definition's ``template`` counted, so it could)."""
    store = stores.definitions
    store.apply_all(
        [
            HttpTemplate(name="t-delete", query="q", profile="p", path="/m", method="DELETE"),
            ExportDefinition.model_validate(
                {
                    "name": "hr-sync",
                    "query": "q",
                    "template": "t",
                    "business_unit": "hr",
                    "sync": {"mode": "changes", "removed": "t-delete"},
                }
            ),
        ]
    )
    template = store.get(HttpTemplate, "t-delete")
    with pytest.raises(Forbidden, match="used by 1 definition\\(s\\) outside this token's scope"):
        replace_object(SALES, HttpTemplate, "t-delete", _body(template, path="/n"), store=store, checks=CHECKS)
    with pytest.raises(Forbidden, match="used by 1 definition\\(s\\) outside this token's scope"):
        delete_object(SALES, HttpTemplate, "t-delete", store=store)
    replace_object(ALICE, HttpTemplate, "t-delete", _body(template, path="/n"), store=store, checks=CHECKS)
    assert _last_units(stores, HttpTemplate, "t-delete") == ("hr",)
