"""Use cases of runs: request one (on demand), cancel one, read and list them within the actor's scope."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from shared.application.actors import Actor, Permission, authorise
from shared.application.errors import CancelNotPublished, Conflict, Invalid, Missing, PublishFailed, RunNotPublished
from shared.application.objects import existing, visible_with_id
from shared.application.ports import DefinitionsStore, EventPublisher, RunsReader, RunsStore
from shared.domain.catalog_objects import ExportDefinition, SavedQuery
from shared.domain.query_parameters import ParameterError, bind_values
from shared.domain.runs import RunRecord, RunStatus
from shared.events import RunCancelled, RunRequested, Trigger, utc_now


def validated_parameters(
    definition: ExportDefinition, store: DefinitionsStore, parameters: dict[str, Any]
) -> dict[str, Any]:
    """``parameters`` if they bind with the query's declarations and the definition's values; else :class:`Invalid`."""
    query = existing(store, SavedQuery, definition.query)
    try:
        bind_values(query.parameters, parameters, definition.parameters)
    except ParameterError as exc:
        raise Invalid(f"parameters: {exc}", slug="invalid-parameters") from None
    return parameters


def request_run(
    actor: Actor,
    name: str,
    *,
    store: DefinitionsStore,
    runs: RunsStore,
    publisher: EventPublisher,
    parameters: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    trigger: Trigger = Trigger.MANUAL,
    allow_mass_removal: bool = False,
) -> RunRecord:
    """Execute a definition now (trigger manual, or ``event`` for a chained export): parameters checked, the run
    recorded queued, then published. ``allow_mass_removal``: a change-mode run may remove more members than the
    definition's ``sync.max_removed`` allows (this run only).

    Recorded before it is published: the run is visible (queued) at once, and a crash between the two
    leaves a queued run the notifier's sweep fails as stuck rather than a run nobody knows about. A publication
    Kafka does not acknowledge is :class:`RunNotPublished` (the run stays recorded queued). With an
    ``idempotency_key``, a retried request returns the run the first one started and starts no other; while that
    run is still queued (its request may not have been published: a crash, Kafka down), its request is published
    again under the same run id, which the extractor starts once. The key reused for a different request is
    :class:`Invalid` (see :func:`claim_idempotency_key`).
    """
    authorise(actor, Permission.RUN)
    definition_id, definition = visible_with_id(actor, store, ExportDefinition, name)
    parameters = validated_parameters(definition, store, parameters or {})
    run_id = uuid.uuid4()
    if idempotency_key:
        run_id = claim_idempotency_key(
            actor,
            idempotency_key,
            definition.name,
            parameters,
            runs=runs,
            run_id=run_id,
            allow_mass_removal=allow_mass_removal,
        )
        known = runs.get_run(run_id)
        if known is not None:
            if known.status is RunStatus.QUEUED and known.started_at is None:
                _publish(publisher, known, trigger, parameters, allow_mass_removal, keyed=True)
            return known
    requested_at = utc_now()
    record = RunRecord(
        run_id=run_id,
        definition=definition.name,
        trigger=trigger.value,
        requested_by=actor.name,
        requested_at=requested_at,
        last_event_at=requested_at,
        definition_id=definition_id,
        business_unit=definition.business_unit,
        mass_removal_allowed=allow_mass_removal,
    )
    runs.record_requested_run(record)
    _publish(publisher, record, trigger, parameters, allow_mass_removal, keyed=bool(idempotency_key))
    return record


def _publish(
    publisher: EventPublisher,
    record: RunRecord,
    trigger: Trigger,
    parameters: dict[str, Any],
    allow_mass_removal: bool,
    *,
    keyed: bool,
) -> None:
    """Publish the request of ``record`` (a queued run); :class:`RunNotPublished` when Kafka does not acknowledge it
    (``keyed``: requested with an Idempotency-Key, which a retry publishes it again with)."""
    request = RunRequested(
        run_id=record.run_id,
        definition=record.definition,
        trigger=trigger,
        requested_by=record.requested_by,
        requested_at=record.requested_at or utc_now(),
        parameters=parameters,
        allow_mass_removal=allow_mass_removal,
    )
    try:
        publisher.publish_run_request(request)
    except PublishFailed as exc:
        raise RunNotPublished(record.run_id, exc, keyed=keyed) from exc


def request_fingerprint(definition: str, parameters: dict[str, Any], *, allow_mass_removal: bool = False) -> str:
    """What identifies a run request under an idempotency key: the definition, the parameters as sent, and a
    mass removal allowed (only when it is: the keys of requests made before it existed stay the same)."""
    request: dict[str, Any] = {"definition": definition, "parameters": parameters}
    if allow_mass_removal:
        request["allow_mass_removal"] = True
    return _fingerprint(request)


def replay_fingerprint(replayed: uuid.UUID) -> str:
    """What identifies a replay request under an idempotency key: the run whose dead letters it replays (no key of
    a run request has a ``replay_of``: a key of one is never taken for the other)."""
    return _fingerprint({"replay_of": str(replayed)})


def _fingerprint(request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Why a key reused for a different request is refused (its kind's words for "different").
_REUSED = (
    "Idempotency-Key '{key}' was already used for a different request ({different}): use a new key for a new "
    "request, the same key only to retry the same request"
)


def claim_idempotency_key(
    actor: Actor,
    key: str,
    definition: str,
    parameters: dict[str, Any],
    *,
    runs: RunsStore,
    run_id: uuid.UUID,
    allow_mass_removal: bool = False,
) -> uuid.UUID:
    """The run of the caller's run request under ``key``: see :func:`claim_key`."""
    fingerprint = request_fingerprint(definition, parameters, allow_mass_removal=allow_mass_removal)
    different = "another definition, other parameters, or a mass removal allowed or not"
    return claim_key(actor, key, fingerprint, runs=runs, run_id=run_id, different=different)


