"""Why a use case refused, as one tree every entry point maps the same way.

::

    Refused                  the operation was not done; ``reason`` says why, ``problems`` line by line
     ├── Missing       404   an object or run that does not exist
     ├── Forbidden     403   the actor's role or business-unit scope does not allow it
     ├── Conflict      409   a name taken, an object in use, a run already finished
     └── Invalid       422   the input breaks a rule (a field, a reference, a parameter, a template)

    PublishFailed      503   Kafka did not acknowledge an event (not a refusal: what came before it was written)
     └── RunNotPublished     a run recorded queued whose request Kafka did not acknowledge
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


class PublishFailed(Exception):
    """Kafka did not acknowledge an event: the broker down or unreachable, no acknowledgement in time, a producer's
    error. ``what`` names the event and its topic, ``reason`` the failure (the client's error: never a credential).
    ``unknown``: the broker may have received it and may still write it (its outcome is unknown); False when it was
    never handed to a broker."""

    def __init__(self, what: str, reason: str, *, unknown: bool = True) -> None:
        self.what, self.reason, self.unknown = what, reason, unknown
        super().__init__(f"Kafka did not acknowledge {what} ({reason})")


class RunNotPublished(PublishFailed):
    """A run recorded ``queued`` whose request Kafka did not acknowledge; the message says what becomes of it: a
    retry under the same Idempotency-Key publishes it again (:func:`shared.application.runs.request_run`), else a
    run that never starts is failed as stuck by the notifier's sweep."""

    def __init__(self, run_id: uuid.UUID, failure: PublishFailed) -> None:
        super().__init__(failure.what, failure.reason, unknown=failure.unknown)
        self.run_id = run_id
        outcome = (
            "its outcome is unknown: it starts if the broker received it" if self.unknown else "it was not published"
        )
        self.args = (
            f"run {run_id} was recorded queued, but Kafka did not acknowledge its request ({self.reason}): "
            f"{outcome}; retrying with the same Idempotency-Key publishes it again (the run starts once), else a run "
            "that never starts is failed as stuck (EXPORT_NOTIFIER_STUCK_AFTER_SECONDS)",
        )
