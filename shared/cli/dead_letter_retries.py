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


class RetryLookup:
    """The catalog's view of dead letters' retries, as the local operator (through ``shared.application``):
    opened once a listing, read-only; nothing at all without a readable catalog (the listing is of Kafka's
    dead letters, and says what it can)."""

    def __init__(self, catalog_url: str) -> None:
        import getpass

        from shared.application.actors import local_operator
        from shared.cli.exits import CliError
        from shared.cli.modes import refuse_missing_catalog

        self._actor = local_operator(getpass.getuser())
        self._columns: dict[str, str | None] = {}
        self._stores: Any = None
        try:
            refuse_missing_catalog(catalog_url)
        except CliError:
            return
        from shared.catalog import CatalogStores

        self._stores = CatalogStores.from_url(catalog_url)

    def key_column(self, definition: str) -> str | None:
        """The column naming the definition's members; None when the catalog cannot say (a definition gone)."""
        if self._stores is None or not definition:
            return None
        if definition not in self._columns:
            from sqlalchemy.exc import SQLAlchemyError

            from shared.application.dead_letter_retries import dead_letter_key_column
            from shared.application.errors import Refused
            from shared.errors import StoredObjectInvalid

            try:
                self._columns[definition] = dead_letter_key_column(
                    self._actor, definition, store=self._stores.definitions
                )
            except (Refused, StoredObjectInvalid, SQLAlchemyError):  # gone, or a catalog it cannot read
                self._columns[definition] = None
        return self._columns[definition]

    def cells(self, groups: Mapping[G, tuple[str, list[str]]]) -> dict[G, str]:
        """Each group's (definition, member keys) retry summary; none for a group the catalog cannot say."""
        if self._stores is None:
            return {}
        from sqlalchemy.exc import SQLAlchemyError

        from shared.application.dead_letter_retries import dead_letter_retries
        from shared.application.errors import Refused

        cells: dict[G, str] = {}
        for group, (definition, keys) in groups.items():
            if not keys or self.key_column(definition) is None:
                continue
            try:
                states = dead_letter_retries(
                    self._actor, definition, keys, store=self._stores.definitions, retries=self._stores.retries
                )
            except (Refused, SQLAlchemyError):  # a catalog at an older revision, say: no RETRY cell
                continue
            cells[group] = summary(keys, states)
        return cells

    def close(self) -> None:
        if self._stores is not None:
            self._stores.close()
