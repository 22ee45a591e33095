"""Start a round's due run requests together, ahead of their extraction (issue 18: a burst of scheduled runs).

One by one, a run is started only once the run before it has been extracted: a burst of 4,000 small runs due at
one instant took about 25 s to start. Here the runs a round is given (every due request the extractor holds, see
``EXPORT_EXTRACTOR_START_BATCH``) are started first, in chunks of at most ``chunk``: their definitions, queries
and templates read together (each once), their claims in one catalog transaction
(:meth:`~shared.catalog.extraction_store.SqlExtractionStore.start_runs`: the sync fixed by the one rule,
:func:`~services.extractor.run_sync.fixed_sync`, and marked announced), and their ``run.started`` published
together and acknowledged before that transaction commits. Their extraction follows, one by one, in this round
and the next (the requests a round has not begun are handed back uncommitted): the run's claim then finds its sync
announced and publishes no second ``run.started`` (see ``Extractor._run``), in this replica or, after a crash or a
rebalance, in another.

Only the plain case is started here; whatever needs the one-by-one path's judgement is left to it, untouched:
range requests, runs whose definition, query or template is missing or whose parameters do not bind (they fail
there), scheduled runs withdrawn since they were published or skipped for an overlap (judged there, counted and
recorded as before; of a skip-definition's scheduled runs in a bulk only the earliest is started, as one by one
the next would find it active), runs cancelled, finished or started before (resumed there).

The definitions of the requests a round holds until their instant are read ahead (:meth:`BulkStarts.prepare`): the
definitions store keeps the objects it validated by row and version
(:class:`~shared.catalog.validated_objects.ValidatedObjects`), so that at the instant a start reads every row again
(a definition changed, withdrawn or deleted meanwhile is judged as it is stored then) but validates only those
changed since (issue 18: reading and validating them was some 40% of a bulk start's CPU under cProfile).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial

import structlog
from prometheus_client import Counter

from services.extractor.ports import ExtractionStore, ExtractorDefinitions, ExtractorRuns
from services.extractor.run_sync import DEFAULT_RECORD_MEMBERS, fixed_sync, record_size
from services.extractor.scheduled_runs import StartTimes, published_ahead, withdrawal
from shared.domain.catalog_objects import RunObjects
from shared.domain.checkpoints import Checkpoint, RunStart
from shared.domain.query_parameters import ParameterError, bind_values
from shared.domain.schedule import Overlap
from shared.events import RangeRequested, RunRequested, RunStarted
from shared.kafka import InFlight, Outgoing
from shared.topics import Topics

log = structlog.get_logger(__name__)

STARTED_TOGETHER = Counter(
    "member_export_extractor_runs_started_together_total",
    "Runs started in bulk, ahead of their extraction (a round's due run requests claimed in one transaction).",
)

#: Runs claimed in one transaction (and their run.started acknowledged together) at most.
START_CHUNK = 1000
#: How long the claims' transaction waits for the broker to acknowledge their run.started at most (seconds): it
#: holds the catalog's write lock meanwhile (SQLite locks the whole database), and every other catalog writer (the
#: API, the scheduler, the notifier, other replicas) waits for it up to SQLite's busy timeout (30 s, see
#: shared.catalog.engine) before failing with "database is locked". Well below that, with margin: a start not
#: acknowledged by then rolls back and its runs start one by one (their run.started then perhaps sent twice).
START_ACK_SECONDS = 5.0
#: Run ids remembered as considered in bulk (started, or left to the one-by-one path) and not handled yet, at most
#: (forgotten beyond: a later round reads and claims them again, which finds them started, or declines them again).
REMEMBERED = 100_000


def started_event(request: RunRequested, definition: str, topic: str) -> Outgoing:
    """The ``run.started`` record of ``request``'s run."""
    event = RunStarted(
        run_id=request.run_id,
        definition=definition,
        trigger=request.trigger,
        requested_by=request.requested_by,
        requested_at=request.requested_at,
        scheduled_for=request.scheduled_for,
        allow_mass_removal=request.allow_mass_removal,
    )
    return Outgoing(topic, str(request.run_id), event.to_bytes())


