"""Use case of the member delivery log: a member's last delivery (and retry state), within the actor's scope."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shared.application.actors import Actor, Permission, authorise
from shared.application.errors import Invalid, Missing
from shared.application.objects import visible_with_id
from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.instants import json_instant
from shared.domain.member_deliveries import MAX_KEY_LENGTH, MemberDelivery
from shared.domain.member_retries import MemberRetry


class DeliveryLogReader(Protocol):
    """The member delivery log (``shared.catalog.SqlDeliveryLog``)."""

    def last_delivery(self, definition: str, key: str) -> MemberDelivery | None:
        """By the definition's id."""


class RetryStates(Protocol):
    """Refused members' retry states (``shared.catalog.SqlMemberRetries``)."""

    def states(self, definition: str, keys: Sequence[str]) -> dict[str, MemberRetry]:
        """By the definition's id."""


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
    definition_id, found = visible_with_id(actor, store, ExportDefinition, definition)
    # By the definition's id: a namesake deleted before this one was created is none of its history.
    last = log.last_delivery(str(definition_id), key)
    retry = retries.states(str(definition_id), [key]).get(key)
    if last is None and retry is None:
        raise Missing(
            f"the delivery log of '{found.name}' holds no delivery of member '{key}' "
            "(never sent, before the log's retention, or older than the newest batches a lookup reads)",
            slug="member-delivery-not-found",
        )
    return MemberDeliveryAnswer(found.name, key, last, retry)


def delivery_view(answer: MemberDeliveryAnswer) -> dict[str, Any]:
    """The answer as the admin API answers it and exportctl prints it (JSON-ready; one shape for both)."""
    last, retry = answer.last, answer.retry
    return {
        "definition": answer.definition,
        "key": answer.key,
        "last": None
        if last is None
        else {
            "outcome": last.outcome,
            "run_id": last.run_id,
            "batch_index": last.batch_index,
            "at": json_instant(last.at),
            "attempts": last.attempts,
            "status": last.status,
            "reason": last.reason,
            "retry": last.retry,
        },
        "retry": None
        if retry is None
        else {
            "state": retry.state.value,
            "kind": retry.kind.value,
            "failed_runs": retry.failed_runs,
            "last_run_id": retry.last_run,
            "status": retry.status,
            "reason": retry.reason,
        },
    }