def claim_key(
    actor: Actor, key: str, fingerprint: str, *, runs: RunsStore, run_id: uuid.UUID, different: str
) -> uuid.UUID:
    """The run of the caller's ``key``: ``run_id`` when the key is new, the earlier run when the same request (its
    ``fingerprint``: a run request's, a replay's) was made with it before; :class:`Invalid` when it was used for a
    different request (``different`` says what differs, in the refusal).

    As the IETF Idempotency-Key draft says, a key names one request: reusing it with another definition or
    other parameters (another run replayed) is a client error (422), not the earlier run (which would hide that
    nothing started). Two claims, each atomic in the store: first the request's (key and fingerprint) gets a run,
    then the key alone is bound to that run. Whichever request binds the key first owns it; any other request
    under it finds the key bound to another run. Two concurrent retries of one request find the same run
    in both claims, so neither is refused.
    """
    request_run_id = runs.claim_idempotency_key(actor.name, f"request:{fingerprint}", key, run_id)
    # The key alone, scoped by caller only (the definition is part of the request): "" is no definition name.
    key_run_id = runs.claim_idempotency_key(actor.name, "", key, request_run_id)
    if key_run_id != request_run_id:
        raise Invalid(_REUSED.format(key=key, different=different), slug="idempotency-key-reused")
    return key_run_id


def visible_run(actor: Actor, run_id: uuid.UUID, *, runs: RunsReader) -> RunRecord:
    """A run, if it exists and the business unit recorded on it is in the actor's scope.

    Scoped by what the run recorded (its definition's id and unit then), not by the definition's
    name now: a renamed or deleted definition's runs keep their scope, and a re-created name inherits
    no other unit's history. A run out of scope is answered as missing (its existence is not told).
    """
    record = runs.get_run(run_id)
    if record is None or not actor.sees(record.business_unit):
        raise Missing(f"run {run_id} does not exist")
    return record


def cancel_run(
    actor: Actor, run_id: uuid.UUID, *, store: DefinitionsStore, runs: RunsStore, publisher: EventPublisher
) -> RunRecord:
    """Cancel a run: extraction stops, undelivered batches are not sent; :class:`Conflict` once it has finished
    otherwise than cancelled. A run already cancelled is answered as it is, its cancellation published again while
    the notifier has not handled its finish: a cancel whose event Kafka did not acknowledge
    (:class:`CancelNotPublished`, the cancellation recorded) is retried by cancelling again (the event folds into a
    cancelled run as nothing); once its finish is handled (the event, or the notifier's sweep, reached it), nothing
    is published again."""
    authorise(actor, Permission.RUN)
    record = visible_run(actor, run_id, runs=runs)
    if record.status.is_final and record.status is not RunStatus.CANCELLED:
        raise Conflict(f"run {run_id} has finished ({record.status.value})", slug="run-finished")
    if record.status is RunStatus.CANCELLED and run_id not in runs.finishes_unhandled([run_id]):
        return record  # its cancellation handled: publishing it again would tell no one anything
    cancelled = RunCancelled(run_id=run_id, definition=record.definition, requested_by=actor.name)
    # Folded here so the cancellation holds at once (the extractor and dispatcher read the record), and
    # published for everyone else following the run events.
    _, after = runs.fold_run_event(cancelled)
    try:
        publisher.publish_run_events([cancelled])
    except PublishFailed as exc:
        raise CancelNotPublished(run_id, exc) from exc
    return after


def units_in_scope(actor: Actor) -> frozenset[str] | None:
    """The business units whose runs the actor may see (None: all)."""
    return actor.business_units or None
