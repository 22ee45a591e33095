"""Use case of ``exportctl dead-letters list``'s RETRY column: where a definition's dead-lettered members'
retries stand, within the actor's scope (as every other read of the catalog)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shared.application.actors import Actor, Permission, authorise
from shared.application.objects import visible_with_id
from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import ExportDefinition, SavedQuery
from shared.domain.member_retries import MemberRetry


class RetryStates(Protocol):
    """Refused members' retry states (``shared.catalog.SqlMemberRetries``)."""

    def states(self, definition: str, keys: Sequence[str]) -> dict[str, MemberRetry]:
        """By the definition's id."""


def dead_letter_key_column(actor: Actor, definition: str, *, store: DefinitionsStore) -> str:
    """The key column of the definition's saved query (which names its dead letters' members):
    :class:`Missing` when the definition or its query is gone, :class:`Forbidden` out of the actor's scope."""
    authorise(actor, Permission.READ)
    _, found = visible_with_id(actor, store, ExportDefinition, definition)
    _, query = visible_with_id(actor, store, SavedQuery, found.query)
    return query.key_column


def dead_letter_retries(
    actor: Actor, definition: str, keys: Sequence[str], *, store: DefinitionsStore, retries: RetryStates
) -> dict[str, MemberRetry]:
    """The retry state of each of ``keys`` the definition has one for, within the actor's scope."""
    authorise(actor, Permission.READ)
    definition_id, _ = visible_with_id(actor, store, ExportDefinition, definition)
    return retries.states(str(definition_id), keys)
