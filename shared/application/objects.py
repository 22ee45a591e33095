"""Use cases of catalog objects: apply a set, create, replace (or rename), delete, copy, save a step.

Every write is authorised and checked as a whole before anything is stored: a refused object leaves
the catalog as it was.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from shared.application.actors import Actor, Permission, authorise
from shared.application.audit import change, readable_to, units_of
from shared.application.errors import Conflict, Forbidden, Invalid, Missing, Stale
from shared.application.masked_secrets import MASK, keep_masked_secrets
from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import (
    KINDS,
    LABEL_MAX_LENGTH,
    CatalogObject,
    ConnectionProfile,
    ExportDefinition,
    kind_of,
    stored_form,
)
from shared.domain.names import slugify
from shared.domain.revisions import NO_OBJECT, Revision
from shared.errors import (
    WRITE_ATTEMPTS,
    EditConflict,
    NameTaken,
    NotAsListed,
    NotFound,
    ObjectInUse,
    ReferenceMissing,
    VersionMismatch,
)

if TYPE_CHECKING:
    from shared.application.checks import ObjectChecks

T = TypeVar("T", bound=CatalogObject)


@contextmanager
def edit_conflicts(actor: Actor, store: DefinitionsStore) -> Iterator[None]:
    """A write that other writes of the same object beat at every try (the store tries again on a fresh read
    first): :class:`Conflict`, as every entry point answers a conflict (409; exportctl exits 4). A write
    conditional on the revision its writer read, beaten to it: :class:`Stale` (412) if ``actor`` may see the object
    as it is now (:func:`stale`); the object gone meanwhile (no object under the name): :class:`Missing` (404, as
    without ``If-Match``; an update is never a create). An object the write names deleted or renamed after it was
    checked (the store found it in its transaction): :class:`Invalid`, worded as the check words it."""
    try:
        yield
    except EditConflict as exc:
        raise Conflict(str(exc), slug="edit-conflict") from None
    except NameTaken as exc:  # a create's name taken by another writer after it was checked
        raise Conflict(str(exc), slug="name-conflict") from None
    except VersionMismatch as exc:  # a write conditional on the version its writer read, beaten to it
        raise stale(actor, store, exc) from None
    except NotFound as exc:  # deleted (or renamed) by someone else in between
        raise Missing(str(exc)) from None
    except ReferenceMissing as exc:  # what it names deleted (or renamed) by someone else after the check
        raise Invalid(exc.problems, slug="invalid-reference") from None


#: How many names a derived name's look-up asks about at once (``base``, ``base-2``… ``base-100``, then the next).
NAMES_LOOKED_UP = 100
#: What a refusal of a delete or a rename of an object in use tells to do.
DELETE_THOSE_FIRST, CANNOT_BE_RENAMED = "delete those first", "it cannot be renamed"


#: Runs a refusal of a delete or rename of an object that runs use names at most (the others counted).
RUNS_NAMED = 5


def refuse_used_by_runs(store: DefinitionsStore, obj: CatalogObject, actor: Actor) -> None:
    """:class:`Conflict` (``in-use``) while a run not finished yet uses ``obj`` by name though no definition may name
    it now: a change run keeps the templates of its first start (its resume and its batches' delivery read them by
    name), so the template deleted or renamed would fail the run (``missing_object``). The one rule of a delete and a
    rename, whatever the entry point (admin API, console, exportctl); the runs as the actor may see them (those of
    definitions outside its scope counted, never named), at most :data:`RUNS_NAMED`. A run a definition starts
    after this check takes the templates the definition names then (a delete or rename of one is refused as in use
    by that definition)."""
    found = store.runs_using(kind_of(obj), obj.name)
    if not found:
        return
    seen = [f"unfinished run {run_id} (ExportDefinition '{name}')" for run_id, name, unit in found if actor.sees(unit)]
    named = seen[:RUNS_NAMED] + ([f"{len(seen) - RUNS_NAMED} more"] if len(seen) > RUNS_NAMED else [])
    if hidden := len(found) - len(seen):
        named.append(f"{hidden} run(s) outside this token's scope")
    wait = "it has finished or cancel it" if len(found) == 1 else "they have finished or cancel them"
    raise in_use(obj.name, named, f"a run keeps the templates it started with; wait until {wait}")


def in_use(name: str, found: list[str], then: str) -> Conflict:
    """The refusal of a delete or a rename (``then`` says which) of ``name``, used by ``found``."""
    return Conflict(f"'{name}' is used by {', '.join(found)}: {then}", slug="in-use")


@contextmanager
def in_use_refused(actor: Actor, name: str, then: str) -> Iterator[None]:
    """A delete or rename of ``name`` the store refused, a referrer found in its transaction (one saved after the
    check, :func:`referrers`, that came before): :func:`in_use`, the referrers told as that check tells them."""
    try:
        yield
    except ObjectInUse as exc:
        raise in_use(name, described(actor, _in_kind_order(exc.referrers)), then) from None


def _in_kind_order(found: Iterable[tuple[str, str, str | None]]) -> list[tuple[str, str, str | None]]:
    """Referrers (kind, name, business unit) by kind (:data:`KINDS`' order), then name: as refusals name them."""
    order = list(KINDS)
    return sorted(found, key=lambda referrer: (order.index(referrer[0]), referrer[1]))


def stale(actor: Actor, store: DefinitionsStore, mismatch: VersionMismatch) -> Stale:
    """The refusal of a write whose object is no longer as its writer read it, to an ``actor`` who may see the object
    as it is now (:class:`Forbidden` otherwise, as without ``If-Match``: a definition moved to another unit
    meanwhile): what became of it, and by whom and when only if the actor may read that change in the audit log
    (:func:`~shared.application.audit.readable_to`: a scoped token is not told of another unit's writer of a
    shared query, profile or template)."""
    if mismatch.kind == ExportDefinition.__name__:
        _unit_in_scope(actor, mismatch.name, mismatch.business_unit)

    def units_now() -> tuple[str, ...]:
        return units_of(store, mismatch.kind, mismatch.name, mismatch.business_unit)

    if readable_to(actor.business_units, mismatch.units, units_now):
        return Stale(str(mismatch), other_object=mismatch.other_object, by=mismatch.by, at=mismatch.at)
    return Stale(mismatch.anonymous(), other_object=mismatch.other_object)


def checked(objects: list[CatalogObject], store: DefinitionsStore, checks: ObjectChecks) -> list[CatalogObject]:
    """:func:`shared.application.checks.checked`, imported by the writes that run it: reading an object
    (``exportctl run`` requesting a run) does not load the checks and the template renderer behind them."""
    from shared.application import checks as object_checks

    return object_checks.checked(objects, store, checks)


@dataclass(frozen=True)
class ExpectedVersion:
    """The revisions of an object its writer read (an ``If-Match``, a console form's version): the write is done
    only while one of them is stored (that object, at that version), in one step with the check, else
    :class:`Stale` (412) and nothing is written. ``versions`` None (``If-Match: *``): any version of an existing
    object (the one read is kept to)."""

    versions: frozenset[Revision] | None = None

    @property
    def names_no_object(self) -> bool:
        """Whether no revision sent names an object (an ``ETag`` from before revisions, a plain ``"3"``; a weak
        tag; a console page of before revisions posting ``version=3``): such a write is refused whatever is stored
        (:func:`visible_as_read`), saying so rather than what became of an object it never named."""
        return self.versions is not None and not self.versions - {NO_OBJECT}

    @classmethod
    def of(cls, revision: Revision) -> ExpectedVersion:
        return cls(frozenset({revision}))

    def allows(self, revision: Revision) -> bool:
        return self.versions is None or revision in self.versions

    def closest_to(self, revision: Revision) -> Revision | None:
        """The revision read that is of ``revision``'s object, else any one read (None: ``*`` or none of ours):
        what a refusal compares the stored object with (changed, or not the object read)."""
        if not self.versions:
            return None
        return min(self.versions, key=lambda read: (read.object_id != revision.object_id, read))


@dataclass(frozen=True)
class Change:
    """What applying one object does: ``created``, ``updated`` (with the fields that change) or ``unchanged``."""

    kind: str
    name: str
    change: Literal["created", "updated", "unchanged"]
    fields: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.change} ({', '.join(self.fields)})" if self.fields else self.change


