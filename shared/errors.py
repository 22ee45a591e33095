"""The one error tree of the services, and the fate of each kind of error.

::

    ExportError
     ├── InvalidInput      a record or object that can never be processed as it is
     │                     → dead-lettered (records) or refused with the field named (objects)
     ├── RetryableError    may succeed later (a server down, a timeout, a 429/5xx)
     │                     → retried with backoff; when retries run out, treated as permanent
     ├── PermanentError    will not succeed by retrying (a 4xx, a query error, an unknown definition)
     │                     → the run or batch fails with the reason; members are dead-lettered
     ├── NotFound          no catalog object of that kind and name (a PermanentError for a run)
     │                     → 404 through the admin API, a refusal naming it in exportctl
     ├── EditConflict      a catalog object changed by others at every one of a write's tries
     │                     → 409 through the admin API (a Conflict), exit 4 in exportctl
     ├── NotAsListed       a set to apply whose objects changed after its change list was read (nothing written)
     │                     → the set read, judged and written again; EditConflict after WRITE_ATTEMPTS tries
     ├── CatalogTimedOut   a catalog read or write PostgreSQL ended for waiting too long (lock_timeout,
     │                     statement_timeout) → 503 through the admin API ("catalog-timed-out"), exit 5 in exportctl
     ├── NameTaken         a new catalog object's name taken by another writer meanwhile
     │                     → 409 through the admin API (a Conflict), exit 4 in exportctl
     ├── VersionMismatch   a write conditional on the version read (If-Match) finds the object changed
     │                     → 412 through the admin API (a Stale), the console shows the form again
     ├── ObjectInUse       a catalog object to delete or rename that others name, found in the write's transaction
     │                     → 409 through the admin API (a Conflict, "in-use"), exit 4 in exportctl
     └── ReferenceMissing  objects to write naming an object gone, found in the write's transaction
                           → 422 through the admin API (an Invalid, "invalid-reference")
"""

from __future__ import annotations

from datetime import UTC, datetime


class ExportError(Exception):
    """Base of every error the services raise on purpose."""


class InvalidInput(ExportError):
    """Input that cannot be processed as it is: it goes to the dead-letter topic with this reason."""


class RetryableError(ExportError):
    """A failure that may succeed later."""


class PermanentError(ExportError):
    """A failure that retrying will not fix."""


class NotFound(PermanentError, LookupError):
    """No catalog object of that kind and name."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} '{name}' does not exist")
        self.kind, self.name = kind, name


class StoredObjectInvalid(PermanentError):
    """A catalog object as stored breaks this release's rules (saved by an older release): apply it again."""


#: How many times a write that lost a race to another (its row changed between its read and its write) is tried
#: in all, each time on a fresh read, before :class:`EditConflict` says so. Concurrent edits of one object are rare.
WRITE_ATTEMPTS = 5


class EditConflict(PermanentError):
    """A catalog object kept changing under a write: other writes won each of its tries (nothing was written)."""

    def __init__(self, kind: str, name: str, attempts: int) -> None:
        super().__init__(
            f"{kind} '{name}' was changed by others at each of {attempts} tries to write it: nothing was written, "
            "try again"
        )
        self.kind, self.name = kind, name


class NotAsListed(PermanentError):
    """A set of objects to apply found one it writes not at the revision its change list was built on (another
    writer changed, created, deleted or renamed it meanwhile): nothing was written, not even the audit entries;
    the list is to be read and judged again, so that the answer and the audit say what is written."""

    def __init__(self, names: str) -> None:
        super().__init__(f"{names}: changed by another writer after the change list was read, nothing was written")
        self.names = names


