"""Members refused by a partner, sent again by the next runs of their definition. Pure.

A refused member's reason is *retryable later* (no answer, a timeout or a connection error, 408, 425,
429, 5xx: the partner may take it next time) or *invalid* (any other refusal: 4xx such as 422, which the
same member would get again). Each kind has its own budget of runs that send the member again
(``retry_rejected`` on the definition); a member that has used it up is given up. A delivery resolves
it, whichever run delivered it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: Refusals that may succeed later (the dispatcher retries them within a run, too).
RETRYABLE_LATER_STATUSES = frozenset({408, 425, 429})


class RefusalKind(StrEnum):
    """Why a member was refused, as far as trying again goes."""

    RETRYABLE = "retryable"
    INVALID = "invalid"


class RetryState(StrEnum):
    """Where a refused member stands: sent again by the next run, given up, or delivered since."""

    PENDING = "pending"
    GIVEN_UP = "given_up"
    DELIVERED = "delivered"
    #: The definition's query no longer returns the member: nothing to send.
    GONE = "gone"


def classify(status: int | None) -> RefusalKind:
    """A refusal's kind by the partner's last status (None: no answer, a timeout or a connection error)."""
    if status is None or status in RETRYABLE_LATER_STATUSES or status >= 500:
        return RefusalKind.RETRYABLE
    return RefusalKind.INVALID


class RetryRejected(BaseModel):
    """A definition's ``retry_rejected``: how many later runs send a refused member again, by refusal kind.

    ``runs`` for members refused with a retryable-later reason (no answer, 408, 425, 429, 5xx);
    ``invalid_runs`` for members refused as invalid (other 4xx, e.g. 422): 0, the default, never sends
    them again. Runs that send a member as part of their own query count as well.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    runs: Annotated[int, Field(ge=0, le=100)] = 3
    invalid_runs: Annotated[int, Field(ge=0, le=100)] = 0

    def budget(self, kind: RefusalKind) -> int:
        """How many later runs send a member refused with a reason of ``kind``."""
        return self.runs if kind is RefusalKind.RETRYABLE else self.invalid_runs


@dataclass(frozen=True)
class MemberRetry:
    """One refused member of a definition: its last refusal, the runs it failed in, its state."""

    key: str
    status: int | None
    reason: str
    kind: RefusalKind
    #: Runs whose delivery of the member failed, in a row (the first refusal included).
    failed_runs: int
    state: RetryState
    #: The run that last refused it, or delivered it (``state`` delivered).
    last_run: str


def after_refusal(
    current: MemberRetry | None,
    *,
    key: str,
    status: int | None,
    reason: str,
    run_id: str,
    policy: RetryRejected,
) -> MemberRetry:
    """The member's state once ``run_id`` refused it.

    A member pending or given up counts one more failed run; one delivered or gone since (or new) starts
    again at one. It stays pending while the runs that sent it again are fewer than its kind's budget,
    else it is given up, and stays so (a full run sending it anyway does not make it a retry again) until
    a delivery. A run that refuses a member twice (two batches) counts once.
    """
    kind = classify(status)
    open_ = current is not None and current.state in (RetryState.PENDING, RetryState.GIVEN_UP)
    if current is not None and open_ and current.last_run == run_id:
        failed = current.failed_runs
    elif current is not None and open_:
        failed = current.failed_runs + 1
    else:
        failed = 1
    given_up = current is not None and open_ and current.state is RetryState.GIVEN_UP
    state = RetryState.PENDING if failed - 1 < policy.budget(kind) and not given_up else RetryState.GIVEN_UP
    return MemberRetry(key, status, reason, kind, failed, state, run_id)


def after_delivery(current: MemberRetry, run_id: str) -> MemberRetry:
    """The member's state once ``run_id`` delivered it (its last refusal is kept, for the record)."""
    return MemberRetry(
        current.key, current.status, current.reason, current.kind, current.failed_runs, RetryState.DELIVERED, run_id
    )
