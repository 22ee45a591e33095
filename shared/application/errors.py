"""Why a use case refused, as one tree every entry point maps the same way.

::

    Refused                  the operation was not done; ``reason`` says why, ``problems`` line by line
     ├── Missing       404   an object or run that does not exist
     ├── Forbidden     403   the actor's role or business-unit scope does not allow it
     ├── Conflict      409   a name taken, an object in use, a run already finished
     └── Invalid       422   the input breaks a rule (a field, a reference, a parameter, a template)
"""

from __future__ import annotations

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
