"""A SQLite catalog for exportctl's in-process tests of ``run``: one definition, ``nightly``, ready to run."""

from __future__ import annotations

from pathlib import Path

from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery


def nightly_catalog(tmp_path: Path) -> str:
    """The URL of a new catalog in ``tmp_path`` with the definition ``nightly`` (its query, template, profile)."""
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    stores = CatalogStores.from_url(catalog_url, migrate=True)
    stores.definitions.apply(ConnectionProfile(name="partner", base_url="https://partner.example.com"))
    stores.definitions.apply(SavedQuery(name="gold", sql="SELECT id FROM members"))
    stores.definitions.apply(HttpTemplate(name="upsert", query="gold", profile="partner"))
    stores.definitions.apply(ExportDefinition(name="nightly", query="gold", template="upsert"))
    stores.close()
    return catalog_url
