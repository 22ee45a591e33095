"""Use case of the member delivery log: a member's last delivery (and retry state), within the actor's scope."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shared.application.actors import Actor, Permission, authorise
from shared.application.errors import Invalid, Missing
from shared.application.objects import visible_with_id
from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.member_deliveries import MAX_KEY_LENGTH, MemberDelivery
from shared.domain.member_retries import MemberRetry


class DeliveryLogReader(Protocol):
    """The member delivery log (``shared.catalog.SqlDeliveryLog``)."""

    def last_delivery(self, definition: str, key: str) -> MemberDelivery | None: ...


class RetryStates(Protocol):
    """Refused members' retry states (``shared.catalog.SqlMemberRetries``)."""

    def states(self, definition: str, keys: Sequence[str]) -> dict[str, MemberRetry]: ...


@dataclass(frozen=True)
class MemberDeliveryAnswer:
    """What is known of a member's delivery: the last one the log holds, and its retry state if it was refused."""

    definition: str
    key: str
    last: MemberDelivery | None
    retry: MemberRetry | None


def member_delivery(
    actor: Actor,
    definition: str,
    key: str,
    *,
    store: DefinitionsStore,
    log: DeliveryLogReader,
    retries: RetryStates,
) -> MemberDeliveryAnswer:
    """A member's last delivery by its key, within the actor's scope: :class:`Forbidden` for a definition of
    another business unit (as every definition route), :class:`Missing` for a definition or key the log
    knows nothing of, :class:`Invalid` for an empty or overlong key."""
    authorise(actor, Permission.READ)
    if not key or len(key) > MAX_KEY_LENGTH:
        raise Invalid(f"key: give a member key of 1 to {MAX_KEY_LENGTH} characters", slug="invalid-member-key")
    _, found = visible_with_id(actor, store, ExportDefinition, definition)
    last = log.last_delivery(found.name, key)
    retry = retries.states(found.name, [key]).get(key)
    if last is None and retry is None:
        raise Missing(
            f"the delivery log of '{found.name}' holds no delivery of member '{key}' "
            "(never sent, or before the log's retention)",
            slug="member-delivery-not-found",
        )
    return MemberDeliveryAnswer(found.name, key, last, retry)
