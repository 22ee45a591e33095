"""Use case: list the dead letters grouped by run, definition and reason, with member counts and where those
members' retries stand: what ``exportctl dead-letters list`` (both modes), the admin API's ``GET /dead-letters`` and
the console's dead-letters page of a run show, one reading of the topic for all of them.

Scoped as the runs are (:func:`shared.application.runs.visible_run`): a business-unit-scoped actor sees the dead
letters of the runs recorded in its units only; an unreadable record (no run) only an actor of every unit.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.application.actors import Actor, Permission, authorise
from shared.application.dead_letter_retries import RetryStates, dead_letter_key_column, dead_letter_retries
from shared.application.errors import Refused
from shared.application.ports import DeadLetterSource, DefinitionsStore, RunUnitsReader
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
    group's retry cell from ``cells`` (None: no catalog, no cell), one catalog read per definition. ``runs`` says the
    scope of the runs, all read at once (None: no catalog, for an actor of every unit only). ``page`` (a slice of the
    sorted groups) keeps those groups only, and only theirs get retry cells from the catalog.
    :class:`DeadLettersUnreadable` when Kafka does not give them, :class:`Busy` when the source refuses the read (as
    many run now as it allows)."""
    authorise(actor, Permission.READ)
    chosen = [
        letter
        for letter in letters.dead_letters()
        if (run is None or letter.run_id == run) and (not definition or letter.definition == definition)
    ]
    visible = _scope(actor, runs, chosen)
    counts: dict[_GroupKey, int] = {}
    keys: dict[str, dict[_GroupKey, list[str]]] = {}
    total = 0
    for letter in chosen:
        if not visible(letter):
            continue
        total += 1
        service = None if letter.run_id else letter.service
        reason = letter.reason if reason_chars is None else letter.reason[:reason_chars]
        group = (letter.run_id, service, letter.definition or None, reason)
        counts[group] = counts.get(group, 0) + (len(letter.members or []) or 1)
        # Only each group's member keys are kept (not the letters' member values): where they stand now, retried by
        # the next run, given up, delivered since, the catalog says.
        column = cells.key_column(letter.definition or "") if cells is not None else None
        if column is not None:
            keys.setdefault(letter.definition or "", {}).setdefault(group, []).extend(
                member_keys(letter.members or [], column)
            )
    groups = [
        DeadLetterGroup(run_id=run_id, service=service, definition=name, reason=reason, members=members)
        for (run_id, service, name, reason), members in counts.items()
    ]
    groups.sort(key=lambda g: (g.run, g.definition or "-", g.reason))
    shown = groups[page] if page is not None else groups
    if cells is None:
        return DeadLetterListing(letters=total, groups=shown, total_groups=len(groups))
    # The catalog is asked for the shown groups' members only (a page of 100 of 20,000 groups: 100 groups' keys).
    wanted = {(g.run_id, g.service, g.definition, g.reason) for g in shown}
    retry: dict[_GroupKey, str | None] = {}
    for name, groups_keys in keys.items():
        retry.update(cells.cells(name, {group: k for group, k in groups_keys.items() if group in wanted}))
    shown = [dataclasses.replace(g, retry=retry.get((g.run_id, g.service, g.definition, g.reason))) for g in shown]
    return DeadLetterListing(letters=total, groups=shown, total_groups=len(groups))


def _scope(actor: Actor, runs: RunUnitsReader | None, letters: list[DeadLetter]) -> Callable[[DeadLetter], bool]:
    """Whether a dead letter is in the actor's scope: every one for an actor of every unit; else those of runs
    recorded in its units (the units of all the letters' runs read at once, not a query a run)."""
    if not actor.business_units:
        return lambda letter: True
    if runs is None:
        return lambda letter: False  # no catalog to say a run's unit: none is a scoped actor's
    units = runs.business_units_of(sorted({letter.run_id for letter in letters if letter.run_id is not None}))
    seen = {run_id for run_id, unit in units.items() if actor.sees(unit)}
    # An unreadable record (no run) names no unit: not a scoped actor's.
    return lambda letter: letter.run_id is not None and letter.run_id in seen
