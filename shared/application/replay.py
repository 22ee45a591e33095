"""Use case: replay a run's dead-lettered members as a run of its own.

A replay is a run (trigger ``replay``, ``replay_of`` the original), recorded queued like any run, with
its own counts, emails and history. Its members go through the same batch encoder and record byte
bound as the extractor's, then through the definition's *current* template and profile: replay once
the endpoint or the template is fixed.

With an idempotency key (the console's, exportctl's ``--idempotency-key``), a retried replay is the replay run the
first one recorded, not another: while that run's extraction is not complete (its last event, published after
the others were acknowledged, not folded yet: Kafka may not have acknowledged them), its events are published
again under its id, its batches under the same keys (the dispatcher takes a republished batch as a redelivery).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared.application.actors import Actor, Permission, authorise
from shared.application.errors import Invalid, PublishFailed, RunNotPublished
from shared.application.objects import existing, visible
from shared.application.ports import DeadLetterSource, DefinitionsStore, EventPublisher, RunsStore
from shared.application.runs import claim_key, replay_fingerprint, visible_run
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.replay import members_to_replay
from shared.domain.runs import RunRecord
from shared.events import ExtractionCompleted, RunStarted, Trigger, utc_now
from shared.member_batches import BatchEncoder, MemberTooLarge


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
) -> Replay:
    """Start a replay run of ``run_id``'s dead-lettered members; :class:`Invalid` when there are none.

    The replay run is recorded queued, then its events published; those Kafka does not acknowledge are
    :class:`RunNotPublished` (``replay_of`` the run). With an ``idempotency_key``, a retry is the same replay run,
    published again while its extraction is not complete (see the module); the key used before for another request
    (a replay of another run, a run request) is :class:`Invalid` (:func:`shared.application.runs.claim_key`).
    """
    authorise(actor, Permission.RUN)
    original = visible_run(actor, run_id, runs=runs)
    definition = visible(actor, store, ExportDefinition, original.definition)
    template = existing(store, HttpTemplate, definition.template)
    key_column = existing(store, SavedQuery, definition.query).key_column
    replay_id = uuid.uuid4()
    known = None
    if idempotency_key:
        replay_id = claim_key(
            actor,
            idempotency_key,
            replay_fingerprint(run_id),
            runs=runs,
            run_id=replay_id,
            different="a replay of another run, or a run request",
        )
        known = runs.get_run(replay_id)
    members = members_to_replay(letters.dead_letters(), run_id, key_column)
    if not members:
        raise Invalid(f"run {run_id} has no dead-lettered members to replay", slug="nothing-to-replay")
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
    replay = Replay(run_id=replay_id, members=len(members), batches=len(batches))
    if known is not None and (known.extraction_complete or known.status.is_final):
        return replay  # its events all reached Kafka (or it ended): nothing to publish again
    if known is None:
        runs.record_requested_run(
            RunRecord(
                run_id=replay_id,
                definition=definition.name,
                trigger=Trigger.REPLAY.value,
                requested_by=actor.name,
                replay_of=run_id,
                last_event_at=utc_now(),
            )
        )
    started = RunStarted(
        run_id=replay_id,
        definition=definition.name,
        trigger=Trigger.REPLAY,
        requested_by=actor.name,
        replay_of=run_id,
    )
    try:
        # In this order, each acknowledged before the next: the notifier sees the run start, then its
        # batches' outcomes can only follow batches that exist, then the count they must add up to.
        publisher.publish_run_events([started])
        publisher.publish_member_batches(
            definition.priority, [(f"{replay_id}:{batch.batch_index}", batch.value) for batch in batches]
        )
        publisher.publish_run_events(
            [
                ExtractionCompleted(
                    run_id=replay_id, definition=definition.name, members=len(members), batches=len(batches)
                )
            ]
        )
    except PublishFailed as exc:
        raise RunNotPublished(replay_id, exc, replay_of=run_id) from exc
    return replay