class CatalogTimedOut(RetryableError):
    """A catalog read or write the database ended because it waited longer than a timeout set on it
    (``lock_timeout``, ``statement_timeout``: SQLSTATE 55P03, 57014), behind another transaction's lock as a rule:
    nothing was written. ``kind`` (and ``name``) say what was read or written, as far as the store knows it (None:
    not said); the message names no value and no SQL. Made in one place,
    :meth:`shared.catalog.database.CatalogDatabase.transaction`."""

    def __init__(self, kind: str | None, name: str | None, sqlstate: str) -> None:
        subject = f"{kind} '{name}'" if kind and name else (kind or "the catalog")
        super().__init__(
            f"{subject}: the catalog database timed out (SQLSTATE {sqlstate}: a lock or statement timeout set "
            "on it), nothing was written; try again"
        )
        self.kind, self.name, self.sqlstate = kind, name, sqlstate


class NameTaken(PermanentError):
    """A new catalog object's kind and name were taken by another writer after they were checked (nothing written)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} '{name}' exists already")
        self.kind, self.name = kind, name


class VersionMismatch(PermanentError):
    """A write conditional on the revision of a catalog object its writer read (``If-Match``) found the object at
    another version, or found that the revision is not one of the object under its name (``other_object``: the
    revision is another object's, or one of an object of this name since deleted; which, the catalog cannot tell):
    nothing was written. Says by
    whom and when, as far as the catalog knows it (read after the refused write rolled back: never the refused
    writer's own change). No object under the name at all is :class:`NotFound`, as without ``If-Match`` (a rename
    is audited under its new name: who and when would be guessed).

    What the caller needs to decide whether its writer may be told who and when (never part of the message):
    ``business_unit``, the stored definition's unit (None for the other kinds), and ``units``, the business units
    of the last audit entry of the object (the one naming ``by``). :meth:`anonymous` is the message without them."""

    def __init__(
        self,
        kind: str,
        name: str,
        *,
        version: int,
        by: str | None = None,
        at: datetime | None = None,
        other_object: bool = False,
        business_unit: str | None = None,
        units: tuple[str, ...] = (),
    ) -> None:
        who = "".join(
            (f" by {by}" if by else "", f" at {at.astimezone(UTC).isoformat(timespec='seconds')}" if at else "")
        )
        super().__init__(self._text(kind, name, version, other_object, f", last changed{who}" if who else ""))
        self.kind, self.name, self.version, self.other_object = kind, name, version, other_object
        self.by, self.at = by, at
        self.business_unit, self.units = business_unit, units

    @staticmethod
    def _text(kind: str, name: str, version: int, other_object: bool, last: str) -> str:
        if other_object:  # no more is known: a revision names its object by an id no other object is ever given
            return (
                f"{kind} '{name}' is not the object of the revision sent: that revision may be another object's, or "
                f"one of an object of this name since deleted (this one is at version {version}{last}): nothing was "
                "written; read it again and redo the change"
            )
        return (
            f"{kind} '{name}' was changed since it was read (it is now at version {version}{last}): nothing was "
            "written; read it again and redo the change"
        )

    def anonymous(self) -> str:
        """The message naming neither who nor when (for a writer who may not read that change in the audit log)."""
        return self._text(self.kind, self.name, self.version, self.other_object, "")


class ObjectInUse(PermanentError):
    """A catalog object to delete or rename is named by others (a template by its query's or profile's, a definition
    by its query's or template's): found by the store in the write's own transaction, after locking the object,
    so that no referrer saved meanwhile is missed (nothing was written).

    ``referrers``: (kind, name, business unit) of each, the unit a definition's (None for the other kinds): the
    caller names them as its actor may see them (never part of the message)."""

    def __init__(self, kind: str, name: str, referrers: tuple[tuple[str, str, str | None], ...]) -> None:
        super().__init__(f"{kind} '{name}' is used by {len(referrers)} object(s)")
        self.kind, self.name, self.referrers = kind, name, referrers


class ReferenceMissing(PermanentError):
    """Objects to write name an object that does not exist (deleted or renamed by another writer after the names
    were checked): found by the store in the write's own transaction (nothing was written); ``problems``, one line
    each, worded as the check before the write words them; ``missing``, the (kind, name) of each object not found."""

    def __init__(self, problems: list[str], missing: frozenset[tuple[str, str]] = frozenset()) -> None:
        super().__init__("; ".join(problems))
        self.problems, self.missing = problems, missing
