"""Why a use case refused, as one tree every entry point maps the same way.

::

    Refused                  the operation was not done; ``reason`` says why, ``problems`` line by line
     ├── Missing       404   an object or run that does not exist
     ├── Forbidden     403   the actor's role or business-unit scope does not allow it
     ├── Conflict      409   a name taken, an object in use, a run already finished
     ├── Invalid       422   the input breaks a rule (a field, a reference, a parameter, a template)
     └── Busy          503   another request is doing it now (publishing the same replay run): retry it later

    PublishFailed      503   Kafka did not acknowledge an event (not a refusal: what came before it was written)
     ├── RunNotPublished     a run (or a replay run) recorded queued whose request (events) Kafka did not acknowledge
     └── CancelNotPublished  a run recorded cancelled whose cancellation Kafka did not acknowledge

    DeadLettersUnreadable 503 the dead-letter topic could not be read (Kafka down, unreachable, too slow)
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar


class Refused(Exception):
    """A use case refused; nothing was written."""

    status: ClassVar[int] = 400
    default_slug: ClassVar[str] = "refused"

    def __init__(self, reason: str | list[str], *, slug: str | None = None) -> None:
        self.problems = [reason] if isinstance(reason, str) else list(reason)
        self.reason = "; ".join(self.problems)
        self.slug = slug or self.default_slug
        super().__init__(self.reason)


class Missing(Refused):
    status = 404
    default_slug = "not-found"


class Forbidden(Refused):
    status = 403
    default_slug = "forbidden"


class Conflict(Refused):
    status = 409
    default_slug = "conflict"


class Stale(Refused):
    """A write conditional on the version its writer read (``If-Match``, a console form's version) found the object
    changed since, or not the object of that revision (``changed-since-read``), or the revision sent names no
    object (an ``ETag`` or a page from before revisions: ``unknown-revision``, not ``changed``): nothing was
    written; the writer reads it again."""

    status = 412
    default_slug = "changed-since-read"

    def __init__(
        self,
        reason: str | list[str],
        *,
        slug: str | None = None,
        changed: bool = True,
        other_object: bool = False,
        by: str | None = None,
        at: datetime | None = None,
    ) -> None:
        super().__init__(reason, slug=slug)
        #: Who last changed the object, and when, as the audit log and the catalog say: only when the writer may read
        #: that change in the audit log (else None, as in ``reason``). For a console's own words.
        self.by, self.at = by, at
        #: False when the revision sent names no object (an ``ETag`` or a page from before revisions): nobody
        #: changed anything, the writer only needs the current revision.
        self.changed = changed
        #: True when the revision sent is of another object than the one now under the name (it was deleted and
        #: another created under its name, or the revision is another object's).
        self.other_object = other_object


class Invalid(Refused):
    status = 422
    default_slug = "invalid-object"


class Busy(Refused):
    """Another request is doing what this one asks for now (publishing the same replay run): nothing was done by this
    one; retrying the same request later finds what the other left."""

    status = 503
    default_slug = "busy"


class PublishFailed(Exception):
    """Kafka did not acknowledge an event: the broker down or unreachable, no acknowledgement in time, a producer's
    error. ``what`` names the event and its topic, ``reason`` the failure (the client's error: never a credential).
    ``unknown``: the broker may have received it and may still write it (its outcome is unknown); False when it was
    never handed to a broker. ``run_id``: the run the operation recorded before it published (None: none)."""

    run_id: uuid.UUID | None = None

    def __init__(self, what: str, reason: str, *, unknown: bool = True) -> None:
        self.what, self.reason, self.unknown = what, reason, unknown
        super().__init__(f"Kafka did not acknowledge {what} ({reason})")


class RunNotPublished(PublishFailed):
    """A run recorded ``queued`` whose request Kafka did not acknowledge; the message says what becomes of it: a
    retry under the same Idempotency-Key publishes it again (:func:`shared.application.runs.request_run`); without
    a key (``keyed`` False) a retry would start another run, so the message says how to cancel this one instead; a
    run that never starts is failed as stuck by the notifier's sweep. With ``replay_of``: a replay run of that run,
    whose events (its start, batches and extraction's end) Kafka did not all acknowledge
    (:func:`shared.application.replay.replay_dead_letters`: the same retry publishes them again)."""

    def __init__(
        self, run_id: uuid.UUID, failure: PublishFailed, *, replay_of: uuid.UUID | None = None, keyed: bool = True
    ) -> None:
        super().__init__(failure.what, failure.reason, unknown=failure.unknown)
        self.run_id: uuid.UUID = run_id
        self.replay_of = replay_of
        if replay_of is None:
            what, outcome = (
                f"run {run_id} was recorded queued, but Kafka did not acknowledge its request",
                "its outcome is unknown: it starts if the broker received it",
            )
            again, another = "publishes it again (the run starts once)", "another run"
        else:
            what, outcome = (
                f"replay run {run_id} of run {replay_of} was recorded queued, but Kafka did not acknowledge its events",
                "their outcome is unknown: the broker may have received some of them",
            )
            again = "publishes them again (the same replay run, its batches under the same keys)"
            another = "another replay run"
        if keyed:
            retry = f"retrying with the same Idempotency-Key {again}, else"
        else:
            retry = (
                f"it was requested without an Idempotency-Key, so requesting it again starts {another}: cancel this "
                f"one if it must not start (exportctl cancel {run_id}, or POST /api/v1/runs/{run_id}/cancel), else"
            )
        self.args = (
            f"{what} ({self.reason}): {outcome if self.unknown else 'it was not published'}; {retry} a run that never "
            "starts is failed as stuck (EXPORT_NOTIFIER_STUCK_AFTER_SECONDS)",
        )


class CancelNotPublished(PublishFailed):
    """A run recorded ``cancelled`` (it holds: the extractor and the dispatcher read the record) whose cancellation
    event Kafka did not acknowledge; cancelling the run again publishes it again
    (:func:`shared.application.runs.cancel_run`)."""

    def __init__(self, run_id: uuid.UUID, failure: PublishFailed) -> None:
        super().__init__(failure.what, failure.reason, unknown=failure.unknown)
        self.run_id: uuid.UUID = run_id
        outcome = "its outcome is unknown" if self.unknown else "it was not published"
        self.args = (
            f"run {run_id} was recorded cancelled (the extractor and the dispatcher stop it), but Kafka did not "
            f"acknowledge its cancellation event ({self.reason}): {outcome}; cancelling it again publishes it again",
        )


#: What a replay refused at its read of the dead letters (unreadable, or busy) adds when its Idempotency-Key was claimed
#: first: the key names this run's replay all the same.
KEY_STAYS_BOUND = " (the Idempotency-Key stays bound to this run's replay: retry with it)"

#: The longest reason a :class:`DeadLettersUnreadable` carries (a client's message, its first line).
UNREADABLE_REASON_CHARS = 300


class DeadLettersUnreadable(Exception):
    """The dead-letter topic could not be read (Kafka down, unreachable, slower than the read's bounds): raised by the
    dead letters' adapter (:class:`shared.application.ports.DeadLetterSource`), the client's error as ``reason``
    (its first line, at most :data:`UNREADABLE_REASON_CHARS`; never a credential). Not a refusal: try again.

    With ``replay_of`` (raised again by :func:`shared.application.replay.replay_dead_letters`, the read being before
    anything else it records): no replay run was recorded; with ``key_bound`` its Idempotency-Key is bound to the
    run's replay all the same (a retry with it replays the run, another request with it is refused)."""

    def __init__(self, reason: str, *, replay_of: uuid.UUID | None = None, key_bound: bool = False) -> None:
        self.reason = (reason.splitlines() or [""])[0][:UNREADABLE_REASON_CHARS]
        self.replay_of, self.key_bound = replay_of, key_bound
        if replay_of is None:
            message = f"the dead letters cannot be read now: {self.reason}"
        else:
            message = f"the dead letters cannot be read now, no replay run was recorded: {self.reason}"
            if key_bound:
                message += KEY_STAYS_BOUND
        super().__init__(message)