# --- rules shared by the use cases -------------------------------------------------------------------


def required_permission(kind: type[Any]) -> Permission:
    """Connection profiles hold credentials: changing them takes more than changing the rest."""
    return Permission.WRITE_PROFILES if kind is ConnectionProfile else Permission.WRITE


def in_scope(actor: Actor, obj: CatalogObject) -> None:
    """:class:`Forbidden` when ``obj`` is a definition of a business unit outside the actor's scope."""
    if isinstance(obj, ExportDefinition):
        _unit_in_scope(actor, obj.name, obj.business_unit)


def _unit_in_scope(actor: Actor, name: str, business_unit: str | None) -> None:
    """:func:`in_scope` of the definition ``name`` of ``business_unit``."""
    if not actor.sees(business_unit):
        raise Forbidden(
            f"definition '{name}' belongs to a business unit outside this token's scope", slug="out-of-scope"
        )


def authorise_write(actor: Actor, obj: CatalogObject) -> None:
    authorise(actor, required_permission(type(obj)))
    in_scope(actor, obj)


def existing(store: DefinitionsStore, kind: type[T], name: str) -> T:
    """The object, or :class:`Missing`."""
    try:
        return store.get(kind, name)
    except NotFound as exc:
        raise Missing(str(exc)) from None


def visible(actor: Actor, store: DefinitionsStore, kind: type[T], name: str) -> T:
    """The object, if it exists and is in the actor's scope."""
    obj = existing(store, kind, name)
    in_scope(actor, obj)
    return obj


