"""The retry state of dead-lettered members, for ``exportctl dead-letters list``: pending retry (the next run
sends them again), given up, delivered by a later run, or gone from the query."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from shared.member_keys import outcome_key

if TYPE_CHECKING:
    from shared.domain.member_retries import MemberRetry

G = TypeVar("G")


def member_keys(members: Iterable[dict[str, Any]], key_column: str) -> list[str]:
    """The members' keys as text, as batch outcomes name them."""
    return [outcome_key(member.get(key_column)) for member in members]


def summary(keys: list[str], states: Mapping[str, MemberRetry]) -> str:
    """One cell: how many members stand where (``3 pending retry, 1 given up, 2 delivered by run <id>``)."""
    counts: Counter[str] = Counter()
    for key in keys:
        state = states.get(key)
        if state is None:
            counts["no retry"] += 1
        elif state.state.value == "pending":
            counts["pending retry"] += 1
        elif state.state.value == "given_up":
            counts["given up"] += 1
        elif state.state.value == "delivered":
            counts[f"delivered by run {state.last_run}"] += 1
        else:
            counts["gone from the query"] += 1
    return ", ".join(f"{count} {what}" for what, count in sorted(counts.items()))


def retry_cells(catalog_url: str, groups: Mapping[G, tuple[str, list[dict[str, Any]]]]) -> dict[G, str]:
    """Each group's (definition, members) retry summary; none for a group whose definition the catalog cannot
    say (a definition gone), nor at all without a readable catalog (the listing is of Kafka's dead letters)."""
    from shared.catalog import CatalogStores, NotFound
    from shared.cli.exits import CliError
    from shared.cli.modes import refuse_missing_catalog
    from shared.domain.catalog_objects import ExportDefinition, SavedQuery
    from shared.errors import StoredObjectInvalid

    try:
        refuse_missing_catalog(catalog_url)
    except CliError:
        return {}
    from sqlalchemy.exc import SQLAlchemyError

    cells: dict[G, str] = {}
    stores = CatalogStores.from_url(catalog_url)
    try:
        key_columns: dict[str, str | None] = {}
        for group, (definition, members) in groups.items():
            if definition not in key_columns:
                try:
                    query = stores.definitions.get(
                        SavedQuery, stores.definitions.get(ExportDefinition, definition).query
                    )
                    key_columns[definition] = query.key_column
                except (NotFound, StoredObjectInvalid):
                    key_columns[definition] = None
            column = key_columns[definition]
            if column is None or not members:
                continue
            keys = member_keys(members, column)
            cells[group] = summary(keys, stores.retries.states(definition, keys))
    except SQLAlchemyError:  # a catalog that cannot be read (or is at an older revision): no RETRY column
        return {}
    finally:
        stores.close()
    return cells
