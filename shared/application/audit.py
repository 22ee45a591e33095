"""The audit trail of catalog changes: the entry each use case writes with its change, and reading them back."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from shared.application.actors import Actor, Permission, authorise
from shared.application.ports import AuditLog, DefinitionsStore
from shared.domain.audit import AuditEntry
from shared.domain.catalog_objects import (
    KINDS,
    CatalogObject,
    ConnectionProfile,
    ExportDefinition,
    kind_of,
    shown_url,
    shown_webhook_url,
)
from shared.domain.instants import json_instant
from shared.events import utc_now

#: How a definition without a business unit is written in an entry's units (only unscoped readers see it).
NO_UNIT = ""


def units_touched(store: DefinitionsStore, *objects: CatalogObject | None) -> tuple[str, ...]:
    """The business units of the definitions that ``objects`` are or that use them (sorted, distinct). Of definitions
    only: their own units (no other object read)."""
    units: set[str] = set()
    for kind, name, business_unit in {
        (kind_of(obj), obj.name, getattr(obj, "business_unit", None)) for obj in objects if obj is not None
    }:
        units.update(units_of(store, kind, name, business_unit))
    return tuple(sorted(units))


def units_of(store: DefinitionsStore, kind: str, name: str, business_unit: str | None) -> tuple[str, ...]:
    """:func:`units_touched` of the object of ``kind`` and ``name`` known only by its ``business_unit`` (a
    definition's; None for the other kinds): nothing of it is loaded (its secrets stay encrypted). A query, template
    or profile: the units of the definitions that use it, directly or through a template, as
    :meth:`~shared.application.ports.DefinitionsStore.dependents` finds them (their units only read)."""
    if kind == ExportDefinition.__name__:
        return (business_unit or NO_UNIT,)
    return units_now(store, kind, name)


def units_now(store: DefinitionsStore, kind: str, name: str) -> tuple[str, ...]:
    """The units the object of ``kind`` and ``name`` belongs to now, as stored (none if it is gone; a definition:
    its own): the audit log's second rule (:func:`readable_to`). Nothing of it is loaded or validated, and of the
    definitions using it their distinct units only
    (:meth:`~shared.application.ports.DefinitionsStore.dependent_units`)."""
    return tuple(sorted({unit or NO_UNIT for unit in store.dependent_units(kind, name)}))


def readable_to(scope: frozenset[str], entry_units: Iterable[str], units_now: Callable[[], Iterable[str]]) -> bool:
    """The audit log's rule: whether a reader scoped to ``scope`` (empty: unscoped) may see an entry that touched
    ``entry_units``: its scope covers them, and the units the entry's object belongs to now (``units_now``, asked
    only if the first holds; an object gone belongs to none). :func:`read_audit` lists by it; a 412 names the last
    writer only to whom it would list that writer's entry."""
    if not scope:
        return True
    return set(entry_units) <= scope and set(units_now()) <= scope


def change(
    actor: str,
    action: str,
    store: DefinitionsStore,
    *,
    before: CatalogObject | None = None,
    after: CatalogObject | None = None,
) -> AuditEntry:
    """The entry recording ``action`` by ``actor`` from ``before`` to ``after`` (secrets and webhook URLs' paths and
    queries masked, as the API shows them)."""
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
    belongs to the units of the definitions that use it today).

    Entries older than the log's retention (``EXPORT_AUDIT_RETENTION_DAYS``) are deleted first, whoever reads:
    the admin API and exportctl on the catalog alike (an indexed delete)."""
    authorise(actor, Permission.READ)
    log.prune()
    scope = actor.business_units
    current: dict[tuple[str, str], tuple[str, ...]] = {}

    def units_of_entry(entry: AuditEntry) -> tuple[str, ...]:
        key = (entry.kind, entry.name)
        if key not in current:
            current[key] = units_now(store, entry.kind, entry.name) if entry.kind in KINDS else ()
        return current[key]

    def readable(entry: AuditEntry) -> bool:
        return readable_to(scope, entry.business_units, lambda: units_of_entry(entry))

    entries = log.entries(readable=readable, name=name, kind=kind, actor=who, since=since, limit=limit, offset=offset)
    return [_shown(entry) for entry in entries]


def audit_view(entry: AuditEntry) -> dict[str, Any]:
    """An entry as the admin API answers it and exportctl prints it (JSON-ready; one shape, one order for both)."""
    return {
        "id": entry.id,
        "at": json_instant(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "kind": entry.kind,
        "name": entry.name,
        "business_units": list(entry.business_units),
        "before": entry.before,
        "after": entry.after,
    }


def _shown(entry: AuditEntry) -> AuditEntry:
    """``entry`` with its definition's webhook URLs masked as reads show them (:func:`shown_webhook_url`): an entry
    written before they were (session 49) holds them whole; and a profile's URLs with their credential-named query
    values masked (:func:`shown_url`): an entry written before session 54 holds them whole."""
    if entry.kind == ConnectionProfile.__name__:
        return dataclasses.replace(
            entry, before=_profile_urls_shown(entry.before), after=_profile_urls_shown(entry.after)
        )
    if entry.kind != ExportDefinition.__name__:
        return entry
    return dataclasses.replace(
        entry, before=_without_webhook_urls(entry.before), after=_without_webhook_urls(entry.after)
    )


def _profile_urls_shown(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    if spec is None:
        return spec
    shown = spec | ({"base_url": shown_url(spec["base_url"])} if isinstance(spec.get("base_url"), str) else {})
    auth = spec.get("auth")
    if isinstance(auth, dict) and isinstance(auth.get("token_url"), str):
        shown["auth"] = auth | {"token_url": shown_url(auth["token_url"])}
    return shown


def _without_webhook_urls(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    notifications = spec.get("notifications") if spec else None
    if (
        spec is None
        or not isinstance(notifications, dict)
        or not isinstance(hooks := notifications.get("webhooks"), dict)
    ):
        return spec
    shown = {
        name: channel | {"url": shown_webhook_url(channel["url"])}
        if isinstance(channel, dict) and isinstance(channel.get("url"), str)
        else channel
        for name, channel in hooks.items()
    }
    return spec | {"notifications": notifications | {"webhooks": shown}}