def visible_with_id(actor: Actor, store: DefinitionsStore, kind: type[T], name: str) -> tuple[uuid.UUID, T]:
    """The object and its stable id (one read), if it exists and is in the actor's scope."""
    revision, obj = visible_versioned(actor, store, kind, name)
    return revision.object_id, obj


def visible_versioned(actor: Actor, store: DefinitionsStore, kind: type[T], name: str) -> tuple[Revision, T]:
    """The object and its revision (one read; its ``ETag``), if it exists and is in the actor's scope."""
    try:
        id_, version, obj = store.get_versioned(kind, name)
    except NotFound as exc:
        raise Missing(str(exc)) from None
    in_scope(actor, obj)
    return Revision(id_, version), obj


def visible_as_read(
    actor: Actor,
    store: DefinitionsStore,
    kind: type[T],
    name: str,
    expected: ExpectedVersion | None,
    *,
    changing_shared: bool = False,
) -> tuple[Revision, Revision | None, T]:
    """The object to change, if visible (:class:`Missing`, :class:`Forbidden` as without ``expected``: a write
    conditional on a revision learns nothing more of an object it cannot see, another unit's deletion included),
    its revision read, and the revision its write is to be conditional on: None without ``expected`` (the store's
    retry on a fresh read, as ever); else the one read, which ``expected`` must allow. Changed, or deleted and
    created again, since the writer read it: :class:`Stale`, before anything is checked or written. With
    ``changing_shared`` (a replace, a delete), :func:`covers_dependents` first: a change the actor could never make
    to the object as it is is :class:`Forbidden` (403), not :class:`Stale`, whatever revision was read."""
    revision, obj = visible_versioned(actor, store, kind, name)
    if changing_shared:
        covers_dependents(actor, store, obj)
    if expected is None:
        return revision, None, obj
    if expected.names_no_object:
        raise Stale(
            f"{kind.__name__} '{name}': the revision sent (an ETag from before revisions named the object) names no"
            " object: nothing was written; read it again for its ETag and redo the change",
            slug="unknown-revision",
            changed=False,
        )
    if not expected.allows(revision):
        with edit_conflicts(actor, store):  # gone since: Missing; moved out of the actor's scope since: Forbidden
            raise store.changed_since_read(kind.__name__, name, read=expected.closest_to(revision))
    return revision, revision, obj


