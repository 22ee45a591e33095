"""The audit trail of catalog changes: the entry each use case writes with its change, and reading them back."""

from __future__ import annotations

from datetime import datetime

from shared.application.actors import Actor, Permission, authorise
from shared.application.ports import AuditLog, DefinitionsStore
from shared.domain.audit import AuditEntry
from shared.domain.catalog_objects import KINDS, CatalogObject, ExportDefinition, HttpTemplate, kind_of
from shared.events import utc_now

#: How a definition without a business unit is written in an entry's units (only unscoped readers see it).
NO_UNIT = ""


def units_touched(store: DefinitionsStore, *objects: CatalogObject | None) -> tuple[str, ...]:
    """The business units of the definitions that ``objects`` are or that use them (sorted, distinct)."""
    units: set[str] = set()
    definitions = store.list_objects(ExportDefinition)
    templates = store.list_objects(HttpTemplate)
    for obj in objects:
        if obj is None:
            continue
        if isinstance(obj, ExportDefinition):
            units.add(obj.business_unit or NO_UNIT)
            continue
        using_templates = {t.name for t in templates if obj.name in (t.profile, t.query)} | (
            {obj.name} if isinstance(obj, HttpTemplate) else set()
        )
        for definition in definitions:
            if definition.template in using_templates or definition.query == obj.name:
                units.add(definition.business_unit or NO_UNIT)
    return tuple(sorted(units))


def change(
    actor: str,
    action: str,
    store: DefinitionsStore,
    *,
    before: CatalogObject | None = None,
    after: CatalogObject | None = None,
) -> AuditEntry:
    """The entry recording ``action`` by ``actor`` from ``before`` to ``after`` (secrets masked, as the API shows)."""
    subject = after if after is not None else before
    assert subject is not None, "a change has a before or an after"
    return AuditEntry(
        at=utc_now(),
        actor=actor,
        action=action,
        kind=kind_of(subject),
        name=subject.name,
        business_units=units_touched(store, before, after),
        before=before.model_dump(mode="json") if before is not None else None,
        after=after.model_dump(mode="json") if after is not None else None,
    )


def read_audit(
    actor: Actor,
    log: AuditLog,
    store: DefinitionsStore,
    *,
    name: str | None = None,
    kind: str | None = None,
    who: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AuditEntry]:
    """Entries newest first; a scoped actor sees those whose units its scope covers, both the units the
    change touched and those the object belongs to now (a template created before any definition used it
    belongs to the units of the definitions that use it today)."""
    authorise(actor, Permission.READ)
    scope = actor.business_units
    current: dict[tuple[str, str], tuple[str, ...]] = {}

    def readable(entry: AuditEntry) -> bool:
        if not scope:
            return True
        if not entry.readable_within(scope):
            return False
        key = (entry.kind, entry.name)
        if key not in current:
            kind = KINDS.get(entry.kind)
            obj = store.find(kind, entry.name) if kind is not None else None
            current[key] = units_touched(store, obj)
        return set(current[key]) <= scope

    return log.entries(readable=readable, name=name, kind=kind, actor=who, since=since, limit=limit, offset=offset)
