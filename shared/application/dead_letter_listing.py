"""Use case: list the dead letters grouped by run, definition and reason, with member counts and where those
members' retries stand: what ``exportctl dead-letters list`` (both modes), the admin API's ``GET /dead-letters`` and
the console's dead-letters page of a run show, one reading of the topic for all of them.

Scoped as the runs are (:func:`shared.application.runs.visible_run`): a business-unit-scoped actor sees the dead
letters of the runs recorded in its units only; an unreadable record (no run) only an actor of every unit.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.application.actors import Actor, Permission, authorise
from shared.application.dead_letter_retries import RetryStates, dead_letter_key_column, dead_letter_retries
from shared.application.errors import Refused
from shared.application.ports import DeadLetterSource, DefinitionsStore, RunUnitsReader, unreadable_of
from shared.domain.member_retries import MemberRetry
from shared.errors import StoredObjectInvalid
from shared.events import DeadLetter
from shared.member_keys import outcome_key

#: A group: its run, the service of an unreadable record, the definition, the reason.
_GroupKey = tuple[uuid.UUID | None, str | None, str | None, str]

#: A group's reason: the first characters of the dead letters' reason (a table's column; longer ones share a group).
REASON_CHARS = 100


@dataclass(frozen=True)
class DeadLetterGroup:
    """Dead letters of one run and definition with one reason: how many members they hold (a record without
    members counts one), and where those members' retries stand (``retry``: None when the catalog cannot say)."""

    run_id: uuid.UUID | None
    #: The service that dead-lettered a record it could not read (no run): set only then.
    service: str | None
    definition: str | None
    reason: str
    members: int
    retry: str | None = None

    @property
    def run(self) -> str:
        """The run as a table shows it: its id, or ``(<service>: unreadable record)``."""
        return str(self.run_id) if self.run_id else f"({self.service}: unreadable record)"


@dataclass(frozen=True)
class DeadLetterListing:
    """The groups (by run, definition, reason; a page of them, if asked) and how many dead letters and groups there
    are in all."""

    letters: int
    groups: list[DeadLetterGroup]
    total_groups: int
    #: Records of the topic in the listing's scope that could not be read as dead letters (a newer schema version,
    #: or bytes that are no dead letter): not in ``letters`` nor in any group, never left out unsaid.
    unreadable: int = 0


def dead_letter_view(group: DeadLetterGroup) -> dict[str, Any]:
    """A group as JSON values: the admin API's answer, which exportctl prints in both modes."""
    return {
        "run_id": str(group.run_id) if group.run_id else None,
        "service": group.service,
        "definition": group.definition,
        "reason": group.reason,
        "members": group.members,
        "retry": group.retry,
    }


def member_keys(members: Iterable[dict[str, Any]], key_column: str) -> list[str]:
    """The members' keys as text, as batch outcomes name them."""
    return [outcome_key(member.get(key_column)) for member in members]


def retry_summary(keys: list[str], states: Mapping[str, MemberRetry]) -> str:
    """One cell: how many members stand where (``3 pending retry, 1 given up, 2 delivered by run <id>``)."""
    counts: Counter[str] = Counter()
    for key in keys:
        state = states.get(key)
        if state is None:
            counts["no retry"] += 1
        elif state.state.value == "pending":
            counts["pending retry"] += 1
        elif state.state.value == "given_up":
            counts["given up"] += 1
        elif state.state.value == "delivered":
            counts[f"delivered by run {state.last_run}"] += 1
        else:
            counts["gone from the query"] += 1
    return ", ".join(f"{count} {what}" for what, count in sorted(counts.items()))