def refuse_taken(store: DefinitionsStore, kind: type[Any], name: str) -> None:
    if store.find(kind, name) is not None:
        raise Conflict(f"{kind.__name__} '{name}' exists already", slug="name-conflict")


def unique_name(store: DefinitionsStore, kind: type[Any], base: str) -> str:
    """``base``, or ``base-2``, ``base-3``… whichever is free: looked up by name, :data:`NAMES_LOOKED_UP` at a time
    (not every object of ``kind`` read); :class:`Conflict` when ``base-9999`` is taken too."""
    stem = base[:95].rstrip("-")
    candidates = [base, *(f"{stem}-{n}" for n in range(2, 10_000))]
    for start in range(0, len(candidates), NAMES_LOOKED_UP):
        looked_up = candidates[start : start + NAMES_LOOKED_UP]
        taken = store.names_taken(kind, looked_up)
        if free := next((name for name in looked_up if name not in taken), None):
            return free
    raise Conflict(f"{kind.__name__} '{base}' and '{stem}-2' to '{stem}-9999' exist already", slug="name-conflict")


def referrers(store: DefinitionsStore, obj: CatalogObject, actor: Actor) -> list[str]:
    """Objects that refer to ``obj`` (which may therefore not be deleted or renamed), as the actor may see them
    (:func:`described`). The check before the write, which names them; the store checks again in the write's
    transaction (:class:`~shared.errors.ObjectInUse`, :func:`in_use_refused`)."""
    return described(actor, _in_kind_order(store.referrers(kind_of(obj), obj.name)))


def described(actor: Actor, found: Iterable[tuple[str, str, str | None]]) -> list[str]:
    """Referrers (kind, name, business unit) as the actor may see them: definitions outside the actor's scope are
    counted, never named."""
    named, hidden = [], 0
    for kind, name, business_unit in found:
        if kind == ExportDefinition.__name__ and not actor.sees(business_unit):
            hidden += 1
        else:
            named.append(f"{kind} '{name}'")
    if hidden:
        named.append(f"{hidden} definition(s) outside this token's scope")
    return named


def covers_dependents(actor: Actor, store: DefinitionsStore, obj: CatalogObject) -> None:
    """:class:`Forbidden` unless the actor's scope covers every definition that depends on ``obj``.

    A business unit's exports depend on their query, template and profile as much as on their
    definition: a token scoped to one unit may change a shared object only when no other unit's
    definition uses it. The refusal names no definition outside the actor's scope.
    """
    if not actor.business_units:
        return
    if isinstance(obj, ExportDefinition):  # as read by the caller: itself (nothing read again)
        using: Iterable[tuple[str, str | None]] = [(obj.name, obj.business_unit)]
    else:  # only the definitions using it read, as stored (one another release stored counts too)
        using = store.dependents(kind_of(obj), obj.name)
    outside = [name for name, business_unit in using if not actor.sees(business_unit)]
    if outside:
        raise Forbidden(
            f"{kind_of(obj)} '{obj.name}' is used by {len(outside)} definition(s) outside this token's scope",
            slug="out-of-scope",
        )


def changed_fields(current: CatalogObject, wanted: CatalogObject) -> list[str]:
    """Top-level fields whose stored values differ (secrets compared as stored, never shown)."""
    before, after = stored_form(current), stored_form(wanted)
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


# --- use cases ---------------------------------------------------------------------------------------