class BulkStarts:
    """Starts run requests together (``__call__``); ``considered`` holds the runs it started or left to the
    one-by-one path and not handled since (:meth:`handled` forgets one), so a round does not read and claim them
    again; ``started`` those it started (their definitions: an overlap among them)."""

    def __init__(
        self,
        *,
        definitions: ExtractorDefinitions,
        runs: ExtractorRuns,
        extraction: ExtractionStore,
        topics: Topics,
        send: Callable[[list[Outgoing]], InFlight],
        start_times: StartTimes,
        chunk: int = START_CHUNK,
        ack_seconds: float = START_ACK_SECONDS,
        record_members: int = DEFAULT_RECORD_MEMBERS,
    ) -> None:
        self.definitions, self.runs, self.extraction = definitions, runs, extraction
        self.topics = topics
        self.send = send
        self.ack_seconds = ack_seconds
        self.start_times = start_times
        #: Members per record a one-member template's records hold (each run's record size is fixed as it starts).
        self.record_members = record_members
        self.chunk = max(1, chunk)
        #: The runs started in bulk and not handled since, with their definition's name.
        self.started: dict[uuid.UUID, str] = {}
        #: The runs considered in bulk (started, or left to the one-by-one path: started before, elsewhere or one
        #: by one, withdrawn, overlapping, failing) and not handled since: a later round does not read and claim
        #: them again (the requests a round does not extract come back in the next, round after round).
        self.considered: set[uuid.UUID] = set()

    def prepare(self, requests: Sequence[RunRequested | RangeRequested]) -> None:
        """Read the definitions (and their queries and templates) of ``requests`` held until their instant, as
        their start will: the store keeps what it validated (by row and version, see
        :class:`~shared.catalog.validated_objects.ValidatedObjects`), so that at the instant their start only reads
        them again. What is judged is not: the start reads every row again, and validates one changed since."""
        held = [r for r in requests if isinstance(r, RunRequested) and r.run_id not in self.considered]
        for first in range(0, len(held), self.chunk):
            self._read(held[first : first + self.chunk])

    def _read(self, requests: list[RunRequested]) -> tuple[dict[str, RunObjects], dict[uuid.UUID, RunObjects]]:
        """The run objects of ``requests``' definitions: by name, and (a run published ahead) by id."""
        return self.definitions.many_run_objects(
            names=sorted({r.definition for r in requests if _definition_id(r) is None}),
            definition_ids=sorted({i for r in requests if (i := _definition_id(r)) is not None}, key=str),
        )

    def handled(self, run_id: uuid.UUID) -> None:
        """The run's request was handled (its extraction begun and over): a later round may consider it again."""
        self.started.pop(run_id, None)
        self.considered.discard(run_id)

    def __call__(
        self, requests: Sequence[RunRequested | RangeRequested], *, stopping: Callable[[], bool] = lambda: False
    ) -> int:
        """Start those of ``requests`` that the bulk path covers and that are not started yet; how many started.
        Once ``stopping``, no further chunk is begun: the process may be killed soon, and killed between a chunk's
        acknowledgement and its commit, that chunk's run.started are sent again by the runs' next claim."""
        pending = [r for r in requests if isinstance(r, RunRequested) and r.run_id not in self.considered]
        started = 0
        for first in range(0, len(pending), self.chunk):
            if stopping():
                break
            started += self._start(pending[first : first + self.chunk])
        return started

    def _start(self, requests: list[RunRequested]) -> int:
        named, identified = self._read(requests)
        chosen: list[tuple[RunRequested, RunObjects]] = []
        for request in requests:
            definition_id = _definition_id(request)
            objects = named.get(request.definition) if definition_id is None else identified.get(definition_id)
            if objects is None or not _binds(request, objects):
                continue
            if published_ahead(request) and withdrawal(request, objects.definition) is not None:
                continue  # withdrawn: judged (and counted) by the one-by-one path
            chosen.append((request, objects))
        chosen = self._without_overlaps(chosen)
        self._consider(requests)  # a chunk that fails (an outage) is not: a later round tries it again
        if not chosen:
            return 0
        requested = {request.run_id: (request, objects) for request, objects in chosen}
        starts = [
            RunStart(
                request.run_id,
                objects.definition.name,
                partial(fixed_sync, objects.definition, record_size=record_size(objects.template, self.record_members)),
            )
            for request, objects in chosen
        ]

        def announce(done: list[Checkpoint]) -> None:
            # Acknowledged before the claims commit: a sync marked announced means run.started was published. Not
            # waited for longer than ack_seconds: the transaction holds the catalog's write lock meanwhile.
            topic = self.topics.run_events
            self.send(
                [started_event(requested[c.run_id][0], requested[c.run_id][1].definition.name, topic) for c in done]
            ).wait(timeout_seconds=self.ack_seconds)

        try:
            checkpoints = self.extraction.start_runs(starts, announce)
        except BaseException:
            self.considered.difference_update(request.run_id for request, _objects in chosen)
            raise
        if len(self.started) + len(checkpoints) > REMEMBERED:
            self.started.clear()
        for checkpoint in checkpoints:
            self.started[checkpoint.run_id] = requested[checkpoint.run_id][1].definition.name
            self.start_times.observe_start(requested[checkpoint.run_id][0])
        STARTED_TOGETHER.inc(len(checkpoints))
        log.info("runs started together", runs=len(checkpoints), requests=len(requests))
        return len(checkpoints)

    def _consider(self, requests: list[RunRequested]) -> None:
        if len(self.considered) + len(requests) > REMEMBERED:
            self.considered.clear()
        self.considered.update(request.run_id for request in requests)

    def _without_overlaps(self, chosen: list[tuple[RunRequested, RunObjects]]) -> list[tuple[RunRequested, RunObjects]]:
        """Without the scheduled runs of a definition with overlap ``skip`` that another run of it would make
        wait: one active in the catalog (one read for all their definitions), one started in bulk and not
        extracted yet (its run record may not be folded yet), or another of this bulk (one by one, the first
        started would be active when the next is judged). Of a definition's scheduled runs in the bulk only the
        earliest is kept, and none when the bulk has another run of it; the one-by-one path judges the rest (and
        records them skipped)."""
        skipping = {
            objects.definition.name
            for request, objects in chosen
            if published_ahead(request) and objects.definition.schedule.overlap is Overlap.SKIP
        }
        if not skipping:
            return chosen
        active = self.runs.active_runs(sorted(skipping))
        started = {name for name in self.started.values() if name in skipping}
        earliest: dict[str, RunRequested] = {}
        others: set[str] = set()  # definitions with a run in the bulk not published ahead (a manual one, say)
        for request, objects in chosen:
            name = objects.definition.name
            if name not in skipping:
                continue
            if not published_ahead(request):
                others.add(name)
            elif (first := earliest.get(name)) is None or _instant(request) < _instant(first):
                earliest[name] = request
        return [
            (request, objects)
            for request, objects in chosen
            if not (published_ahead(request) and objects.definition.name in skipping)
            or (
                active.get(objects.definition.name) in (None, request.run_id)
                and objects.definition.name not in started
                and objects.definition.name not in others
                and earliest[objects.definition.name] is request
            )
        ]


def _definition_id(request: RunRequested) -> uuid.UUID | None:
    """The id a run is read by, as the one-by-one read does: a run published ahead by the definition it was
    published for (its id); None for the others, read by name."""
    return request.definition_id if published_ahead(request) else None


def _instant(request: RunRequested) -> datetime:
    """A run published ahead's instant."""
    assert request.scheduled_for is not None
    return request.scheduled_for


def _binds(request: RunRequested, objects: RunObjects) -> bool:
    """Whether the run's parameters bind to its query (else it fails, on the one-by-one path)."""
    if objects.query is None or objects.template is None:
        return False
    try:
        bind_values(objects.query.parameters, request.parameters, objects.definition.parameters)
    except ParameterError:
        return False
    return True
