"""The save-time rule of chained exports (``schedule.after``): no chain loops. That the followed definition exists
is the rule of every reference (:func:`~shared.domain.catalog_objects.references`), checked before."""

from __future__ import annotations

from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import CatalogObject, ExportDefinition


def chain_problems(objects: list[CatalogObject], store: DefinitionsStore) -> list[str]:
    """No chain of the definitions being written loops back."""
    written = [obj for obj in objects if isinstance(obj, ExportDefinition)]
    if not any(definition.schedule.after for definition in written):
        return []  # nothing written follows anything: no chain can close (the catalog's are checked already)
    # The stored links the written definitions' chains reach (an indexed lookup per link, not every definition read):
    # a chain that loops through a written definition reaches it from what that definition follows.
    follows = store.chain_links({d.schedule.after.definition for d in written if d.schedule.after})
    for definition in written:
        follows.pop(definition.name, None)
        if definition.schedule.after is not None:
            follows[definition.name] = definition.schedule.after.definition
    problems = []
    for definition in written:
        if definition.schedule.after is None:
            continue
        at = f"ExportDefinition '{definition.name}': field 'schedule.after.definition'"
        path = [definition.name]
        while (following := follows.get(path[-1])) is not None and following not in path:
            path.append(following)
        if following is not None and following == definition.name:
            problems.append(f"{at}: chained exports would run in a cycle: {' -> '.join([*path, definition.name])}")
    return problems
