"""The definitions store: connection profiles, HTTP templates, saved queries and export definitions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Literal, TypeVar, cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.catalog.audit_store import write_entries
from shared.catalog.database import CatalogDatabase, aware, now
from shared.catalog.tables import CatalogObjectRow
from shared.domain.audit import AuditEntry
from shared.domain.catalog_objects import CatalogObject, ExportDefinition, kind_of, stored_form
from shared.errors import NotFound

T = TypeVar("T", bound=CatalogObject)
ApplyResult = Literal["created", "updated", "unchanged"]


class SqlDefinitionsStore:
    """Catalog objects by kind and name, each under a stable id and a version that grows with every change."""

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    @staticmethod
    def _row(session: Session, kind: str, name: str, *, for_update: bool = False) -> CatalogObjectRow | None:
        query = select(CatalogObjectRow).where(CatalogObjectRow.kind == kind, CatalogObjectRow.name == name)
        return session.scalar(query.with_for_update() if for_update else query)

    @staticmethod
    def _write(session: Session, obj: CatalogObject) -> ApplyResult:
        spec = stored_form(obj)
        row = SqlDefinitionsStore._row(session, kind_of(obj), obj.name, for_update=True)
        if row is None:
            moment = now()
            session.add(
                CatalogObjectRow(
                    id=str(uuid.uuid4()),
                    kind=kind_of(obj),
                    name=obj.name,
                    spec=spec,
                    created_at=moment,
                    updated_at=moment,
                )
            )
            return "created"
        if row.spec == spec:
            return "unchanged"
        row.spec, row.version, row.updated_at = spec, row.version + 1, now()
        return "updated"

    def apply(self, obj: CatalogObject, *, audit: Sequence[AuditEntry] = ()) -> ApplyResult:
        """Create or update an object by kind and name; say which (or that nothing changed).

        ``audit`` entries are written in the same transaction: a change is recorded, or not made.
        """
        with self.database.transaction() as session:
            write_entries(session, audit)
            return self._write(session, obj)

    def apply_all(self, objects: list[CatalogObject], *, audit: Sequence[AuditEntry] = ()) -> list[ApplyResult]:
        """Create or update several objects in one transaction: all of them are written (and audited), or none."""
        with self.database.transaction() as session:
            write_entries(session, audit)
            return [self._write(session, obj) for obj in objects]

    def get(self, kind: type[T], name: str) -> T:
        return self.get_versioned(kind, name)[2]

    def find(self, kind: type[T], name: str) -> T | None:
        """The object, or None when there is none of that kind and name."""
        try:
            return self.get(kind, name)
        except NotFound:
            return None

    def get_with_id(self, kind: type[T], name: str) -> tuple[uuid.UUID, T]:
        """An object and its stable id (ids survive updates; deterministic run ids use them)."""
        id_, _, obj = self.get_versioned(kind, name)
        return id_, obj

    def get_versioned(self, kind: type[T], name: str) -> tuple[uuid.UUID, int, T]:
        """An object with its id and version (for a compare-and-set update)."""
        with self.database.transaction() as session:
            row = self._row(session, kind.__name__, name)
            if row is None:
                raise NotFound(kind.__name__, name)
            return uuid.UUID(row.id), row.version, cast(T, kind.model_validate(row.spec))

    def replace_if_version(self, obj: CatalogObject, version: int, *, audit: Sequence[AuditEntry] = ()) -> bool:
        """Store ``obj`` only if its stored version is still ``version`` (compare and set); True when stored."""
        with self.database.transaction() as session:
            row = self._row(session, kind_of(obj), obj.name, for_update=True)
            if row is None or row.version != version:
                return False
            write_entries(session, audit)
            row.spec, row.version, row.updated_at = stored_form(obj), row.version + 1, now()
            return True

    def list_objects(self, kind: type[T]) -> list[T]:
        with self.database.transaction() as session:
            rows = session.scalars(
                select(CatalogObjectRow).where(CatalogObjectRow.kind == kind.__name__).order_by(CatalogObjectRow.name)
            )
            return [cast(T, kind.model_validate(row.spec)) for row in rows]

    def rename(self, old_name: str, obj: CatalogObject, *, audit: Sequence[AuditEntry] = ()) -> None:
        """Replace object ``old_name`` of ``obj``'s kind by ``obj`` under its new name, keeping its id."""
        with self.database.transaction() as session:
            write_entries(session, audit)
            row = self._row(session, kind_of(obj), old_name, for_update=True)
            if row is None:
                raise NotFound(kind_of(obj), old_name)
            row.name, row.spec, row.version, row.updated_at = obj.name, stored_form(obj), row.version + 1, now()

    def delete(self, kind: type[CatalogObject], name: str, *, audit: Sequence[AuditEntry] = ()) -> None:
        with self.database.transaction() as session:
            write_entries(session, audit)
            row = self._row(session, kind.__name__, name, for_update=True)
            if row is None:
                raise NotFound(kind.__name__, name)
            session.delete(row)

    def scheduled_definitions(self) -> list[tuple[uuid.UUID, ExportDefinition]]:
        """Definitions whose schedule is enabled, with their ids."""
        with self.database.transaction() as session:
            rows = session.scalars(select(CatalogObjectRow).where(CatalogObjectRow.kind == ExportDefinition.__name__))
            definitions = [(uuid.UUID(row.id), ExportDefinition.model_validate(row.spec)) for row in rows]
        return [(id_, d) for id_, d in definitions if d.schedule.enabled]

    def definitions_fingerprint(self) -> tuple[int, datetime | None]:
        """(count, latest update) of export definitions: changes whenever one is created, edited or deleted."""
        with self.database.transaction() as session:
            count, latest = session.execute(
                select(func.count(), func.max(CatalogObjectRow.updated_at)).where(
                    CatalogObjectRow.kind == ExportDefinition.__name__
                )
            ).one()
            return int(count), aware(latest)