def apply_objects(
    actor: Actor,
    objects: list[CatalogObject],
    *,
    store: DefinitionsStore,
    checks: ObjectChecks,
    dry_run: bool = False,
) -> list[Change]:
    """Create or update every object, all or nothing; say what changes for each (``dry_run``: write nothing).

    Authorised and checked as a whole first (references among the set or in the catalog, destinations,
    query columns discovered, templates rendered, definitions consistent): one refusal refuses all. An object of
    the set that another one names, listed unchanged (so not written), deleted or renamed by another writer between
    the change list and the write: the set is applied once more from the start (that object is then created), as
    if applied after that writer; a missing object the set does not list is refused (:func:`edit_conflicts`).
    An object to write that another writer changed, created, deleted or renamed after the change list was read
    (:class:`NotAsListed`): the set is read, checked, judged and written again from the start, so that the
    answer and the audit say what is written (an object another created meanwhile is updated, its ``before``
    audited); :class:`Conflict` (``edit-conflict``) after :data:`WRITE_ATTEMPTS` tries.
    """
    listings = Counter((kind_of(obj), obj.name) for obj in objects)
    twice = sorted(f"{kind} '{name}'" for (kind, name), count in listings.items() if count > 1)
    if twice:  # which one would win is not for the catalog to guess, and no retry could ever store both
        raise Invalid(f"the set lists {', '.join(twice)} more than once: list each object once")
    warned = len(checks.warnings)
    gone = False
    for _ in range(WRITE_ATTEMPTS):
        del checks.warnings[warned:]  # a set done again warns once: the warnings are those of its last check
        try:
            return _apply_objects_once(actor, objects, store=store, checks=checks, dry_run=dry_run, last=gone)
        except _ListedObjectGone:
            gone = True
        except NotAsListed:
            pass
    with edit_conflicts(actor, store):
        raise EditConflict(
            ", ".join(sorted({kind_of(obj) for obj in objects})),
            ", ".join(obj.name for obj in objects),
            WRITE_ATTEMPTS,
        )


class _ListedObjectGone(Exception):
    """An object a set to apply lists unchanged and names was deleted (or renamed) before the set's write."""


def _found_versioned(store: DefinitionsStore, kind: type[T], name: str) -> tuple[Revision | None, T | None]:
    """The object of ``kind`` and ``name`` and its revision (one read), or ``(None, None)``."""
    try:
        id_, version, obj = store.get_versioned(kind, name)
    except NotFound:
        return None, None
    return Revision(id_, version), obj


def _apply_objects_once(
    actor: Actor,
    objects: list[CatalogObject],
    *,
    store: DefinitionsStore,
    checks: ObjectChecks,
    dry_run: bool,
    last: bool,
) -> list[Change]:
    """:func:`apply_objects` once: :class:`_ListedObjectGone` (unless ``last``) or :class:`NotAsListed` if it is
    to be done again. Each object is read once: authorised, judged and written (only if still at that revision)
    as read."""
    listed = {(kind_of(obj), obj.name) for obj in objects}
    for obj in objects:  # before anything is read: a token refused says nothing of what is stored
        authorise_write(actor, obj)
    found = [_found_versioned(store, type(obj), obj.name) for obj in objects]
    for _, current in found:
        if current is not None:
            in_scope(actor, current)  # no taking over another unit's definition by name
            covers_dependents(actor, store, current)
    # A manifest written from `get -o yaml` carries secrets masked: a mask means "keep the stored one".
    objects = [_keeping_masked_secrets(obj, current) for obj, (_, current) in zip(objects, found, strict=True)]
    objects = checked(objects, store, checks)
    changes, writes, read, audit = [], [], [], []
    for obj, (revision, current) in zip(objects, found, strict=True):
        if current is None:
            changes.append(Change(kind_of(obj), obj.name, "created"))
            audit.append(change(actor.name, "create", store, after=obj))
        elif fields := changed_fields(current, obj):
            changes.append(Change(kind_of(obj), obj.name, "updated", fields))
            audit.append(change(actor.name, "update", store, before=current, after=obj))
        else:
            changes.append(Change(kind_of(obj), obj.name, "unchanged"))
            continue
        writes.append(obj)
        read.append(revision)
    if writes and not dry_run:
        with edit_conflicts(actor, store):
            try:
                store.apply_all(writes, audit=audit, hold_references=True, read=read)
            except ReferenceMissing as exc:
                if last or not exc.missing or not exc.missing <= listed:
                    raise
                raise _ListedObjectGone from None
    return changes


