"""Saving a change-mode definition through the application layer (SQLite and PostgreSQL catalogs): its templates
per kind must exist (and stay while it uses them), it does not combine with incremental mode, errors name the field."""

from __future__ import annotations

from typing import Any

import pytest

from shared.application.errors import Conflict, Invalid
from shared.application.objects import apply_objects, delete_object, save_definition_step
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import HttpTemplate
from shared.domain.sync_mode import Sync
from shared.events import ChangeKind
from tests.integration.test_chained_exports import ADMIN, BASE, checks, export, save

pytestmark = pytest.mark.integration

PATCH = HttpTemplate(name="t-patch", query="q", profile="partner", method="PATCH")
DELETE = HttpTemplate(name="t-delete", query="q", profile="partner", method="DELETE", batch_size=50)


def _refusal(catalog: CatalogStores, **spec: Any) -> str:
    with pytest.raises(Invalid) as refused:
        apply_objects(ADMIN, [*BASE, PATCH, DELETE, export("sync", **spec)], store=catalog.definitions, checks=checks())
    return refused.value.reason


def test_a_change_mode_definition_keeps_its_templates_per_kind(catalog: CatalogStores):
    save(
        catalog,
        *BASE,
        PATCH,
        DELETE,
        export("sync", sync={"mode": "changes", "changed": "t-patch", "removed": "t-delete"}),
    )
    stored = catalog.definitions.get(type(export("x")), "sync")
    assert stored.sync.template_for(ChangeKind.ADDED, stored.template) == "t"
    assert stored.sync.template_for(ChangeKind.CHANGED, stored.template) == "t-patch"
    assert stored.sync.template_for(ChangeKind.REMOVED, stored.template) == "t-delete"
    with pytest.raises(Conflict, match="'t-delete' is used by"):
        delete_object(ADMIN, HttpTemplate, "t-delete", store=catalog.definitions)


def test_change_mode_is_refused_with_incremental_naming_the_field(catalog: CatalogStores):
    reason = _refusal(catalog, sync={"mode": "changes"}, incremental={"watermark_column": "id"})
    assert "ExportDefinition 'sync': field 'sync.mode': change mode cannot be combined with 'incremental'" in reason


def test_a_missing_template_per_kind_is_refused_naming_the_field(catalog: CatalogStores):
    reason = _refusal(catalog, sync={"mode": "changes", "removed": "t-nowhere"})
    assert "ExportDefinition 'sync': field 'sync.removed': HttpTemplate 't-nowhere' does not exist" in reason


def test_templates_per_kind_need_change_mode_and_a_kind_to_send(catalog: CatalogStores):
    assert "field 'sync.changed': templates per kind apply to sync mode 'changes' only" in _refusal(
        catalog, sync={"changed": "t-patch"}
    )
    assert "field 'sync': change mode with every kind set to false would never send a member" in _refusal(
        catalog, sync={"mode": "changes", "added": False, "changed": False}
    )


def test_kinds_default_to_the_destination_except_removed_and_false_sends_none():
    sync = Sync.model_validate({"mode": "changes", "changed": False})
    assert sync.template_for(ChangeKind.ADDED, "dest") == "dest"
    assert sync.template_for(ChangeKind.CHANGED, "dest") is None
    assert sync.template_for(ChangeKind.REMOVED, "dest") is None


def test_saving_the_filter_step_keeps_the_sync_setting(catalog: CatalogStores):
    save(catalog, *BASE, PATCH, export("sync", sync={"mode": "changes", "changed": "t-patch"}))
    _, saved = save_definition_step(
        ADMIN, "sync", {"query": "q", "parameters": {}}, store=catalog.definitions, checks=checks()
    )
    assert saved.sync == Sync.model_validate({"mode": "changes", "changed": "t-patch"})
    with pytest.raises(Invalid, match=r"field 'sync\.mode'"):
        save_definition_step(
            ADMIN,
            "sync",
            {"query": "q", "incremental": {"watermark_column": "id"}},
            store=catalog.definitions,
            checks=checks(),
        )