@dataclass
class RetryCells:
    """Where dead-lettered members' retries stand, read from the catalog as ``actor``: nothing for a definition
    the catalog cannot say of (gone, out of scope, stored invalid, or an error of ``tolerated``: exportctl's catalog
    at an older revision), never an error. The key column of each definition read once."""

    actor: Actor
    store: DefinitionsStore
    retries: RetryStates
    #: Further errors that mean "the catalog cannot say" (exportctl's: SQLAlchemy's; the admin API's: none).
    tolerated: tuple[type[Exception], ...] = ()
    _columns: dict[str, str | None] = field(default_factory=dict, repr=False)

    def key_column(self, definition: str) -> str | None:
        """The column naming the definition's members; None when the catalog cannot say."""
        if not definition:
            return None
        if definition not in self._columns:
            cannot_say: tuple[type[Exception], ...] = (Refused, StoredObjectInvalid, *self.tolerated)
            try:
                self._columns[definition] = dead_letter_key_column(self.actor, definition, store=self.store)
            except cannot_say:
                self._columns[definition] = None
        return self._columns[definition]

    def cells(self, definition: str, groups: Mapping[_GroupKey, list[str]]) -> dict[_GroupKey, str | None]:
        """The retry summary of each group's keys (members of ``definition``), the catalog asked once for all of
        them (not once a group: thousands of groups would hold a request thread for seconds); None when the catalog
        cannot say."""
        if self.key_column(definition) is None:
            return {}
        wanted = sorted({key for keys in groups.values() for key in keys})
        if not wanted:
            return {}
        cannot_say: tuple[type[Exception], ...] = (Refused, *self.tolerated)
        try:
            states = dead_letter_retries(self.actor, definition, wanted, store=self.store, retries=self.retries)
        except cannot_say:
            return {}
        return {group: retry_summary(keys, states) for group, keys in groups.items() if keys}


#: What a kept group weighs besides its strings (each weighed by ``sys.getsizeof``, its header included), in bytes:
#: its tally, its key's tuple, its run's UUID, its place in the listing's tuple (measured with tracemalloc: 100,000
#: groups of a reason of 100 characters and a UUID key, their definition's name one string, 232 bytes a group).
GROUP_BYTES = 240


@dataclass(frozen=True, slots=True)
class GroupTally:
    """One group before the catalog is asked (the same for every actor): its dead letters and members counted, and
    its members' keys under the key column its definition had when they were grouped."""

    key: _GroupKey
    letters: int
    members: int
    #: The members' keys as one JSON array ("" for none): one string, not one object a key (an outage's 100,000
    #: keys weigh their characters, not 100,000 objects of 50 bytes more each); decoded for a shown group only.
    packed_keys: str = ""

    @property
    def keys(self) -> list[str]:
        """The members' keys."""
        keys: list[str] = json.loads(self.packed_keys) if self.packed_keys else []
        return keys

    @property
    def weight(self) -> int:
        """What the group holds, in bytes: :data:`GROUP_BYTES` and its strings' own sizes."""
        _, service, definition, reason = self.key
        # sys.getsizeof, not len(): a string with one character above U+00FF (a cut reason's "…", U+FFFD, a
        # partner's non-Latin text) is held at 2 bytes a character, 4 with one above U+FFFF (an emoji).
        strings = (self.packed_keys, reason, definition, service)
        return GROUP_BYTES + sum(sys.getsizeof(string) for string in strings if string)

    def shown(self, retry: str | None) -> DeadLetterGroup:
        """The group as listed, with its retry cell."""
        run_id, service, definition, reason = self.key
        return DeadLetterGroup(run_id, service, definition, reason, self.members, retry)


@dataclass(frozen=True)
class GroupedDeadLetters:
    """The dead letters (of a run, of a definition, if asked) grouped, sorted as listed, for every actor: each
    request scopes them and asks the catalog for its page's retry cells (:func:`listing_of`)."""

    groups: tuple[GroupTally, ...]
    #: The key column each definition's members' keys were taken under (None: no keys taken, the catalog could not
    #: say); a request whose catalog names another column for one cannot use these keys (:meth:`answers`).
    columns: Mapping[str, str | None]
    #: The records that could not be read as dead letters, by the run they name (None: none named); with a ``run``
    #: filter, that run's only; with a ``definition`` filter, none (such a record says no definition to filter by).
    unreadable: Mapping[uuid.UUID | None, int] = field(default_factory=dict)

    @property
    def weight(self) -> int:
        """What a kept listing holds, in bytes (:attr:`GroupTally.weight` of its groups)."""
        return sum(group.weight for group in self.groups)

    def answers(self, cells: RetryCells | None, shown: Iterable[GroupTally]) -> bool:
        """Whether the keys held for the ``shown`` groups (a page's, the only ones an answer gives cells to:
        :func:`listed`) are those ``cells``' catalog would take: each of their definitions' key column the same, or
        none (no cell for it). Only those definitions are asked of the catalog (2 queries each), not every one of
        the listing: an outage across hundreds of exports is not hundreds of catalog reads a page."""
        if cells is None:
            return True
        # A group without keys under a column taken (its dead letters hold no member) has no cell under any column;
        # one whose definition named none when it was read (gone then) may have one now, read again.
        names = {
            tally.key[2] or "" for tally in shown if tally.packed_keys or self.columns.get(tally.key[2] or "") is None
        }
        return all(cells.key_column(name) in (None, self.columns.get(name)) for name in sorted(names))


