"""The definitions store: connection profiles, HTTP templates, saved queries and export definitions.

With a :class:`~shared.secrets_at_rest.SecretCipher`, literal secrets of connection profiles are
encrypted on every write and decrypted on every read (references stay readable: they are names);
without one they are stored in plain text, and a warning says so.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

import structlog
from pydantic import ValidationError
from sqlalchemy import JSON, ColumnElement, FromClause, Text, and_, column, delete, func, or_, select, true, type_coerce
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from shared.catalog.audit_store import write_entries
from shared.catalog.database import CatalogDatabase, aware, now
from shared.catalog.tables import (
    AuditRow,
    CatalogObjectRow,
    CatalogReferenceRow,
    ExtractionCheckpointRow,
    RunRow,
    ScheduleRow,
)
from shared.catalog.validated_objects import VALIDATED_OBJECTS, ValidatedObjects
from shared.domain.audit import AuditEntry
from shared.domain.catalog_objects import (
    CatalogObject,
    ConnectionProfile,
    ExportDefinition,
    HttpTemplate,
    RunObjects,
    SavedQuery,
    kind_of,
    missing_references,
    names_object,
    references,
    secret_fields,
    stored_form,
)
from shared.domain.checkpoints import RunSync
from shared.domain.revisions import Revision
from shared.domain.runs import RunStatus
from shared.domain.secret_references import is_reference
from shared.domain.stored_rows import DECRYPT_SECRET
from shared.errors import (
    WRITE_ATTEMPTS as WRITE_ATTEMPTS,  # re-exported: the bound of every write's tries
)
from shared.errors import (
    CatalogTimedOut,
    EditConflict,
    NameTaken,
    NotAsListed,
    NotFound,
    ObjectInUse,
    ReferenceMissing,
    StoredObjectInvalid,
    VersionMismatch,
)
from shared.secrets_at_rest import KEYS_VARIABLE, SecretCipher, SecretsUnreadable, no_key

T = TypeVar("T", bound=CatalogObject)
R = TypeVar("R")
ApplyResult = Literal["created", "updated", "unchanged"]
log = structlog.get_logger(__name__)

#: The kinds whose objects name others (:func:`~shared.domain.catalog_objects.references`); every kind is named
#: (a definition by the definitions that follow it).
REFERRING_KINDS: tuple[type[CatalogObject], ...] = (HttpTemplate, ExportDefinition)

#: The SQLSTATEs of a transaction PostgreSQL ended so that another could go on (a deadlock it detected, a
#: serialization failure): a race lost like the others, the whole transaction rolled back and done again.
ENDED_FOR_ANOTHER = frozenset({"40P01", "40001"})


class _NothingWritten(Exception):
    """Raised inside a write's transaction to roll back its audit entries: a retry found every object already as
    it was to be written (another writer made the same edit), so no change of this writer's is recorded."""

    def __init__(self, results: list[ApplyResult], revision: Revision | None = None) -> None:
        super().__init__("nothing written")
        self.results, self.revision = results, revision


class _NotAsRead(Exception):
    """Raised inside a conditional write's transaction when the object is not at the revision its writer read: the
    transaction (and the writer's audit entries with it) rolls back before :class:`VersionMismatch` is made from a
    fresh read, so that it describes the object as others left it, never this writer's own unsaved change."""


def _picked(session: Session, fields: Sequence[str]) -> tuple[ColumnElement[Any], FromClause | None]:
    """The top-level ``fields`` of a row's stored JSON as one JSON array (null for a field not stored), taken by the
    database, the text parsed once a row: SQLite's ``json_extract`` of many paths; PostgreSQL's ``json_to_record``
    (the FROM item to join it by; six ``->`` parse a ``json`` text six times, slower than reading it whole). Decoded
    once a row, a fraction of the whole JSON."""
    if session.get_bind().dialect.name == "postgresql":
        record = (
            func.json_to_record(CatalogObjectRow.spec)
            .table_valued(*(column(field, JSON) for field in fields))
            .render_derived(name="picked", with_types=True)
        )
        return type_coerce(func.json_build_array(*(record.c[field] for field in fields)), JSON), record
    if len(fields) == 1:  # json_extract of one path gives its value, not an array of it
        return type_coerce(func.json_array(func.json_extract(CatalogObjectRow.spec, f'$."{fields[0]}"')), JSON), None
    return type_coerce(func.json_extract(CatalogObjectRow.spec, *(f'$."{field}"' for field in fields)), JSON), None


