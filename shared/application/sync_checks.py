"""Save-time checks of a definition's ``sync`` setting (change mode): its combination with incremental mode, and
the templates it names per kind (they exist: :func:`shared.domain.catalog_objects.references`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, kind_of
from shared.domain.sync_mode import SyncMode, sync_problems
from shared.events import ChangeKind


def sync_definition_problems(definition: ExportDefinition) -> list[str]:
    """What is wrong with ``definition.sync``, each problem naming the definition and the field."""
    problems = sync_problems(definition.sync, incremental=definition.incremental is not None)
    if definition.sync.mode is SyncMode.CHANGES and not any(
        definition.sync.template_for(kind, definition.template) for kind in ChangeKind
    ):
        problems.append("field 'sync': change mode with every kind set to false would never send a member")
    return [f"{kind_of(definition)} '{definition.name}': {p}" for p in problems]


def kind_templates(definition: ExportDefinition, lookup: Callable[[Any, str], Any]) -> list[tuple[HttpTemplate, str]]:
    """The templates ``definition`` names per change kind, with the field naming each (to check their columns)."""
    if definition.sync.mode is not SyncMode.CHANGES:
        return []
    found = [(lookup(HttpTemplate, name), field) for name, field in definition.sync.named_templates()]
    return [
        (template, f"{kind_of(definition)} '{definition.name}': field '{field}'")
        for template, field in found
        if template is not None
    ]
