"""EXPORT_AUDIT_RETENTION_DAYS whoever reads the audit log: entries older than it are deleted when the log is read,
through the application's ``read_audit`` (SQLite and PostgreSQL) and by ``exportctl audit`` on the catalog, not
only by the admin API's route."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.application.actors import Actor, Role
from shared.application.audit import read_audit
from shared.catalog import CatalogStores
from shared.catalog.audit_store import write_entries
from shared.catalog.tables import AuditRow
from shared.cli.__main__ import main as exportctl
from shared.domain.audit import AuditEntry

pytestmark = pytest.mark.integration

READER = Actor(name="reader", role=Role.VIEWER)


def _entry(name: str, days_ago: int) -> AuditEntry:
    return AuditEntry(
        at=datetime.now(UTC) - timedelta(days=days_ago),
        actor="alice",
        action="create",
        kind="SavedQuery",
        name=name,
        business_units=(),
        before=None,
        after={"name": name, "sql": "SELECT id FROM members"},
    )


def _record(catalog: CatalogStores, *entries: AuditEntry) -> None:
    with catalog.database.transaction("AuditEntry") as session:
        write_entries(session, entries)


def _names_stored(catalog: CatalogStores) -> list[str]:
    """Every entry the table holds, unscoped and unpruned (the SQL an auditor would run)."""
    with catalog.database.transaction("AuditEntry") as session:
        return sorted(session.scalars(select(AuditRow.name)))


def test_reading_the_log_deletes_the_entries_older_than_the_retention(catalog: CatalogStores):
    _record(catalog, _entry("ancient", 400), _entry("recent", 3))  # the stores' retention: 365 days
    entries = read_audit(READER, catalog.audit, catalog.definitions)
    assert [e.name for e in entries] == ["recent"]
    assert _names_stored(catalog) == ["recent"], "the old entry is gone from the catalog, not only hidden"


def test_exportctl_audit_on_the_catalog_applies_the_retention_setting(
    tmp_path: Path,
    migrated_catalog: Callable[[str], CatalogStores],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = migrated_catalog(url)
    try:
        _record(catalog, _entry("last-quarter", 100), _entry("last-week", 7))
        monkeypatch.delenv("EXPORT_API_URL", raising=False)
        monkeypatch.setenv("EXPORT_CATALOG_URL", url)
        monkeypatch.setenv("EXPORT_AUDIT_RETENTION_DAYS", "30")
        assert exportctl(["audit", "-o", "json"]) == 0
        shown = [entry["name"] for entry in json.loads(capsys.readouterr().out)]
        assert shown == ["last-week"]
        assert _names_stored(catalog) == ["last-week"]
    finally:
        catalog.close()