def group_dead_letters(
    letters: Sequence[DeadLetter],
    *,
    key_column: Callable[[str], str | None] | None,
    run: uuid.UUID | None = None,
    definition: str | None = None,
    reason_chars: int | None = REASON_CHARS,
) -> GroupedDeadLetters:
    """The dead letters (of ``run``, of ``definition``, if given; an empty ``definition`` is no filter) grouped by
    run, definition and reason (its first ``reason_chars``; None: whole), sorted so, each group's member keys taken
    under its definition's ``key_column`` (None, or its None: none taken). No actor's scope: :func:`listing_of`
    applies it."""
    counts: dict[_GroupKey, list[int]] = {}
    keys: dict[_GroupKey, list[str]] = {}
    columns: dict[str, str | None] = {}
    for letter in letters:
        if (run is not None and letter.run_id != run) or (definition and letter.definition != definition):
            continue
        service = None if letter.run_id else letter.service
        reason = letter.reason if reason_chars is None else letter.reason[:reason_chars]
        group = (letter.run_id, service, letter.definition or None, reason)
        tally = counts.setdefault(group, [0, 0])
        tally[0] += 1
        tally[1] += len(letter.members or []) or 1
        # Only each group's member keys are kept (not the letters' member values): where they stand now, retried by
        # the next run, given up, delivered since, the catalog says.
        name = letter.definition or ""
        if name not in columns:
            columns[name] = key_column(name) if key_column is not None else None
        if columns[name] is not None:
            keys.setdefault(group, []).extend(member_keys(letter.members or [], columns[name] or ""))
    groups = [
        GroupTally(group, letters, members, _packed(keys.get(group, [])))
        for group, (letters, members) in counts.items()
    ]
    groups.sort(key=lambda g: (_label(g.key), g.key[2] or "-", g.key[3]))
    unreadable = {
        named: count for named, count in unreadable_of(letters).items() if not definition and run in (None, named)
    }
    return GroupedDeadLetters(tuple(groups), columns, unreadable)


def _packed(keys: list[str]) -> str:
    """Keys as one string (:attr:`GroupTally.packed_keys`): any key's characters, separators included, kept."""
    # ASCII (a key's other characters escaped): one character outside Latin-1 would make CPython hold the whole
    # string at 2 or 4 bytes a character.
    return json.dumps(keys, ensure_ascii=True, separators=(",", ":")) if keys else ""


def _label(group: _GroupKey) -> str:
    """The run as a table shows it (:attr:`DeadLetterGroup.run`): the listing's first sort key."""
    run_id, service, _, _ = group
    return str(run_id) if run_id else f"({service}: unreadable record)"


@dataclass(frozen=True)
class ScopedPage:
    """What of a grouped listing an actor sees (:func:`scoped_page`): how many dead letters and groups there are in
    its scope, and the groups of the page asked, before their retry cells."""

    letters: int
    total_groups: int
    shown: list[GroupTally]
    #: The records of its scope that could not be read as dead letters (:attr:`GroupedDeadLetters.unreadable`).
    unreadable: int = 0


def scoped_page(
    actor: Actor, grouped: GroupedDeadLetters, *, runs: RunUnitsReader | None, page: slice | None = None
) -> ScopedPage:
    """The groups within the actor's scope (``runs`` says the runs' business units, all read at once; None: no
    catalog, for an actor of every unit only), ``page`` of them shown (a slice of the sorted groups; None: all);
    ``letters`` and ``total_groups`` of all the groups in scope."""
    authorise(actor, Permission.READ)
    visible = _scope(actor, runs, [tally.key[0] for tally in grouped.groups] + list(grouped.unreadable))
    tallies = [tally for tally in grouped.groups if visible(tally.key[0])]
    shown = tallies[page] if page is not None else tallies
    unreadable = sum(count for named, count in grouped.unreadable.items() if visible(named))
    return ScopedPage(sum(tally.letters for tally in tallies), len(tallies), shown, unreadable)