def _keeping_masked_secrets(obj: T, current: T | None) -> T:
    """``obj`` with every masked secret (``**********``, as reads answer) replaced by ``current``'s value."""
    if current is None:
        return obj
    wanted = stored_form(obj)
    if MASK not in str(wanted):  # nothing masked: the object as given (no needless round trip)
        return obj
    kept: T = type(obj).model_validate(keep_masked_secrets(wanted, current))  # type: ignore[assignment]
    return kept


def _from_body(store: DefinitionsStore, kind: type[T], body: dict[str, Any], old: T | None = None) -> T:
    """The object of an API-shaped ``body``: its name given, kept, or derived from its label; masked secrets kept."""
    body = dict(body)
    if not body.get("name"):
        if old is not None:
            body["name"] = old.name
        elif body.get("label"):
            body["name"] = unique_name(store, kind, slugify(str(body["label"])))
        else:
            raise Invalid("field 'name': give a name or a label to derive it from")
    obj: T = kind.model_validate(keep_masked_secrets(body, old))  # type: ignore[assignment]
    return obj


def create_object(
    actor: Actor, kind: type[T], body: dict[str, Any], *, store: DefinitionsStore, checks: ObjectChecks
) -> tuple[Revision, T]:
    """A new object (named, or named after its label) and its revision; :class:`Conflict` when the given name is
    taken."""
    authorise(actor, required_permission(kind))
    obj = _from_body(store, kind, body)
    authorise_write(actor, obj)
    if body.get("name"):
        refuse_taken(store, kind, obj.name)
    stored = checked([obj], store, checks)[0]
    with edit_conflicts(actor, store):
        _, revision = store.apply_versioned(
            stored, audit=[change(actor.name, "create", store, after=stored)], new=True, hold_references=True
        )
    return revision, stored  # type: ignore[return-value]


def replace_object(
    actor: Actor,
    kind: type[T],
    name: str,
    body: dict[str, Any],
    *,
    store: DefinitionsStore,
    checks: ObjectChecks,
    expected_version: ExpectedVersion | None = None,
    dry_run: bool = False,
) -> tuple[Revision, T]:
    """Replace an object; a different name in ``body`` renames it (refused while others refer to it); with
    ``expected_version``, only if it is still as its writer read it (:class:`Stale` if not). The object as stored
    and the revision this write stored (unchanged: the one read).

    ``dry_run`` (the console's check): every check of the write, nothing written; the object as it would be stored
    and the revision read. Its masked secrets stand for the stored object's, renamed or not, as for the write."""
    authorise(actor, required_permission(kind))
    revision, version, old = visible_as_read(actor, store, kind, name, expected_version, changing_shared=True)
    obj = _from_body(store, kind, body, old)
    authorise_write(actor, obj)
    stored: T = checked([obj], store, checks)[0]  # type: ignore[assignment]
    if stored.name != old.name:
        refuse_taken(store, kind, stored.name)
        if found := referrers(store, old, actor):
            raise in_use(old.name, found, CANNOT_BE_RENAMED)
        refuse_used_by_runs(store, old, actor)
        if dry_run:
            return revision, stored
        with in_use_refused(actor, old.name, CANNOT_BE_RENAMED), edit_conflicts(actor, store):
            revision = store.rename(
                old.name,
                stored,
                audit=[change(actor.name, "rename", store, before=old, after=stored)],
                expected_version=version,
                hold_references=True,
            )
    elif changed_fields(old, stored) and not dry_run:
        revision = _update(actor, store, old, stored, version)
    return revision, stored