class SqlDefinitionsStore:
    """Catalog objects by kind and name, each under a stable id and a version that grows with every change."""

    def __init__(
        self, database: CatalogDatabase, cipher: SecretCipher | None = None, *, validated: int = VALIDATED_OBJECTS
    ) -> None:
        self.database = database
        self.cipher = cipher
        self._context: dict[str, Any] = {DECRYPT_SECRET: cipher.decrypt if cipher is not None else no_key}
        self._warned_plain = False
        #: What :meth:`many_run_objects` validated, by row and version (``validated`` objects at most).
        self.validated = ValidatedObjects(validated)

    def _stored(self, obj: CatalogObject) -> dict[str, Any]:
        """``obj``'s stored form: literal secrets encrypted when there is a key, else in plain text (with a warning)."""
        if self.cipher is not None:
            return stored_form(obj, encrypt=self.cipher.encrypt)
        if not self._warned_plain and any(not is_reference(s.get_secret_value()) for _, s in secret_fields(obj)):
            self._warned_plain = True
            log.warning(f"{KEYS_VARIABLE} is not set: literal secrets of connection profiles are stored in plain text")
        return stored_form(obj)

    def _load(self, kind: type[T], row: CatalogObjectRow) -> T:
        """The object of ``row``, its secrets decrypted; :class:`SecretsUnreadable` naming it if they cannot be."""
        return self._validate(kind, row.kind, row.name, row.spec)

    def _validate(self, kind: type[T], row_kind: str, name: str, spec: Any) -> T:
        """The object of stored ``spec`` (row ``row_kind``/``name``): as :meth:`_load` says."""
        try:
            return cast(T, kind.model_validate(spec, context=self._context))
        except SecretsUnreadable as exc:
            raise SecretsUnreadable(f"{row_kind} '{name}': {exc}") from None
        except ValidationError as exc:
            # Saved by an older release whose rules were looser: said with its fields, never its values.
            problems = "; ".join(
                f"field '{'.'.join(str(part) for part in error['loc']) or 'spec'}': {error['msg']}"
                for error in exc.errors(include_url=False, include_input=False)
            )
            raise StoredObjectInvalid(
                f"{row_kind} '{name}' as stored breaks this release's rules ({problems}): apply it again, corrected"
            ) from None

    def _held(self, row: CatalogObjectRow, obj: CatalogObject) -> CatalogObject | None:
        """What ``row`` holds, as an object of ``obj``'s kind; None for a row today's rules refuse, or whose key is
        gone (``obj`` replaces it)."""
        try:
            return self._load(type(obj), row)
        except (StoredObjectInvalid, SecretsUnreadable):
            return None

    @staticmethod
    def _row(session: Session, kind: str, name: str) -> CatalogObjectRow | None:
        """The row of ``kind`` and ``name``, not locked: a write of it is conditional on the version read
        (``CatalogObjectRow``'s ``version_id_col``), a lost race raises ``StaleDataError`` at the flush."""
        return session.scalar(
            select(CatalogObjectRow).where(CatalogObjectRow.kind == kind, CatalogObjectRow.name == name)
        )

    def _lock_row(self, session: Session, kind: str, name: str) -> CatalogObjectRow | None:
        """The row of ``kind`` and ``name`` to delete or rename, locked until the transaction ends (PostgreSQL: ``FOR
        UPDATE``; SQLite: the database's write lock, taken first): a writer of an object naming it waits meanwhile
        (:meth:`_hold_references`)."""
        self.database.lock_for_writing(session)
        return session.scalar(
            select(CatalogObjectRow)
            .where(CatalogObjectRow.kind == kind, CatalogObjectRow.name == name)
            .with_for_update()
        )

    def _hold_references(
        self, session: Session, objects: Sequence[CatalogObject], *, written: Sequence[CatalogObject] = ()
    ) -> None:
        """:class:`ReferenceMissing` unless every object that ``objects`` name exists, or is one of ``written``
        (stored by the same transaction): read in the write's transaction, and on PostgreSQL held (``FOR KEY
        SHARE``) until it ends. A delete or rename of a named object locks it first (:meth:`_refuse_in_use`): it
        waits for this write, then finds this object naming it; or this write waits for it, then finds it gone
        (or under another name). On SQLite the write holds the database's write lock from this read on
        (:meth:`~shared.catalog.database.CatalogDatabase.lock_for_writing`). An update of a named object (its
        name kept) does not wait.

        Called before the write stores any row (as a delete or rename locks its row before it writes): a write
        holding a new row's name (its unique key) while waiting here for a rename holding the named row, which
        waits for that name, would be a deadlock."""
        declared = {(kind_of(obj), obj.name) for obj in written}
        wanted = {(kind.__name__, name) for obj in objects for kind, name, _ in references(obj)} - declared
        if not wanted:
            return
        self.database.lock_for_writing(session)
        matching = or_(*(and_(CatalogObjectRow.kind == kind, CatalogObjectRow.name == name) for kind, name in wanted))
        # ``read=True`` too: ``key_share`` alone is ``FOR NO KEY UPDATE`` (SQLAlchemy), which an edit of the named
        # object, and another write naming it, would wait for (and a deadlock of two such writes was possible).
        query = (
            select(CatalogObjectRow.kind, CatalogObjectRow.name)
            .where(matching)
            .with_for_update(read=True, key_share=True)
        )
        found = {(kind, name) for kind, name in session.execute(query)} | declared
        problems = [
            line
            for obj in objects
            for line in missing_references(obj, lambda kind, name: (kind.__name__, name) in found)
        ]
        if problems:
            raise ReferenceMissing(problems, frozenset(wanted - found))

    def _refuse_in_use(self, session: Session, row: CatalogObjectRow) -> None:
        """:class:`ObjectInUse` if any object names the object of ``row``, which is to be deleted or renamed and
        must be locked already (:meth:`_lock_row`): the objects read after the lock, so none a writer stored
        (or is storing: it waits, :meth:`_hold_references`) is missed."""
        if referrers := self._referrers(session, row.kind, row.name):
            raise ObjectInUse(row.kind, row.name, referrers)

    def _referrers(self, session: Session, kind: str, name: str) -> tuple[tuple[str, str, str | None], ...]:
        """The objects naming the object of ``kind`` and ``name``, as (kind, name, a definition's business unit),
        sorted: found by their references (:class:`CatalogReferenceRow`, one indexed query), only those read. Objects
        invalid as stored are not read (as runs do not read them)."""
        named = select(CatalogReferenceRow.referrer_id).where(
            CatalogReferenceRow.kind == kind, CatalogReferenceRow.name == name
        )
        return tuple(
            sorted(
                (referring.__name__, other.name, other.business_unit if isinstance(other, ExportDefinition) else None)
                for referring in REFERRING_KINDS
                for _name, other in self._validated_many(session, referring, CatalogObjectRow.id.in_(named)).values()
                if names_object(other, kind, name)
            )
        )

    def referrers(self, kind: str, name: str) -> tuple[tuple[str, str, str | None], ...]:
        """The objects naming the object of ``kind`` (its class name) and ``name`` (which may therefore not be deleted
        or renamed), as (kind, name, a definition's business unit): the check before such a write, which names them;
        the write checks again in its transaction (:class:`ObjectInUse`)."""
        with self.database.transaction(kind, name) as session:
            return self._referrers(session, kind, name)

    def runs_using(self, kind: str, name: str) -> tuple[tuple[str, str, str | None], ...]:
        """The runs not finished yet (queued, extracting or dispatching, as their records say) that use the object of
        ``kind`` (its class name) and ``name`` by name whatever the catalog says now, as (run id, definition, business
        unit), sorted: a run's templates, fixed in its checkpoint at its first start (a change run's
        :attr:`~shared.domain.checkpoints.RunSync.kind_templates`, a full or incremental run's
        :attr:`~shared.domain.checkpoints.RunSync.template`), which its resume, its ranges, its retries and its
        batches' delivery read by name. Only the unfinished runs' checkpoints are read (the runs' status is
        indexed)."""
        if kind != HttpTemplate.__name__:
            return ()
        unfinished = [status.value for status in RunStatus if not status.is_final]
        with self.database.transaction(kind, name) as session:
            rows = session.execute(
                select(RunRow.run_id, RunRow.definition, RunRow.business_unit, ExtractionCheckpointRow.sync)
                .join(ExtractionCheckpointRow, ExtractionCheckpointRow.run_id == RunRow.run_id)
                .where(RunRow.status.in_(unfinished))
            ).all()
        return tuple(
            sorted(
                (run_id, definition, business_unit)
                for run_id, definition, business_unit, stored in rows
                if (sync := RunSync.of_json(stored)) is not None
                and (name == sync.template or name in (sync.kind_templates or {}).values())
            )
        )

    def dependents(self, kind: str, name: str) -> tuple[tuple[str, str | None], ...]:
        """The definitions that use the object of ``kind`` (its class name) and ``name``, as (name, business unit),
        sorted: a definition itself; a template, the definitions that name it (``template``, or a change-mode kind's
        ``sync.added``/``changed``/``removed``); a query, those whose query it is or whose templates'; a profile,
        those whose templates' it is. What a scoped token must cover to change the object. Found by their
        references (:class:`CatalogReferenceRow`, indexed) and read as stored (their JSON: nothing validated, no
        secret decrypted), only those, and of each only its business unit (by the database's JSON path): one
        another release stored that today's rules refuse counts as any other."""
        with self.database.transaction(kind, name) as session:
            if kind == ExportDefinition.__name__:
                row = self._row(session, kind, name)
                return () if row is None else ((name, _business_unit(row)),)
            found = self._referring(session, ExportDefinition, self._using(session, kind, name), [_BUSINESS_UNIT])
            return tuple(sorted((definition, _unit(spec)) for definition, spec in found))

    def dependent_units(self, kind: str, name: str) -> tuple[str | None, ...]:
        """The business units of :meth:`dependents`, distinct and sorted (None, first, for a definition whose stored
        unit is absent or not a string): the units an audit entry of the object touches. One ``SELECT DISTINCT`` of
        the definitions' stored units (the JSON text of each one's ``business_unit``, decoded here): a handful of
        rows whatever the definitions, no name and nothing else of them read (a query's save with 10,000 definitions
        on it spent 0.4 s reading each whole for its audit entry)."""
        with self.database.transaction(kind, name) as session:
            if kind == ExportDefinition.__name__:
                row = self._row(session, kind, name)
                return () if row is None else (_business_unit(row),)
            where = _referring_where(ExportDefinition, self._using(session, kind, name))
            if where is None:
                return ()
            # The unit's JSON text (SQLite's json_quote(json_extract(..)), PostgreSQL's (spec -> ..)::text; null or
            # absent: 'null' or NULL): a string, a number and a list of the same characters stay apart.
            stored = sql_cast(CatalogObjectRow.spec[_BUSINESS_UNIT], Text)
            texts = session.execute(select(stored).where(*where).distinct()).scalars()
            units = {_unit({_BUSINESS_UNIT: json.loads(text)}) if text is not None else None for text in texts}
        return tuple(sorted(units, key=lambda unit: (unit is not None, unit or "")))

    def _using(self, session: Session, kind: str, name: str) -> dict[str, set[str]]:
        """What the definitions using the object of ``kind`` (not a definition) and ``name`` name of it, by kind
        (:meth:`dependents`): a template, itself; a query, itself and the templates on it; a profile, the templates
        on it. Each definition naming one of them (its references say so, by kind) uses the object: its template, a
        sync kind's template, or (a query) the query itself."""
        templates = {name} if kind == HttpTemplate.__name__ else set()
        field = {SavedQuery.__name__: "query", ConnectionProfile.__name__: "profile"}.get(kind)
        if field is not None:
            templates |= {
                template
                for template, spec in self._referring(session, HttpTemplate, {kind: {name}}, [field])
                if spec.get(field) == name
            }
        return {HttpTemplate.__name__: templates} | ({kind: {name}} if kind == SavedQuery.__name__ else {})

    def on_query(
        self, kind: type[CatalogObject], name: str, fields: Sequence[str] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """The stored objects of ``kind`` (templates, definitions) whose query is ``name``, as (name, stored JSON), by
        name: found by their references (:class:`CatalogReferenceRow`, one indexed query), nothing validated or
        decrypted. ``fields``: only those top-level fields of each read (by the database's JSON path: a field not
        stored is absent), not the whole JSON. What a save of the query checks they still fit
        (:mod:`shared.application.query_checks`)."""
        read = None if fields is None else ["query", *(field for field in fields if field != "query")]
        with self.database.transaction(SavedQuery.__name__, name) as session:
            found = self._referring(session, kind, {SavedQuery.__name__: {name}}, read)
        return sorted(((n, spec) for n, spec in found if spec.get("query") == name), key=lambda one: one[0])

    @staticmethod
    def _referring(
        session: Session,
        referring: type[CatalogObject],
        named: Mapping[str, set[str]],
        fields: Sequence[str] | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """The objects of kind ``referring`` that name any of ``named`` (names by kind), as (name, stored JSON), by
        their references (:class:`CatalogReferenceRow`): nothing else read, nothing validated. ``fields``: only those
        top-level fields of the JSON read (:func:`_picked`: SQLite's ``json_extract``, PostgreSQL's
        ``json_to_record``): a field the row does not store (or stores as null) is left out."""
        where = _referring_where(referring, named)
        if where is None:
            return []
        if fields is None:
            rows = session.execute(select(CatalogObjectRow.name, CatalogObjectRow.spec).where(*where))
            return [(row_name, spec if isinstance(spec, dict) else {}) for row_name, spec in rows]
        read = list(fields)
        picked, record = _picked(session, read)
        chosen = select(CatalogObjectRow.name, picked)
        if record is not None:
            chosen = chosen.select_from(CatalogObjectRow).join(record, true())
        rows = session.execute(chosen.where(*where))
        return [
            (row_name, {f: value for f, value in zip(read, values, strict=True) if value is not None})
            for row_name, values in rows
        ]

    @staticmethod
    def _name_references(
        session: Session, row_id: str, obj: CatalogObject | None, *, had: CatalogObject | None = None, new: bool = False
    ) -> None:
        """Store what ``obj`` names (:func:`references`) as row ``row_id``'s references, in place of those it had
        (``obj`` None: the row is deleted). ``new``: a row this write creates (it had none); ``had``: the object the
        row held, whose references are kept when they are the same (nothing written). Else the row's own write is
        flushed first (by the delete's autoflush): a writer that lost the race to the row waits for it there (and
        loses it: ``StaleDataError``) before it touches the references."""
        named = _named(obj)
        if had is not None and _named(had) == named:
            return
        if not new:
            session.execute(delete(CatalogReferenceRow).where(CatalogReferenceRow.referrer_id == row_id))
        session.add_all(CatalogReferenceRow(referrer_id=row_id, kind=kind, name=name) for kind, name in sorted(named))

    def _retried(self, write: Callable[[], R], kind: str, name: str, *, created: bool = False) -> R:
        """``write`` (one transaction) done again on a fresh read while another write wins the race to its row
        (``created``: also to create it, the name's unique key taken meanwhile); :class:`EditConflict` after
        :data:`WRITE_ATTEMPTS` lost races. Each try is judged afresh: created, updated or unchanged."""
        lost: tuple[type[Exception], ...] = (StaleDataError, IntegrityError) if created else (StaleDataError,)
        return self._redone(write, kind, name, lost)

    @staticmethod
    def _redone(write: Callable[[], R], kind: str, name: str, lost: tuple[type[Exception], ...]) -> R:
        """``write`` done again while it raises one of ``lost`` or PostgreSQL ends its transaction for another's
        (:data:`ENDED_FOR_ANOTHER`: a deadlock, whatever interleaving led to it, is never an error of the write);
        :class:`EditConflict` after :data:`WRITE_ATTEMPTS` tries. Ended for a timeout
        (:data:`~shared.catalog.database.TIMED_OUT`): :class:`CatalogTimedOut` naming the object written, not done
        again (the operator's timeout bounds the wait)."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return write()
            except lost:
                log.info("catalog write lost a race, read again", kind=kind, name=name, attempt=attempt)
            except CatalogTimedOut as exc:  # told by the transaction, which does not know the object
                raise CatalogTimedOut(kind, name, exc.sqlstate) from None
            except DBAPIError as exc:
                state = getattr(exc.orig, "sqlstate", None)
                if state not in ENDED_FOR_ANOTHER:
                    raise
                log.info(
                    "catalog write ended by the database for another, done again",
                    kind=kind,
                    name=name,
                    attempt=attempt,
                    sqlstate=state,
                )
        raise EditConflict(kind, name, WRITE_ATTEMPTS)

    def _conditional(self, write: Callable[[], R], kind: str, name: str, expected_version: Revision | None) -> R:
        """``write`` as :meth:`_retried` does it, or, with ``expected_version`` (the writer's ``If-Match``), once:
        its write is conditional on that revision (:meth:`_require_version`, then ``WHERE version = …``), and a lost
        race is :class:`VersionMismatch` (made after the rollback), never a retry on a fresh read (the writer did not
        see that read; a transaction PostgreSQL ended for another's is done again, as :meth:`_redone` says: its
        write is conditional on the same revision)."""
        if expected_version is None:
            return self._retried(write, kind, name)
        try:
            return self._redone(write, kind, name, ())
        except (StaleDataError, _NotAsRead):
            raise self.changed_since_read(kind, name, read=expected_version) from None

    def _require_version(
        self,
        session: Session,
        row: CatalogObjectRow | None,
        kind: str,
        name: str,
        expected_version: Revision | None,
    ) -> None:
        """:class:`_NotAsRead` (:class:`VersionMismatch` once rolled back, see :meth:`_conditional`) unless ``row``
        (of ``kind`` and ``name``) is the very object at the revision ``expected_version`` (if given): its id and its
        version (an object deleted and created again under the name has another id).

        ``row`` must be the very object the write then changes: the session's identity map holds rows weakly, so a
        row read here and dropped would be read afresh by the write, another writer's commit in between included,
        and the ``UPDATE … WHERE version = …`` would be conditional on that version instead of the expected one."""
        if expected_version is None:
            return
        if row is None or _revision(row) != expected_version:
            raise _NotAsRead

    def _mismatch(self, session: Session, kind: str, name: str, read: Revision | None = None) -> VersionMismatch:
        """What became of the object (its version now, or another object under its name than the one ``read``)
        and, as the audit log says, by whom and when; :class:`NotFound` when there is no object under the name
        (deleted, or renamed: a rename is audited under its new name, so who and when are not guessed)."""
        row = self._row(session, kind, name)
        if row is None:
            raise NotFound(kind, name)
        last = session.execute(
            select(AuditRow.actor, AuditRow.business_units)
            .where(AuditRow.kind == kind, AuditRow.name == name)
            .order_by(AuditRow.id.desc())
            .limit(1)
        ).first()
        return VersionMismatch(
            kind,
            name,
            version=row.version,
            by=last.actor if last else None,
            at=aware(row.updated_at),
            other_object=read is not None and uuid.UUID(row.id) != read.object_id,
            # What the caller's scope checks need, read as stored: nothing validated, no secret decrypted.
            business_unit=_business_unit(row) if kind == ExportDefinition.__name__ else None,
            units=tuple(last.business_units or ()) if last else (),
        )

    def changed_since_read(self, kind: str, name: str, *, read: Revision | None = None) -> VersionMismatch:
        """The error of a write whose ``If-Match`` revision of ``kind``/``name`` (``read``, if one) is no longer
        stored (412), from a fresh read; :class:`NotFound` (404, as without ``If-Match``) when no object is under
        the name any more."""
        with self.database.transaction(kind, name) as session:
            return self._mismatch(session, kind, name, read)

    def _write(
        self,
        session: Session,
        obj: CatalogObject,
        *,
        row: CatalogObjectRow | None,
        create: bool = True,
        actors: Mapping[tuple[str, str], str] | None = None,
    ) -> tuple[ApplyResult, Revision]:
        """Create (unless not ``create``: :class:`NotFound`) or update ``obj``'s row, ``row`` as the write's
        transaction read it (:meth:`_row`, None: none under its name), the very object whose version the update is
        conditional on (see :meth:`_require_version`); what was done and the row's revision as it is then. A
        definition's schedule disabled by it (created disabled, a copy too) is recorded as paused by the actor of its
        audit entry (``actors``: the write's, :func:`_actors`; :func:`_record_pause`)."""
        spec = self._stored(obj)
        pauser = (actors or {}).get((kind_of(obj), obj.name))
        if row is None:
            if not create:
                raise NotFound(kind_of(obj), obj.name)
            moment, row_id = now(), uuid.uuid4()
            session.add(
                CatalogObjectRow(
                    id=str(row_id),
                    kind=kind_of(obj),
                    name=obj.name,
                    spec=spec,
                    version=1,
                    created_at=moment,
                    updated_at=moment,
                    schedule_paused_by=pauser if _disabled(obj) else None,
                )
            )
            self._name_references(session, str(row_id), obj, new=True)
            return "created", Revision(row_id, 1)
        held = self._held(row, obj)
        if held is not None and stored_form(held) == stored_form(obj):  # compared in plain text: encryptions differ
            return "unchanged", _revision(row)
        _record_pause(row, obj, pauser)
        row.spec, row.version, row.updated_at = spec, row.version + 1, now()
        self._name_references(session, row.id, obj, had=held)
        return "updated", _revision(row)

    def apply(
        self,
        obj: CatalogObject,
        *,
        audit: Sequence[AuditEntry] = (),
        new: bool = False,
        expected_version: Revision | None = None,
        hold_references: bool = False,
    ) -> ApplyResult:
        """Create or update an object by kind and name; say which (or that nothing changed): as
        :meth:`apply_versioned`, without the revision."""
        return self.apply_versioned(
            obj, audit=audit, new=new, expected_version=expected_version, hold_references=hold_references
        )[0]

    def apply_versioned(
        self,
        obj: CatalogObject,
        *,
        audit: Sequence[AuditEntry] = (),
        new: bool = False,
        existing: bool = False,
        expected_version: Revision | None = None,
        hold_references: bool = False,
    ) -> tuple[ApplyResult, Revision]:
        """Create or update an object by kind and name; say which (or that nothing changed), and the revision this
        write stored (or, unchanged, found): the ``ETag`` of its answer, with no second read that could see a later
        writer's revision.

        ``audit`` entries are written in the same transaction: a change is recorded, or not made. An edit of
        the object by another writer between this one's read and its write is never overwritten unseen: this
        one is read and judged again (:meth:`_retried`), the last one stored wins, as with one writer after
        the other. Another writer creating the object first is not retried (``IntegrityError`` on its name):
        the creates of the application layer (create, copy) must not take over an object created meanwhile:
        with ``new``, an object of that kind and name stored by then (or at once) is :class:`NameTaken`.
        With ``expected_version`` (the revision the writer read), the object is updated only if stored at that
        revision, in one step, tried once: changed or created again meanwhile is :class:`VersionMismatch`, gone is
        :class:`NotFound`. With ``existing`` (the updates of the application layer: replace, a definition's step),
        only the stored object is updated: none under the name (deleted meanwhile) is :class:`NotFound`, never
        created again. With ``hold_references`` (every write of the application layer), an object ``obj`` names
        that does not exist (deleted or renamed since it was checked), as found in this transaction:
        :class:`ReferenceMissing` (:meth:`_hold_references`), nothing written; without, the store writes what it
        is given (a test's catalog as it needs it).
        """

        def write() -> tuple[ApplyResult, Revision]:
            try:
                with self.database.transaction() as session:
                    write_entries(session, audit)
                    if hold_references:  # before any row is written: see _hold_references
                        self._hold_references(session, [obj])
                    # Read once: checked, then written (the UPDATE's WHERE has the version checked here).
                    row = self._row(session, kind_of(obj), obj.name)
                    if new and row is not None:
                        raise NameTaken(kind_of(obj), obj.name)
                    self._require_version(session, row, kind_of(obj), obj.name, expected_version)
                    result, revision = self._write(session, obj, row=row, create=not existing, actors=_actors(audit))
                    if audit and result == "unchanged":
                        raise _NothingWritten([result], revision)  # the audit entries roll back with it
                    return result, revision
            except _NothingWritten as nothing:
                return "unchanged", cast(Revision, nothing.revision)  # an apply's carries it

        try:
            return self._conditional(write, kind_of(obj), obj.name, expected_version)
        except IntegrityError:
            if new:  # created by another writer between this one's read and its insert
                raise NameTaken(kind_of(obj), obj.name) from None
            raise

    def apply_all(
        self,
        objects: list[CatalogObject],
        *,
        audit: Sequence[AuditEntry] = (),
        hold_references: bool = False,
        read: Sequence[Revision | None] | None = None,
    ) -> list[ApplyResult]:
        """Create or update several objects in one transaction: all of them are written (and audited), or none
        (a lost race to any of them, including another writer creating one first: all read and judged again,
        as :meth:`apply` says; a manifest says what the objects are, whoever wrote them before). With
        ``hold_references``, an object named by one of them that does not exist and is not one of them:
        :class:`ReferenceMissing`, none written. With ``read`` (for each object, the revision its writer's change
        list and audit entries were built on, ``None``: no object under its name), an object found at another
        revision in the write's transaction (at any try): :class:`NotAsListed`, none written, its audit rolled
        back (the writer judges the set again: its answer and audit must say what is written)."""

        def write() -> list[ApplyResult]:
            try:
                with self.database.transaction() as session:
                    write_entries(session, audit)
                    if hold_references:  # before any row is written: see _hold_references
                        self._hold_references(session, objects, written=objects)
                    results, actors = [], _actors(audit)  # by kind and name, once: not a scan per object
                    for index, obj in enumerate(objects):
                        row = self._row(session, kind_of(obj), obj.name)  # read once: checked, then written
                        if read is not None and (None if row is None else _revision(row)) != read[index]:
                            raise _NotAsRead
                        results.append(self._write(session, obj, row=row, actors=actors)[0])
                    if audit and all(result == "unchanged" for result in results):
                        raise _NothingWritten(results)  # the audit entries roll back with it
                    return results
            except _NothingWritten as nothing:
                return nothing.results

        names = ", ".join(obj.name for obj in objects)
        try:
            return self._retried(write, ", ".join(sorted({kind_of(obj) for obj in objects})), names, created=True)
        except _NotAsRead:
            raise NotAsListed(names) from None

    def get(self, kind: type[T], name: str) -> T:
        return self.get_versioned(kind, name)[2]

    def find(self, kind: type[T], name: str) -> T | None:
        """The object, or None when there is none of that kind and name."""
        try:
            return self.get(kind, name)
        except NotFound:
            return None

    def get_with_id(self, kind: type[T], name: str) -> tuple[uuid.UUID, T]:
        """An object and its stable id (ids survive updates; deterministic run ids use them)."""
        id_, _, obj = self.get_versioned(kind, name)
        return id_, obj

    def find_by_id(self, kind: type[T], object_id: uuid.UUID) -> T | None:
        """The object of that kind with that stable id, whatever its name now (None: deleted, or never was).

        The extractor judges a scheduled run published ahead against its definition by id: a definition renamed
        since is still that definition, and one deleted and created again under the same name is not."""
        with self.database.transaction(kind.__name__) as session:
            row = session.get(CatalogObjectRow, str(object_id))
            return self._load(kind, row) if row is not None and row.kind == kind.__name__ else None

    def run_objects(self, *, name: str | None = None, definition_id: uuid.UUID | None = None) -> RunObjects | None:
        """An export definition (by ``name``, or by stable ``definition_id``) with its saved query and HTTP
        template, read in one transaction (a run's start reads all three).

        The definition as :meth:`get` (:class:`NotFound`, :class:`StoredObjectInvalid`) and :meth:`find_by_id`
        (None) read it; the query's or template's problem (not found, invalid as stored) is kept in
        ``missing``, worded as :meth:`get` words it, for the run to fail with once it knows it runs."""
        assert (name is None) != (definition_id is None), "by name or by id"
        with self.database.transaction(ExportDefinition.__name__, name) as session:
            if definition_id is not None:
                row = session.get(CatalogObjectRow, str(definition_id))
                if row is None or row.kind != ExportDefinition.__name__:
                    return None
            else:
                assert name is not None
                row = self._row(session, ExportDefinition.__name__, name)
                if row is None:
                    raise NotFound(ExportDefinition.__name__, name)
            definition = self._load(ExportDefinition, row)
            try:
                query = self._named(session, SavedQuery, definition.query)
                template = self._named(session, HttpTemplate, definition.template)
            except (NotFound, StoredObjectInvalid) as exc:
                return RunObjects(definition, missing=str(exc))
            return RunObjects(definition, query, template)

    def many_run_objects(
        self, *, names: Sequence[str] = (), definition_ids: Sequence[uuid.UUID] = ()
    ) -> tuple[dict[str, RunObjects], dict[uuid.UUID, RunObjects]]:
        """The run objects of many definitions (a burst's runs) in one transaction (the definitions by name and by
        id, then their queries, then their templates: each read once): by name, and by id. Only the complete
        ones: a definition not found, or whose objects are missing or invalid as stored, is left out (the
        one-by-one read, :meth:`run_objects`, says why for the run that needs it).

        Every row is read (its version with it), but validated only when :attr:`validated` does not hold it at
        that version (issue 18: validating is a good part of a burst's start); a scheduled burst's definitions
        read ahead of its instant (:meth:`services.extractor.bulk_starts.BulkStarts.prepare`) are then only
        read at the instant."""
        with self.database.transaction(ExportDefinition.__name__) as session:
            definitions: dict[str, tuple[str, ExportDefinition]] = {}
            if names:
                definitions |= self._validated_many(session, ExportDefinition, CatalogObjectRow.name.in_(set(names)))
            if definition_ids:
                by_ids = CatalogObjectRow.id.in_({str(i) for i in definition_ids})
                definitions |= self._validated_many(session, ExportDefinition, by_ids)
            queries = self._loaded_many(session, SavedQuery, {d.query for _, d in definitions.values()})
            templates = self._loaded_many(session, HttpTemplate, {d.template for _, d in definitions.values()})
            by_name: dict[str, RunObjects] = {}
            by_id: dict[uuid.UUID, RunObjects] = {}
            for row_id, (_name, definition) in definitions.items():
                query, template = queries.get(definition.query), templates.get(definition.template)
                if query is None or template is None:
                    continue
                objects = RunObjects(definition, query, template)
                by_name[definition.name] = objects
                by_id[uuid.UUID(row_id)] = objects
            return by_name, by_id

    def _loaded_many(self, session: Session, kind: type[T], names: set[str]) -> dict[str, T]:
        """The objects of ``kind`` named ``names`` that are found and valid as stored, by name."""
        if not names:
            return {}
        return {
            name: obj for name, obj in self._validated_many(session, kind, CatalogObjectRow.name.in_(names)).values()
        }

    def _validated_many(self, session: Session, kind: type[T], where: ColumnElement[bool]) -> dict[str, tuple[str, T]]:
        """The objects of ``kind`` whose rows match ``where`` and are valid as stored, by row id (with the row's
        name): each validated from its stored spec unless :attr:`validated` holds it at the row's version and with
        the same stored text (the spec, read as text, is then not even decoded)."""
        rows = session.execute(
            select(
                CatalogObjectRow.id,
                CatalogObjectRow.name,
                CatalogObjectRow.version,
                sql_cast(CatalogObjectRow.spec, Text),
            ).where(CatalogObjectRow.kind == kind.__name__, where)
        )
        loaded: dict[str, tuple[str, T]] = {}
        for row_id, name, version, spec in rows:
            kept = self.validated.get(kind.__name__, row_id, version, spec)
            if kept is not None:
                loaded[row_id] = (name, cast(T, kept))
                continue
            try:
                obj = self._validate(kind, kind.__name__, name, json.loads(spec))
            except (StoredObjectInvalid, SecretsUnreadable):
                continue
            self.validated.put(kind.__name__, row_id, version, spec, obj)
            loaded[row_id] = (name, obj)
        return loaded

    def _named(self, session: Session, kind: type[T], name: str) -> T:
        row = self._row(session, kind.__name__, name)
        if row is None:
            raise NotFound(kind.__name__, name)
        return self._load(kind, row)

    def get_versioned(self, kind: type[T], name: str) -> tuple[uuid.UUID, int, T]:
        """An object with its id and version (for a compare-and-set update)."""
        with self.database.transaction(kind.__name__, name) as session:
            row = self._row(session, kind.__name__, name)
            if row is None:
                raise NotFound(kind.__name__, name)
            return uuid.UUID(row.id), row.version, self._load(kind, row)

    def replace_if_version(
        self, obj: CatalogObject, version: int, *, audit: Sequence[AuditEntry] = (), paused_by: str | None = None
    ) -> bool:
        """Store ``obj`` only if its stored version is still ``version`` (compare and set); True when stored.
        A definition's schedule it disables is recorded as paused by ``paused_by`` (None: the actor of its
        ``audit`` entry), in the same transaction.

        The write itself is conditional on ``version``: of two updates from one version at once, one is stored
        and the other answers False (never both)."""
        try:
            with self.database.transaction(kind_of(obj), obj.name) as session:
                row = self._row(session, kind_of(obj), obj.name)
                if row is None or row.version != version:
                    return False
                write_entries(session, audit)
                _record_pause(row, obj, paused_by or _actor_of(obj, audit))
                row.spec, row.version, row.updated_at = self._stored(obj), row.version + 1, now()
                self._name_references(session, row.id, obj)
                return True
        except StaleDataError:  # another update stored since the read: this one lost
            return False

    def schedule_paused_by(self, name: str) -> str | None:
        """Who disabled definition ``name``'s schedule (:attr:`CatalogObjectRow.schedule_paused_by`): None while it
        is enabled, when not known (disabled before migration 0016, created disabled) and for no such definition."""
        with self.database.transaction(ExportDefinition.__name__, name) as session:
            return session.scalar(
                select(CatalogObjectRow.schedule_paused_by).where(
                    CatalogObjectRow.kind == ExportDefinition.__name__, CatalogObjectRow.name == name
                )
            )

    def schedules_not_computable(self, names: Sequence[str] | None = None) -> dict[str, str]:
        """The definitions (of ``names``, or all) whose fire times the scheduler could not compute, as they are now,
        each with the error's type (:attr:`ScheduleRow.not_computable`): they are not fired until edited."""
        objects, states = CatalogObjectRow.__table__.c, ScheduleRow.__table__.c
        query = (
            select(objects.name, states.not_computable)
            .join_from(CatalogObjectRow.__table__, ScheduleRow.__table__, states.definition_id == objects.id)
            .where(objects.kind == ExportDefinition.__name__, states.definition_version == objects.version)
            .where(states.not_computable.is_not(None))
        )
        if names is not None:
            query = query.where(objects.name.in_(list(names)))
        with self.database.connect(ExportDefinition.__name__) as connection:
            return {name: error for name, error in connection.execute(query).all()}

    def list_objects(self, kind: type[T]) -> list[T]:
        return [obj for _, obj in self.list_versioned(kind)]

    def list_versioned(self, kind: type[T]) -> list[tuple[Revision, T]]:
        """Every object of ``kind`` by name, each with its revision (one read: a list's links carry them)."""
        with self.database.transaction(kind.__name__) as session:
            rows = session.scalars(
                select(CatalogObjectRow).where(CatalogObjectRow.kind == kind.__name__).order_by(CatalogObjectRow.name)
            )
            return [(_revision(row), self._load(kind, row)) for row in rows]

    def names_taken(self, kind: type[CatalogObject], names: Collection[str]) -> set[str]:
        """Which of ``names`` an object of ``kind`` holds: looked up by the catalog's unique key (kind, name), nothing
        else read (a name derived from a label, :func:`shared.application.objects.unique_name`)."""
        if not names:
            return set()
        with self.database.connect(kind.__name__) as connection:
            objects = CatalogObjectRow.__table__.c
            query = select(objects.name).where(objects.kind == kind.__name__, objects.name.in_(set(names)))
            return set(connection.scalars(query))

    def chain_links(self, names: Collection[str]) -> dict[str, str]:
        """The stored definitions reached from the definitions ``names`` by following ``schedule.after``, each with the
        definition it follows: ``names``' own links, then theirs, and so on (one recursive query on the references,
        :class:`CatalogReferenceRow`, looked up by key at each step: no definition read or validated). What a save
        checks for chains that loop (:func:`shared.application.chain_checks.chain_problems`). A chain that loops as
        stored ends where a definition is reached again."""
        if not names:
            return {}
        definition = ExportDefinition.__name__
        objects, named = CatalogObjectRow.__table__, CatalogReferenceRow.__table__

        def links(reached: Any, *, followed_only: bool = False) -> Any:
            """(a definition of ``reached``, a CTE of names, the definition it follows), for each that follows one;
            ``followed_only``: only the definition followed."""
            row, link = objects.alias(), named.alias()
            return (
                select(*(() if followed_only else (row.c.name,)), link.c.name)
                .select_from(reached)
                .join(row, and_(row.c.kind == definition, row.c.name == reached.c.name))
                .join(link, and_(link.c.referrer_id == row.c.id, link.c.kind == definition))
            )

        reached = select(objects.c.name).where(objects.c.kind == definition, objects.c.name.in_(set(names)))
        reached_cte = reached.cte("reached", recursive=True)
        # UNION, not UNION ALL: a name reached again adds no row, so a loop stored (an older release's) ends.
        reached_cte = reached_cte.union(links(reached_cte, followed_only=True))
        with self.database.connect(definition) as connection:
            return {name: follows for name, follows in connection.execute(links(reached_cte))}

    def rename(
        self,
        old_name: str,
        obj: CatalogObject,
        *,
        audit: Sequence[AuditEntry] = (),
        expected_version: Revision | None = None,
        hold_references: bool = False,
    ) -> Revision:
        """Replace object ``old_name`` of ``obj``'s kind by ``obj`` under its new name, keeping its id (an edit
        of it meanwhile: read again, as :meth:`apply` says, or with ``expected_version`` :class:`VersionMismatch`;
        the new name taken meanwhile: :class:`NameTaken`); the revision stored. Named by another object, as found in
        this transaction once the object is locked: :class:`ObjectInUse`; with ``hold_references``, ``obj`` naming an
        object that does not exist: :class:`ReferenceMissing` (see :meth:`_hold_references`)."""

        def write() -> Revision:
            with self.database.transaction() as session:
                write_entries(session, audit)
                row = self._lock_row(session, kind_of(obj), old_name)
                self._require_version(session, row, kind_of(obj), old_name, expected_version)
                if row is None:
                    raise NotFound(kind_of(obj), old_name)
                if obj.name != old_name:
                    self._refuse_in_use(session, row)
                if hold_references:
                    self._hold_references(session, [obj])
                _record_pause(row, obj, _actor_of(obj, audit))
                row.name, row.spec, row.version, row.updated_at = obj.name, self._stored(obj), row.version + 1, now()
                self._name_references(session, row.id, obj)
                return _revision(row)

        try:
            return self._conditional(write, kind_of(obj), old_name, expected_version)
        except IntegrityError:  # the new name taken by another writer after it was checked
            raise NameTaken(kind_of(obj), obj.name) from None

    def delete(
        self,
        kind: type[CatalogObject],
        name: str,
        *,
        audit: Sequence[AuditEntry] = (),
        expected_version: Revision | None = None,
    ) -> None:
        """Delete an object (an edit of it meanwhile: read again and deleted; deleted meanwhile: NotFound); with
        ``expected_version``, only if stored at that revision (``DELETE … WHERE version = …``), else
        :class:`VersionMismatch`. Named by another object, as found in this transaction once the object is locked
        (:meth:`_refuse_in_use`): :class:`ObjectInUse`, nothing deleted."""

        def write() -> None:
            with self.database.transaction() as session:
                write_entries(session, audit)
                row = self._lock_row(session, kind.__name__, name)
                self._require_version(session, row, kind.__name__, name, expected_version)
                if row is None:
                    raise NotFound(kind.__name__, name)
                self._refuse_in_use(session, row)
                if kind is ExportDefinition:
                    # Loaded here: the snapshots need numpy, which reading and writing objects do not.
                    from shared.catalog.change_snapshots import drop_snapshot

                    drop_snapshot(session, row.id)  # its change-mode snapshot goes with it (a new one starts afresh)
                row_id = row.id
                session.delete(row)
                self._name_references(session, row_id, None)

        self._conditional(write, kind.__name__, name, expected_version)

    def reencrypt_secrets(self) -> tuple[int, int]:
        """Encrypt every literal secret of every connection profile again, with the current key; (profiles, secrets).

        What ``exportctl secrets rotate`` does once a new key is first in ``EXPORT_CATALOG_ENCRYPTION_KEYS``:
        afterwards no stored secret needs an older key. Secrets stored in plain text (written before there
        was a key) are encrypted too. One transaction: every profile is rewritten, or none. The objects do
        not change, so neither do their versions.
        """
        if self.cipher is None:
            raise SecretsUnreadable(f"{KEYS_VARIABLE} is not set: there is no key to encrypt with")

        def write() -> tuple[int, int]:
            profiles = secrets = 0
            with self.database.transaction() as session:
                query = select(CatalogObjectRow).where(CatalogObjectRow.kind == ConnectionProfile.__name__)
                for row in list(session.scalars(query.with_for_update())):
                    try:
                        profile = self._load(ConnectionProfile, row)
                    except ValidationError as exc:
                        raise SecretsUnreadable(
                            f"ConnectionProfile '{row.name}' is not valid ({exc.error_count()} error(s), e.g. in field "
                            f"'{'.'.join(map(str, exc.errors()[0]['loc']))}'): apply it again corrected, then rotate"
                        ) from None
                    literals = sum(not is_reference(s.get_secret_value()) for _, s in secret_fields(profile))
                    if literals:
                        row.spec = self._stored(profile)
                        profiles, secrets = profiles + 1, secrets + literals
            return profiles, secrets

        # A profile edited while rotating (SQLite locks no row): rotated again from a fresh read.
        return self._retried(write, ConnectionProfile.__name__, "*")

    def scheduled_definitions(self) -> list[tuple[uuid.UUID, ExportDefinition]]:
        """Definitions whose schedule is enabled, with their ids."""
        with self.database.transaction(ExportDefinition.__name__) as session:
            rows = session.scalars(select(CatalogObjectRow).where(CatalogObjectRow.kind == ExportDefinition.__name__))
            definitions = [
                (uuid.UUID(row.id), ExportDefinition.model_validate(row.spec, context=self._context)) for row in rows
            ]
        return [(id_, d) for id_, d in definitions if d.schedule.enabled]

    def definitions_fingerprint(self) -> tuple[int, int, datetime | None]:
        """(count, sum of versions, latest update) of export definitions: changes whenever one is created, edited or
        deleted. The versions' sum grows with every edit, whatever its writer's clock: the latest update alone missed
        an edit stamped before it (a writer's now() read before another's commit, or a host's clock behind)."""
        with self.database.transaction(ExportDefinition.__name__) as session:
            count, versions, latest = session.execute(
                select(func.count(), func.sum(CatalogObjectRow.version), func.max(CatalogObjectRow.updated_at)).where(
                    CatalogObjectRow.kind == ExportDefinition.__name__
                )
            ).one()
            return int(count), int(versions or 0), aware(latest)


def _actor_of(obj: CatalogObject, audit: Sequence[AuditEntry]) -> str | None:
    """The actor of the audit entry of ``obj`` (by kind and name) among a write's ``audit`` entries."""
    return _actors(audit).get((kind_of(obj), obj.name))


def _actors(audit: Sequence[AuditEntry]) -> dict[tuple[str, str], str]:
    """The actor of each object a write's ``audit`` entries are about, by kind and name (its first entry's): built
    once per write, looked up for each object written."""
    actors: dict[tuple[str, str], str] = {}
    for entry in audit:
        actors.setdefault((entry.kind, entry.name), entry.actor)
    return actors


def _record_pause(row: CatalogObjectRow, obj: CatalogObject, pauser: str | None) -> None:
    """Before ``row`` (as stored) is overwritten by ``obj``: who paused its schedule. A definition's schedule that
    this write disables was paused by ``pauser``; one it leaves disabled keeps who paused it; an enabled one (or
    another kind) has none."""
    if not _disabled(obj):
        row.schedule_paused_by = None
    elif _enabled(row.spec):
        row.schedule_paused_by = pauser


def _disabled(obj: CatalogObject) -> bool:
    """Whether ``obj`` is a definition whose schedule is disabled (paused)."""
    return isinstance(obj, ExportDefinition) and not obj.schedule.enabled


def _enabled(spec: Any) -> bool:
    """Whether a stored definition's schedule is enabled (``spec`` as stored)."""
    schedule = spec.get("schedule") if isinstance(spec, dict) else None
    return isinstance(schedule, dict) and schedule.get("enabled") is True


def _named(obj: CatalogObject | None) -> set[tuple[str, str]]:
    """What ``obj`` names (:func:`references`), as the kinds and names of :class:`CatalogReferenceRow`."""
    return {(kind.__name__, name) for kind, name, _ in references(obj)} if obj is not None else set()


def _revision(row: CatalogObjectRow) -> Revision:
    """The revision ``row`` holds (its id and version as the session has them)."""
    return Revision(uuid.UUID(row.id), row.version)


def _business_unit(row: CatalogObjectRow) -> str | None:
    """A definition row's business unit as stored (its spec's ``business_unit``; None if absent or not a string)."""
    return _unit(row.spec if isinstance(row.spec, dict) else {})


def _referring_where(
    referring: type[CatalogObject], named: Mapping[str, set[str]]
) -> tuple[ColumnElement[bool], ColumnElement[bool]] | None:
    """Which rows are the objects of kind ``referring`` that name any of ``named`` (names by kind), by their
    references (:class:`CatalogReferenceRow`, indexed); None when ``named`` names nothing."""
    wanted = [(kind, names) for kind, names in named.items() if names]
    if not wanted:
        return None
    named_kind, named_name = CatalogReferenceRow.kind, CatalogReferenceRow.name
    ids = select(CatalogReferenceRow.referrer_id).where(
        or_(*(and_(named_kind == kind, named_name.in_(names)) for kind, names in wanted))
    )
    return CatalogObjectRow.kind == referring.__name__, CatalogObjectRow.id.in_(ids)


#: A stored definition's field of its business unit.
_BUSINESS_UNIT = "business_unit"


def _unit(spec: dict[str, Any]) -> str | None:
    """A stored definition's business unit (its JSON's ``business_unit``; None if absent or not a string)."""
    unit = spec.get(_BUSINESS_UNIT)
    return unit if isinstance(unit, str) else None
