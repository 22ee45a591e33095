"""A definition for tests of per-member state (retries, delivery log), which is keyed by the definition's id."""

from __future__ import annotations

from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery


def member_state_definition(catalog: CatalogStores, name: str, *, business_unit: str | None = None) -> str:
    """Apply a minimal definition ``name`` (and what it needs, once) and return its stable id as text."""
    if catalog.definitions.find(ConnectionProfile, "p-members") is None:
        catalog.definitions.apply(ConnectionProfile(name="p-members", base_url="http://127.0.0.1:9"))
        catalog.definitions.apply(SavedQuery(name="q-members", sql="SELECT code FROM priced", key_column="code"))
        catalog.definitions.apply(HttpTemplate(name="t-members", query="q-members", profile="p-members"))
    catalog.definitions.apply(
        ExportDefinition(name=name, query="q-members", template="t-members", business_unit=business_unit)
    )
    definition_id, _, _ = catalog.definitions.get_versioned(ExportDefinition, name)
    return str(definition_id)