def _update(
    actor: Actor, store: DefinitionsStore, old: CatalogObject, stored: CatalogObject, version: Revision | None
) -> Revision:
    """Store ``stored`` over ``old`` (conditional on ``version`` when given), audited; the revision written. An
    update never creates: an object deleted meanwhile is :class:`Missing`."""
    with edit_conflicts(actor, store):
        _, revision = store.apply_versioned(
            stored,
            audit=[change(actor.name, "update", store, before=old, after=stored)],
            existing=True,
            expected_version=version,
            hold_references=True,
        )
    return revision


def deletable(
    actor: Actor, store: DefinitionsStore, kind: type[T], name: str, expected: ExpectedVersion | None
) -> tuple[Revision, Revision | None, T]:
    """What :func:`delete_object` checks before it looks for referrers, in its order, as :func:`visible_as_read`
    answers: :class:`Forbidden` unless the actor's role may change ``kind`` (:func:`required_permission`) and the
    actor may change the object as it is (its scope covers it and its dependents); :class:`Missing`;
    :class:`Stale`. A delete's confirmation asks it too, so that it offers no delete the use case would refuse."""
    authorise(actor, required_permission(kind))
    return visible_as_read(actor, store, kind, name, expected, changing_shared=True)


def delete_object(
    actor: Actor,
    kind: type[Any],
    name: str,
    *,
    store: DefinitionsStore,
    expected_version: ExpectedVersion | None = None,
) -> None:
    """Delete an object; :class:`Conflict` while others refer to it, or unfinished runs use it
    (:func:`refuse_used_by_runs`); with ``expected_version``, only if it is
    still as its deleter read it (:class:`Stale` if not)."""
    _, version, obj = deletable(actor, store, kind, name, expected_version)
    if found := referrers(store, obj, actor):
        raise in_use(name, found, DELETE_THOSE_FIRST)
    refuse_used_by_runs(store, obj, actor)
    # deleted by someone else in between: Missing; a referrer saved in between: in use all the same
    with in_use_refused(actor, name, DELETE_THOSE_FIRST), edit_conflicts(actor, store):
        store.delete(kind, name, audit=[change(actor.name, "delete", store, before=obj)], expected_version=version)


def copyable(actor: Actor, store: DefinitionsStore, kind: type[T], name: str) -> T:
    """What :func:`copy_object` checks before it names the copy, in its order: :class:`Forbidden` unless the actor's
    role may change ``kind`` (:func:`required_permission`); :class:`Missing`; :class:`Forbidden` unless the actor's
    scope covers the object. A copy's confirmation asks it too, so that it offers no copy the use case would
    refuse (as :func:`deletable` for a delete)."""
    authorise(actor, required_permission(kind))
    return visible(actor, store, kind, name)


def copy_object(
    actor: Actor,
    kind: type[T],
    name: str,
    *,
    store: DefinitionsStore,
    checks: ObjectChecks,
    label: str | None = None,
    new_name: str | None = None,
) -> tuple[Revision, T]:
    """A copy named "Copy of <label>" (or as asked), and its revision; a copied definition's schedule is
    disabled. A copy is a save: checked as one (:func:`checked`), so that it keeps nothing a save would refuse
    (a value its query no longer binds, a label with a NUL character, an object stored by an older release)."""
    original = copyable(actor, store, kind, name)
    label = label or _copy_label(original)
    if new_name:
        refuse_taken(store, kind, new_name)
    else:
        new_name = unique_name(store, kind, slugify(label))
    spec = stored_form(original) | {"name": new_name, "label": label}
    if isinstance(original, ExportDefinition):
        spec["schedule"] = original.schedule.model_copy(update={"enabled": False}).model_dump(mode="json")
    try:
        copy: T = kind.model_validate(spec)  # type: ignore[assignment]
    except ValidationError as exc:  # the label asked for (too long): refused as every entry point refuses
        # Naming the field only: the copy's name would be one the caller never gave (the slug of the refused label).
        raise Invalid(
            [
                f"field '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)
            ],
            slug="invalid-object",
        ) from None
    # Without the member store: a copy's SQL and template are the original's, its columns recorded already (a copy
    # needs no reachable store, and runs no query).
    copy = checked([copy], store, replace(checks, members=None))[0]  # type: ignore[assignment]
    with edit_conflicts(actor, store):
        _, revision = store.apply_versioned(
            copy, audit=[change(actor.name, "copy", store, after=copy)], new=True, hold_references=True
        )
    return revision, copy