def listed(grouped: GroupedDeadLetters, scoped: ScopedPage, *, cells: RetryCells | None) -> DeadLetterListing:
    """The listing of ``scoped`` (a page of ``grouped``), each shown group's retry cell from ``cells`` (None: no
    catalog, no cell): for each definition of the shown groups that hold keys, its key column read once
    (:meth:`RetryCells.key_column`, which keeps it) and its members' retries at most once (:meth:`RetryCells.cells`);
    a group whose definition's key column is not the one its keys were taken under gets none (never a cell of other
    members)."""
    retry: dict[_GroupKey, str | None] = {}
    if cells is not None:
        # The catalog is asked for the shown groups' members only (a page of 100 of 20,000 groups: 100 groups' keys).
        keys: dict[str, dict[_GroupKey, list[str]]] = {}
        for tally in scoped.shown:
            name = tally.key[2] or ""
            if tally.packed_keys and cells.key_column(name) == grouped.columns.get(name):
                keys.setdefault(name, {})[tally.key] = tally.keys
        for name, groups_keys in keys.items():
            retry.update(cells.cells(name, groups_keys))
    shown = [tally.shown(retry.get(tally.key)) for tally in scoped.shown]
    return DeadLetterListing(
        letters=scoped.letters, groups=shown, total_groups=scoped.total_groups, unreadable=scoped.unreadable
    )


def listing_of(
    actor: Actor,
    grouped: GroupedDeadLetters,
    *,
    runs: RunUnitsReader | None,
    cells: RetryCells | None,
    page: slice | None = None,
) -> DeadLetterListing:
    """The groups within the actor's scope, ``page`` of them, each shown group's retry cell from ``cells``
    (:func:`scoped_page`, then :func:`listed`); ``letters`` and ``total_groups`` of all the groups in scope."""
    return listed(grouped, scoped_page(actor, grouped, runs=runs, page=page), cells=cells)


def list_dead_letters(
    actor: Actor,
    letters: DeadLetterSource,
    *,
    runs: RunUnitsReader | None,
    cells: RetryCells | None,
    run: uuid.UUID | None = None,
    definition: str | None = None,
    reason_chars: int | None = REASON_CHARS,
    page: slice | None = None,
) -> DeadLetterListing:
    """The dead letters (of ``run``, of ``definition``, if given; an empty ``definition`` is no filter) within the
    actor's scope, grouped by run, definition and reason (its first ``reason_chars``; None: whole), sorted so; each
    group's retry cell from ``cells`` (None: no catalog, no cell): the key column of each definition of the dead
    letters read once (their keys taken under it), the retries at most once for each definition of the groups shown.
    ``runs`` says the scope of the runs, all read at once (None: no catalog, for an actor of every unit only).
    ``page`` (a slice of the sorted groups) keeps those groups only, and only theirs get retry cells from the catalog.
    :class:`DeadLettersUnreadable` when Kafka does not give them, :class:`Busy` when the source refuses the read (as
    many run now as it allows)."""
    authorise(actor, Permission.READ)
    grouped = group_dead_letters(
        letters.dead_letters(),
        key_column=cells.key_column if cells is not None else None,
        run=run,
        definition=definition,
        reason_chars=reason_chars,
    )
    return listing_of(actor, grouped, runs=runs, cells=cells, page=page)


def _scope(
    actor: Actor, runs: RunUnitsReader | None, run_ids: list[uuid.UUID | None]
) -> Callable[[uuid.UUID | None], bool]:
    """Whether a group's run is in the actor's scope: every one for an actor of every unit; else the runs recorded in
    its units (the units of all the groups' runs read at once, not a query a run)."""
    if not actor.business_units:
        return lambda run_id: True
    if runs is None:
        return lambda run_id: False  # no catalog to say a run's unit: none is a scoped actor's
    units = runs.business_units_of(sorted({run_id for run_id in run_ids if run_id is not None}))
    seen = {run_id for run_id, unit in units.items() if actor.sees(unit)}
    # An unreadable record (no run) names no unit: not a scoped actor's.
    return lambda run_id: run_id is not None and run_id in seen
