"""Use case: replay a run's dead-lettered members as a run of its own.

A replay is a run (trigger ``replay``, ``replay_of`` the original), recorded queued like any run, with
its own counts, emails and history. Its members go through the same batch encoder and record byte
bound as the extractor's, then through the definition's *current* template and profile: replay once
the endpoint or the template is fixed.

With an idempotency key (the console's, exportctl's ``--idempotency-key``), a retried replay is the replay run the
first one recorded, not another. The replay run records what it sends (its plan: members, batches, a digest of their
records) and how far Kafka acknowledged its publication (run.started, its batches, run.extraction_completed). A retry
publishes only what is left: nothing once all of it was acknowledged or its extraction is complete, only its
run.extraction_completed (from its recorded plan) once its batches were acknowledged: in these cases the dead letters
are not even read (they may have changed, or be gone). Otherwise not a batch with an outcome in the ledger (sent
already); its batches under the same keys (the dispatcher takes a republished batch as a redelivery: what Kafka may
hold without having acknowledged it, or a batch in flight, is still sent at least once). One request publishes at a
time (a claim with a lease): a double click or two concurrent retries publish once; a request waits for another's
publication ``CLAIM_WAIT_SECONDS`` at most (then :class:`Busy`, 503: retry with the same key), and a holder whose
claim was taken over (its lease ran out) stops. A retry whose dead letters give other batches (while its batches are
not acknowledged), or of a replay run that ended before its extraction was complete, is refused (409: a new key).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

from shared.application.actors import Actor, Permission, authorise
from shared.application.errors import (
    KEY_STAYS_BOUND,
    Busy,
    Conflict,
    DeadLettersUnreadable,
    Invalid,
    PublishFailed,
    RunNotPublished,
)
from shared.application.objects import existing, visible_with_id
from shared.application.ports import (
    DeadLetterSource,
    DefinitionsStore,
    EventPublisher,
    RunsStore,
    unreadable_of,
)
from shared.application.runs import claim_key, replay_fingerprint, visible_run
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.replay import (
    ALL_ACKNOWLEDGED,
    BATCHES_ACKNOWLEDGED,
    STARTED_ACKNOWLEDGED,
    ReplayPlan,
    members_to_replay,
)
from shared.domain.runs import RunRecord
from shared.events import ExtractionCompleted, Priority, RunStarted, Trigger, utc_now
from shared.member_batches import BatchEncoder, MemberTooLarge

#: How long a request's claim of a replay run's publication holds without news before another request takes it
#: over (its holder died): renewed after each of its three publications, so above one publication's bound with a
#: margin: the admin's 15 s (``PUBLISH_WAIT_SECONDS``), exportctl's ``REPLAY_PUBLISH_WAIT_SECONDS`` (30 s, its
#: producer's ``send()`` blocking for metadata included: ``shared.cli.direct.Direct.publisher``). A holder whose
#: claim was taken over anyway stops publishing at its next step (:class:`Busy`): the new holder publishes what is
#: left.
PUBLICATION_LEASE_SECONDS = 120.0
#: The longest one publication of exportctl's replay takes (handing it to the producer, its wait for a topic's
#: metadata included, and Kafka's acknowledgement).
REPLAY_PUBLISH_WAIT_SECONDS = 30.0
#: How long a request waits for another's publication of the same replay run (a double click, a concurrent retry)
#: before answering :class:`Busy` (503: retry with the same key): twice the admin's publication bound, never more
#: than the lease; it asks every ``_CLAIM_POLL_SECONDS``.
CLAIM_WAIT_SECONDS = 30.0
_CLAIM_POLL_SECONDS = 0.5

_log = logging.getLogger(__name__)


def _nothing_to_replay(run_id: uuid.UUID, unreadable: int) -> str:
    """Why a run has nothing to replay: none of its dead letters hold members, or those naming it cannot be read."""
    if not unreadable:
        return f"run {run_id} has no dead-lettered members to replay"
    return (
        f"run {run_id} has no dead-lettered members this version can read to replay: {unreadable} dead letter(s) of "
        "this run could not be read (written by a newer version?); replay with the version that wrote them"
    )


@dataclass(frozen=True)
class Replay:
    """The replay run that was started: its id, members and batches."""

    run_id: uuid.UUID
    members: int
    batches: int


def replay_dead_letters(
    actor: Actor,
    run_id: uuid.UUID,
    *,
    store: DefinitionsStore,
    runs: RunsStore,
    letters: DeadLetterSource,
    publisher: EventPublisher,
    max_record_bytes: int,
    idempotency_key: str | None = None,
    slot: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
) -> Replay:
    """Start a replay run of ``run_id``'s dead-lettered members; :class:`Invalid` when there are none.

    The replay run is recorded queued, then its events published; those Kafka does not acknowledge are
    :class:`RunNotPublished` (``replay_of`` the run). With an ``idempotency_key``, a retry is the same replay run,
    what Kafka has not acknowledged of it published again (see the module); the key used before for another request
    (a replay of another run, a run request) is :class:`Invalid` (:func:`shared.application.runs.claim_key`); a retry
    whose dead letters changed, or of a replay run that ended before its extraction was complete, is
    :class:`Conflict`. Dead letters that cannot be read are :class:`DeadLettersUnreadable`: no replay run recorded,
    saying so. ``slot`` (the admin process's bound on its uses of the dead letters,
    :meth:`services.admin.dependencies.DeadLetterReplays.slot`) is taken after the replay's checks, the key's claim and
    its catalog-only answers (a retry whose replay run's extraction is complete, or all of whose events Kafka
    acknowledged, is returned without it), and held to the end: the read of the dead letters, the replay run's record
    and its publication, a retry's publication of what is left. When it refuses, :class:`Busy` (its slug): no replay
    run recorded, saying so (the key, if any, bound to this run's replay, as when the dead letters cannot be read), or,
    when an earlier request under the key recorded the replay run, naming it (retry with the same key).
    """
    authorise(actor, Permission.RUN)
    original = visible_run(actor, run_id, runs=runs)
    definition_id, definition = visible_with_id(actor, store, ExportDefinition, original.definition)
    template = existing(store, HttpTemplate, definition.template)
    key_column = existing(store, SavedQuery, definition.query).key_column
    replay_id = uuid.uuid4()
    if idempotency_key:
        replay_id = claim_key(
            actor,
            idempotency_key,
            replay_fingerprint(run_id),
            runs=runs,
            run_id=replay_id,
            different="a replay of another run, or a run request",
        )
        # A retry with nothing left to publish reads the catalog only: answered without a slot (before: refused busy
        # while as many reads ran, saying no replay run was recorded, when it had been, and finished).
        done = _done_already(runs, replay_id, run_id) or _published_already(runs, replay_id)
        if done is not None:
            return done  # before the dead letters are read: they may be gone, or unreadable now
    # Held from here to this use case's end, not only while Kafka gives the dead letters: a retry's publication, the
    # replay run's record and its publication (a frozen broker: 15 s a step, or 30 s waiting for another request's)
    # hold the request thread too. After the key's claim: refused busy, the key is bound all the same, as the read's
    # refusal.
    with _held(slot, runs, replay_id if idempotency_key else None):
        if idempotency_key:
            done = _rest_of_plan(runs, publisher, _started(actor, definition, replay_id, run_id), definition.priority)
            if done is not None:
                return done  # before the dead letters are read: they may be gone, or unreadable now
        try:
            read = letters.dead_letters()
        except DeadLettersUnreadable as exc:  # nothing recorded yet (the key, if any, is bound: retry with it)
            raise DeadLettersUnreadable(exc.reason, replay_of=run_id, key_bound=bool(idempotency_key)) from None
        members = members_to_replay(read, run_id, key_column)
        if not members:
            raise Invalid(_nothing_to_replay(run_id, unreadable_of(read).get(run_id, 0)), slug="nothing-to-replay")
        columns = list(dict.fromkeys(column for member in members for column in member))
        encoder = BatchEncoder(
            run_id=replay_id,
            definition=definition.name,
            template=template.name,
            priority=definition.priority,
            batch_size=template.batch_size,
            max_record_bytes=max_record_bytes,
            key_column=key_column,
        )
        try:
            batches = encoder.encode_page(columns, [[m.get(c) for c in columns] for m in members], 0)
        except MemberTooLarge as exc:
            raise Invalid(str(exc), slug="member-too-large") from None
        plan = ReplayPlan.of(len(members), [batch.value for batch in batches])
        runs.record_requested_run(
            RunRecord(
                run_id=replay_id,
                definition=definition.name,
                trigger=Trigger.REPLAY.value,
                requested_by=actor.name,
                replay_of=run_id,
                last_event_at=utc_now(),
                # Under the definition it runs through (found by the replayed run's definition's name), its id and unit,
                # as a run's request records them (:func:`shared.application.runs.request_run`): a scoped operator sees,
                # follows and cancels the replay run it started (that definition is in its unit: ``visible_with_id``),
                # and its attempts are that definition's, even when the replayed run's was deleted and created again.
                definition_id=definition_id,
                business_unit=definition.business_unit,
            ),
            replay_plan=plan,
        )  # a retry's (or a concurrent request's) replay run is recorded already, with its plan: compared below
        publication = runs.replay_publication(replay_id)
        recorded = publication.plan if publication is not None else None
        if recorded is not None and recorded != plan:
            # Another request may have got its batches acknowledged meanwhile: then what is left is its plan's.
            meanwhile = _rest_of_plan(
                runs, publisher, _started(actor, definition, replay_id, run_id), definition.priority
            )
            if meanwhile is not None:
                return meanwhile
            raise Conflict(
                f"the dead letters of run {run_id} changed since replay run {replay_id} was recorded under this "
                f"Idempotency-Key ({recorded.members} members in {recorded.batches} batches then, {plan.members} in "
                f"{plan.batches} now, or other members, template or priority): its batches keep what they were; "
                "use a new key to replay them as they are now",
                slug="dead-letters-changed",
            )
        try:
            _publish(
                runs,
                publisher,
                replay_id,
                [(batch.batch_index, batch.value) for batch in batches],
                _started(actor, definition, replay_id, run_id),
                ExtractionCompleted(
                    run_id=replay_id, definition=definition.name, members=len(members), batches=len(batches)
                ),
                definition.priority,
            )
        except RunNotPublished as exc:
            if idempotency_key:
                raise
            # No key to retry with: the message says how to cancel it rather than to retry with one.
            raise RunNotPublished(replay_id, exc, replay_of=exc.replay_of, keyed=False) from exc.__cause__
        return Replay(run_id=replay_id, members=len(members), batches=len(batches))


@contextlib.contextmanager
def _held(
    slot: Callable[[], AbstractContextManager[object]], runs: RunsStore, keyed: uuid.UUID | None
) -> Iterator[None]:
    """``slot`` held over the ``with`` (the replay's use past the key's checks); :class:`Busy` when it refuses (as many
    uses of the dead letters as the process allows run now), saying what this request leaves: nothing recorded (the
    key, if any, bound), or, when ``keyed`` (the replay run of the request's Idempotency-Key) was recorded by an
    earlier request under the key (a double click's first, a retry's), that replay run, to retry with the same key."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(slot())
        except Busy as exc:  # a refusal of the slot only, not a Busy of the publication's claim (``_busy``)
            if keyed is not None and runs.get_run(keyed) is not None:  # asked now: a concurrent first may record it
                raise Busy(
                    f"{exc.reason}; replay run {keyed} was recorded by an earlier request under this key: retry with "
                    "the same key",
                    slug=exc.slug,
                ) from None
            bound = KEY_STAYS_BOUND if keyed is not None else ""
            raise Busy(f"{exc.reason}; no replay run was recorded{bound}", slug=exc.slug) from None
        yield


def _done_already(runs: RunsStore, replay_id: uuid.UUID, replayed: uuid.UUID) -> Replay | None:
    """The replay run of a retried key if its extraction is complete (nothing left to publish); :class:`Conflict`
    when it ended before its extraction was complete (failed as stuck, cancelled: publishing it again would change
    nothing); None when it is new or still to publish (:func:`_rest_of_plan` then)."""
    known = runs.get_run(replay_id)
    if known is None:
        return None
    if known.extraction_complete:
        return Replay(run_id=replay_id, members=known.extracted, batches=known.batches_expected or 0)
    if known.status.is_final:
        raise Conflict(
            f"replay run {replay_id} of run {replayed}, the replay of this Idempotency-Key, ended "
            f"{known.status.value} before its extraction was complete: use a new key to replay run {replayed} again",
            slug="replay-ended",
        )
    return None


def _published_already(runs: RunsStore, replay_id: uuid.UUID) -> Replay | None:
    """The replay run of a retried key once Kafka acknowledged all of its events, from its recorded plan (what
    :func:`_rest_of_plan` returns then, publishing nothing); None while some are still to publish."""
    publication = runs.replay_publication(replay_id)
    if publication is None or publication.plan is None or publication.acknowledged < ALL_ACKNOWLEDGED:
        return None
    return Replay(run_id=replay_id, members=publication.plan.members, batches=publication.plan.batches)


def _started(actor: Actor, definition: ExportDefinition, replay_id: uuid.UUID, replayed: uuid.UUID) -> RunStarted:
    return RunStarted(
        run_id=replay_id,
        definition=definition.name,
        trigger=Trigger.REPLAY,
        requested_by=actor.name,
        replay_of=replayed,
    )


def _rest_of_plan(runs: RunsStore, publisher: EventPublisher, started: RunStarted, priority: Priority) -> Replay | None:
    """The replay run of a retried key once Kafka acknowledged its batches, from its recorded plan, the dead letters
    not read (they may have changed, or be gone): nothing published once Kafka acknowledged all of it, else (the
    usual 503) only its ``run.extraction_completed``. None when its batches are still to publish."""
    replay_id = started.run_id
    publication = runs.replay_publication(replay_id)
    if publication is None or publication.plan is None or publication.acknowledged < BATCHES_ACKNOWLEDGED:
        return None
    plan = publication.plan
    if publication.acknowledged < ALL_ACKNOWLEDGED:
        completed = ExtractionCompleted(
            run_id=replay_id, definition=started.definition, members=plan.members, batches=plan.batches
        )
        _publish(runs, publisher, replay_id, [], started, completed, priority)
    return Replay(run_id=replay_id, members=plan.members, batches=plan.batches)


def _publish(
    runs: RunsStore,
    publisher: EventPublisher,
    replay_id: uuid.UUID,
    batches: list[tuple[int, bytes]],
    started: RunStarted,
    completed: ExtractionCompleted,
    priority: Priority,
) -> None:
    """Publish the replay run's events that Kafka has not acknowledged yet, under a claim of its publication (one
    request at a time: a concurrent one waits for it, then publishes only what is left). Skipped: ``run.started``
    once folded or acknowledged, the batches once acknowledged, and each batch with an outcome in the ledger (sent
    already). :class:`RunNotPublished` when Kafka does not acknowledge them; the claim is then released.
    :class:`Busy` when another request holds the claim past ``CLAIM_WAIT_SECONDS``, or took it over (this one's
    lease ran out) while this one published: it stops, the other publishes what is left."""
    claimant = str(uuid.uuid4())
    deadline = time.monotonic() + min(CLAIM_WAIT_SECONDS, PUBLICATION_LEASE_SECONDS)
    while not runs.claim_replay_publication(replay_id, claimant, PUBLICATION_LEASE_SECONDS):
        publication = runs.replay_publication(replay_id)
        if publication is None or publication.acknowledged >= ALL_ACKNOWLEDGED:
            return  # another request published it all
        if time.monotonic() >= deadline:
            raise _busy(replay_id, started)
        time.sleep(_CLAIM_POLL_SECONDS)  # another request publishes it now: its outcome decides what is left
    try:
        publication = runs.replay_publication(replay_id)
        acknowledged = publication.acknowledged if publication is not None else 0
        record = runs.get_run(replay_id)
        # In this order, each acknowledged before the next: the notifier sees the run start, then its
        # batches' outcomes can only follow batches that exist, then the count they must add up to.
        if acknowledged < STARTED_ACKNOWLEDGED and (record is None or record.started_at is None):
            publisher.publish_run_events([started])
        if not runs.replay_step_acknowledged(replay_id, claimant, STARTED_ACKNOWLEDGED):
            raise _busy(replay_id, started)  # taken over: its new holder publishes the rest
        if acknowledged < BATCHES_ACKNOWLEDGED:
            sent = runs.batches_with_outcomes(replay_id)
            unsent = [(f"{replay_id}:{index}", value) for index, value in batches if index not in sent]
            if unsent:
                publisher.publish_member_batches(priority, unsent)
        if not runs.replay_step_acknowledged(replay_id, claimant, BATCHES_ACKNOWLEDGED):
            raise _busy(replay_id, started)
        publisher.publish_run_events([completed])
        runs.replay_step_acknowledged(replay_id, claimant, ALL_ACKNOWLEDGED)  # not ours: acknowledged all the same
    except PublishFailed as exc:
        _release(runs, replay_id, claimant)
        raise RunNotPublished(replay_id, exc, replay_of=started.replay_of) from exc
    except BaseException:
        _release(runs, replay_id, claimant)
        raise


def _busy(replay_id: uuid.UUID, started: RunStarted) -> Busy:
    return Busy(
        f"replay run {replay_id} of run {started.replay_of} is being published by another request (the same "
        "Idempotency-Key): retry with the same key",
        slug="replay-being-published",
    )


def _release(runs: RunsStore, replay_id: uuid.UUID, claimant: str) -> None:
    """Release the claim after a failure, which propagates: a catalog failing now too is logged, not raised over it
    (the claim then lapses with its lease)."""
    try:
        runs.release_replay_publication(replay_id, claimant)
    except Exception as exc:  # noqa: BLE001 - the failure that propagates is the first one, not this
        _log.warning("replay run %s: its publication's claim could not be released: %s", replay_id, type(exc).__name__)