def _copy_label(original: CatalogObject) -> str:
    """ "Copy of <label>" (or of the name), cut to the longest label with an ellipsis if it would be longer."""
    label = f"Copy of {getattr(original, 'label', None) or original.name}"
    return label if len(label) <= LABEL_MAX_LENGTH else label[: LABEL_MAX_LENGTH - 1] + "…"


def _keeping_what_the_step_omits(
    definition: ExportDefinition, field_name: str | None, given: set[str], values: dict[str, Any]
) -> dict[str, Any]:
    """A step that does not mention the webhooks (Notifications) or the chain (Schedule, with no other
    recurrence) keeps the stored ones: an API client or a console page without those fields (the console has
    no field for chains) changes only what it sends. ``after: null`` (or another recurrence) removes a chain;
    ``webhooks: {}`` removes the webhooks."""
    stored = stored_form(definition)
    if field_name == "notifications" and "webhooks" not in given:
        return values | {"webhooks": stored["notifications"].get("webhooks", {})}
    if field_name == "schedule" and not given & {"once", "repeat", "cron", "after"} and definition.schedule.after:
        return values | {"after": stored["schedule"]["after"]}
    return values


def save_definition_step(
    actor: Actor,
    name: str,
    step: BaseModel | dict[str, Any],
    *,
    store: DefinitionsStore,
    checks: ObjectChecks,
    field_name: str | None = None,
    expected_version: ExpectedVersion | None = None,
) -> tuple[Revision, ExportDefinition]:
    """Save one step of a definition (Filter, Destination: their fields; Schedule, Notifications: ``field_name``);
    with ``expected_version``, only if the definition is still as its writer read it (:class:`Stale` if not). The
    definition as stored and the revision this write stored (unchanged: the one read).

    The step is merged into the definition as read, so its write is conditional on the revision read even without
    ``expected_version``: another step saved meanwhile is never undone, the step is merged into the definition as
    that save left it, checked and written again (:class:`Conflict` ``edit-conflict`` after :data:`WRITE_ATTEMPTS`
    tries, as :func:`apply_objects`)."""
    authorise(actor, Permission.WRITE)
    if isinstance(step, BaseModel):  # as given: JSON as reads answer it would mask the webhook URLs sent
        given, values = set(step.model_fields_set), to_jsonable_python(step.model_dump(mode="python"))
    else:
        given, values = set(step), dict(step)
    warned = len(checks.warnings)
    for _ in range(WRITE_ATTEMPTS):
        del checks.warnings[warned:]  # a step merged again warns once, as its last check does
        revision, version, definition = visible_as_read(actor, store, ExportDefinition, name, expected_version)
        changes = _keeping_what_the_step_omits(definition, field_name, given, values)
        changes = {field_name: changes} if field_name else changes
        # A webhook URL sent back masked, as the step's read answered it: the stored URL kept (keep_masked_secrets).
        updated = ExportDefinition.model_validate(keep_masked_secrets(stored_form(definition) | changes, definition))
        stored = checked([updated], store, checks)[0]
        assert isinstance(stored, ExportDefinition)
        if not changed_fields(definition, stored):
            return revision, stored
        try:  # conditional on the revision read (``version``, when given, is that revision)
            return _update(actor, store, definition, stored, revision), stored
        except Stale:
            if version is not None:  # the writer's If-Match: told, never merged on their behalf
                raise
    with edit_conflicts(actor, store):
        raise EditConflict(ExportDefinition.__name__, name, WRITE_ATTEMPTS)
