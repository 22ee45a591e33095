"""What the use cases need from the outside world, as Protocols; adapters in shared/catalog, shared/kafka,
shared/querystore implement them, and each composition root hands over only what its use cases use."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from shared.domain.attempts import CapturedAttempt
from shared.domain.audit import AuditEntry
from shared.domain.catalog_objects import CatalogObject, Priority, SavedQuery
from shared.domain.email_retries import EarlierSends, NotificationMark, RefusedRecipients
from shared.domain.fleet import BreakerChange, ReplicaBeat
from shared.domain.replay import ReplayPlan, ReplayPublication
from shared.domain.revisions import Revision
from shared.domain.runs import RunNotification, RunRecord, RunStatus, StartClaims
from shared.errors import VersionMismatch
from shared.events import AnyRunEvent, DeadLetter, RunRequested

T = TypeVar("T", bound=CatalogObject)
ApplyResult = Literal["created", "updated", "unchanged"]


class AuditLog(Protocol):
    """The audit log, read (entries are written by the definitions store with each change)."""

    def entries(
        self,
        *,
        readable: Callable[[AuditEntry], bool] = ...,
        name: str | None = None,
        kind: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AuditEntry]: ...
    def prune(self) -> int: ...


class AttemptsReader(Protocol):
    """The attempt inspector's captured attempts, read (the catalog's attempts store)."""

    def attempts(
        self,
        definition_id: uuid.UUID,
        *,
        profile: str | None = None,
        failed: bool | None = None,
        status: int | None = None,
        run_id: uuid.UUID | None = None,
        limit: int = 50,
    ) -> list[CapturedAttempt]: ...


class DefinitionsReader(Protocol):
    """Catalog objects by kind and name (:class:`shared.errors.NotFound` when missing): what services read."""

    def get(self, kind: type[T], name: str) -> T: ...


class RunsReader(Protocol):
    """Run records, read (a service checking for a cancellation)."""

    def get_run(self, run_id: uuid.UUID) -> RunRecord | None: ...


class RunUnitsReader(Protocol):
    """The business units runs are recorded in, many runs at once (a listing's scope)."""

    def business_units_of(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str | None]: ...


class DefinitionsStore(Protocol):
    """Profiles, templates, saved queries and export definitions, by kind and name."""

    def get(self, kind: type[T], name: str) -> T: ...
    def find(self, kind: type[T], name: str) -> T | None: ...
    def get_versioned(self, kind: type[T], name: str) -> tuple[uuid.UUID, int, T]: ...
    def list_objects(self, kind: type[T]) -> list[T]: ...
    def list_versioned(self, kind: type[T]) -> list[tuple[Revision, T]]: ...
    def referrers(self, kind: str, name: str) -> tuple[tuple[str, str, str | None], ...]: ...
    def names_taken(self, kind: type[CatalogObject], names: Collection[str]) -> set[str]: ...
    def chain_links(self, names: Collection[str]) -> dict[str, str]: ...
    def dependents(self, kind: str, name: str) -> tuple[tuple[str, str | None], ...]: ...
    def dependent_units(self, kind: str, name: str) -> tuple[str | None, ...]: ...
    def on_query(
        self, kind: type[CatalogObject], name: str, fields: Sequence[str] | None = None
    ) -> list[tuple[str, dict[str, Any]]]: ...
    def runs_using(self, kind: str, name: str) -> tuple[tuple[str, str, str | None], ...]: ...
    def apply(
        self,
        obj: CatalogObject,
        *,
        audit: Sequence[AuditEntry] = (),
        new: bool = False,
        expected_version: Revision | None = None,
        hold_references: bool = False,
    ) -> ApplyResult: ...
    def apply_versioned(
        self,
        obj: CatalogObject,
        *,
        audit: Sequence[AuditEntry] = (),
        new: bool = False,
        existing: bool = False,
        expected_version: Revision | None = None,
        hold_references: bool = False,
    ) -> tuple[ApplyResult, Revision]: ...
    def apply_all(
        self,
        objects: list[CatalogObject],
        *,
        audit: Sequence[AuditEntry] = (),
        hold_references: bool = False,
        read: Sequence[Revision | None] | None = None,
    ) -> list[ApplyResult]: ...
    def replace_if_version(
        self, obj: CatalogObject, version: int, *, audit: Sequence[AuditEntry] = (), paused_by: str | None = None
    ) -> bool: ...
    def schedule_paused_by(self, name: str) -> str | None: ...
    def schedules_not_computable(self, names: Sequence[str] | None = None) -> dict[str, str]: ...
    def rename(
        self,
        old_name: str,
        obj: CatalogObject,
        *,
        audit: Sequence[AuditEntry] = (),
        expected_version: Revision | None = None,
        hold_references: bool = False,
    ) -> Revision: ...
    def delete(
        self,
        kind: type[CatalogObject],
        name: str,
        *,
        audit: Sequence[AuditEntry] = (),
        expected_version: Revision | None = None,
    ) -> None: ...
    def changed_since_read(self, kind: str, name: str, *, read: Revision | None = None) -> VersionMismatch: ...


class RunsStore(Protocol):
    """Run records and the idempotency keys of run requests."""

    def get_run(self, run_id: uuid.UUID) -> RunRecord | None: ...
    def notifications_of(self, run_id: uuid.UUID) -> list[RunNotification]: ...
    def replays_of(self, run_id: uuid.UUID) -> list[RunRecord]: ...
    def business_units_of(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str | None]: ...
    def record_requested_run(self, record: RunRecord, *, replay_plan: ReplayPlan | None = None) -> bool: ...
    def replay_publication(self, run_id: uuid.UUID) -> ReplayPublication | None: ...
    def claim_replay_publication(self, run_id: uuid.UUID, claimant: str, lease_seconds: float) -> bool: ...
    def replay_step_acknowledged(self, run_id: uuid.UUID, claimant: str, step: int) -> bool: ...
    def release_replay_publication(self, run_id: uuid.UUID, claimant: str) -> None: ...
    def batches_with_outcomes(self, run_id: uuid.UUID) -> set[int]: ...
    def finishes_unhandled(self, run_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]: ...
    def claim_idempotency_key(self, caller: str, definition: str, key: str, run_id: uuid.UUID) -> uuid.UUID: ...
    def idempotency_key_run(self, caller: str, definition: str, key: str) -> uuid.UUID | None: ...
    def fold_run_event(self, event: AnyRunEvent) -> tuple[RunRecord | None, RunRecord]: ...
    def list_runs(
        self,
        definition: str | None = None,
        limit: int = 50,
        *,
        definition_id: uuid.UUID | None = None,
        business_units: frozenset[str] | None = None,
        definitions: list[str] | None = None,
        statuses: list[RunStatus] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
    ) -> list[RunRecord]: ...


class RunEventFold(Protocol):
    """Folds run events into run records (the runs store)."""

    def fold_run_event(
        self, event: AnyRunEvent, starts: StartClaims | None = None
    ) -> tuple[RunRecord | None, RunRecord]: ...
    def fold_run_events(
        self, events: Sequence[AnyRunEvent], starts: StartClaims | None = None
    ) -> dict[uuid.UUID, tuple[RunRecord | None, RunRecord]]:
        """A poll's events folded in one transaction: per run, its record before and after them (and ``starts``'
        notifications claimed for the runs it started)."""
        ...


class WatermarkStore(Protocol):
    """Incremental definitions' watermarks (the extraction store)."""

    def advance_watermark(self, run_id: uuid.UUID) -> bool: ...


class EventPublisher(Protocol):
    """Publishes events on their topics and returns once the broker has them (acks)."""

    def publish_run_request(self, request: RunRequested) -> None: ...
    def publish_run_events(self, events: Sequence[AnyRunEvent]) -> None: ...
    def publish_member_batches(self, priority: Priority, batches: Sequence[tuple[str, bytes]]) -> None:
        """Member-batch records as (key, value), on the topic of ``priority``."""
        ...


class ReadDeadLetters(list[DeadLetter]):
    """The dead letters a read gave, and how many records of their topic it could not read as one (a newer schema
    version, or bytes that are no dead letter), by the run they name when they name one (None: no run to say)."""

    def __init__(self, letters: Iterable[DeadLetter] = (), unreadable: Mapping[uuid.UUID | None, int] | None = None):
        super().__init__(letters)
        self.unreadable: dict[uuid.UUID | None, int] = dict(unreadable or {})


def unreadable_of(letters: Sequence[DeadLetter]) -> Mapping[uuid.UUID | None, int]:
    """The records a read could not read, by run (:class:`ReadDeadLetters`); none for a source that does not say."""
    return letters.unreadable if isinstance(letters, ReadDeadLetters) else {}


class DeadLetterSource(Protocol):
    """The dead letters recorded so far."""

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter (a :class:`ReadDeadLetters` to say how many records could not be read);
        :class:`shared.application.errors.DeadLettersUnreadable` when they cannot be read."""
        ...


@runtime_checkable
class VersionedDeadLetterSource(DeadLetterSource, Protocol):
    """The dead letters, and a version of what their topic holds (Kafka's: the topic's id, its partitions' first and
    end offsets) that changes whenever a dead letter is added or dropped: what the admin's listings are kept by."""

    def dead_letters_unless(
        self, known: Callable[[Hashable], bool], *, spent: float = 0.0
    ) -> tuple[Hashable | None, list[DeadLetter] | None]:
        """The version as of now and, unless ``known`` says the caller holds the dead letters of that version,
        every dead letter up to it (None when ``known``); no version (None, ``known`` not asked, every dead letter
        read) when the source cannot say one. ``spent``: the seconds an earlier read for the same answer took,
        taken from this read's bound (one bound for both, not one each). :class:`DeadLettersUnreadable` as
        :meth:`dead_letters`."""
        ...


class MemberPage(Protocol):
    """One page of members."""

    @property
    def members(self) -> list[dict[str, Any]]: ...


class MemberSource(Protocol):
    """The member store, read through saved queries (read only)."""

    def columns(self, query: SavedQuery) -> list[str]: ...
    def pages(
        self, query: SavedQuery, *, page_size: int, parameters: dict[str, Any] | None = None
    ) -> Iterator[MemberPage]: ...


class FleetHeartbeats(Protocol):
    """The dispatcher replicas' heartbeats (shares of the profiles' limits)."""

    def beat(self, replica_id: str, at: float, ttl: float, drained_view: str | None) -> list[ReplicaBeat]: ...
    def leave(self, replica_id: str) -> None: ...


class FleetBreakers(Protocol):
    """The breakers open at each dispatcher replica, and the fleet's changes to announce."""

    def report_breakers(
        self, replica_id: str, open_profiles: Iterable[str], at: float, ttl: float
    ) -> list[BreakerChange]: ...
    def mark_announced(self, changes: Iterable[BreakerChange]) -> None: ...
    def forget_breakers(self, replica_id: str) -> None: ...


class BreakerMailOutbox(Protocol):
    """The circuit breaker emails: claimed, marked sent or failed, the unsent ones listed for the sweep and claimed
    by it (a lease: keyed by profile, the change's ordinal and the definition)."""

    def claim(
        self,
        change: BreakerChange,
        definition: str,
        lease_seconds: float = 600.0,
        earlier: dict[tuple[str, int, str], EarlierSends] | None = None,
    ) -> bool: ...
    def mark(
        self,
        change: BreakerChange,
        definition: str,
        error: str | None = None,
        give_up: bool = False,
        undelivered: str | None = None,
        counted: bool = True,
        refused: RefusedRecipients | None = None,
        sent_when_spent: str | None = None,
    ) -> NotificationMark | None: ...
    def unsent(self, limit: int = 100) -> list[tuple[BreakerChange, str]]: ...
    def claim_unsent_notifications(
        self,
        keys: Sequence[tuple[str, int, str]],
        lease_seconds: float,
        earlier: dict[tuple[str, int, str], EarlierSends] | None = None,
    ) -> dict[tuple[str, int, str], datetime]: ...
    def renew_notification_claims(
        self, claims: Mapping[tuple[str, int, str], datetime], lease_seconds: float
    ) -> dict[tuple[str, int, str], datetime]: ...
    def release_notification_claims(self, claims: Mapping[tuple[str, int, str], datetime]) -> None: ...
