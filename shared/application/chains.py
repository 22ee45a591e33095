"""Chained exports: a definition whose schedule is ``after: {definition: X, statuses: [...]}`` runs after each
run of X that finishes with one of those statuses.

The notifier fires them (it sees every run finish first): :func:`request_following_runs` requests each
follower's run through :func:`shared.application.runs.request_run` under the Idempotency-Key
``after:<run id of X>:<follower's id>``, so the run of each follower is requested once per finished run of X
however often X's events are redelivered. Cycles (A after B after A) are refused when a definition is saved
(:func:`shared.application.chain_checks.chain_problems`), naming the cycle.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from shared.application.actors import Actor, Role
from shared.application.errors import Refused
from shared.application.ports import DefinitionsStore, RunsStore
from shared.application.runs import claim_idempotency_key, request_run
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.runs import RunRecord
from shared.errors import NotFound, StoredObjectInvalid
from shared.events import RunRequested, Trigger

#: Who requests chained runs (in the audit of runs: ``requested_by``), and the key prefix of their requests.
CHAIN_ACTOR = "chain"
KEY_PREFIX = "after:"


class CollectedRequests:
    """The run requests :func:`request_run` publishes, kept for the caller to produce (the notifier's loop)."""

    def __init__(self) -> None:
        self.requests: list[RunRequested] = []

    def publish_run_request(self, request: RunRequested) -> None:
        self.requests.append(request)

    def publish_run_events(self, events: object) -> None:  # pragma: no cover - request_run publishes none
        raise NotImplementedError

    def publish_member_batches(self, priority: object, batches: object) -> None:  # pragma: no cover - idem
        raise NotImplementedError


def followers(store: DefinitionsStore, finished: RunRecord) -> list[ExportDefinition]:
    """The enabled definitions chained after ``finished``'s definition with its final status."""
    return [
        definition
        for definition in store.list_objects(ExportDefinition)
        if definition.schedule.enabled
        and definition.schedule.after is not None
        and definition.schedule.after.follows(finished.definition, finished.status.value)
    ]


def follower_key(finished: RunRecord, follower_id: uuid.UUID) -> str:
    """The Idempotency-Key of a follower's run after ``finished``: one per (finished run, follower), the follower
    named by its stable id (a rename between two deliveries of the finish starts no second run)."""
    return f"{KEY_PREFIX}{finished.run_id}:{follower_id}"


def legacy_key(finished: RunRecord) -> str:
    """The key releases before per-follower keys used for every follower: ``after:<run id>`` (only the first
    follower's run was ever bound to it; the others were refused)."""
    return f"{KEY_PREFIX}{finished.run_id}"


@dataclass
class FollowingRuns:
    """What :func:`request_following_runs` did: the run requests to publish, and the followers whose run could not
    be requested, each with why (each follower on its own: one refused stops no other)."""

    requests: list[RunRequested] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def request_following_runs(finished: RunRecord, *, store: DefinitionsStore, runs: RunsStore) -> FollowingRuns:
    """The run requests to publish for the definitions chained after ``finished`` (a final run).

    Idempotent per follower: under the key ``after:<run id>:<follower id>``, asking again returns the run asked
    for before. A run asked for before and still queued (its request may have been lost with a crash before it was
    published) is asked for again under the same run id: the extractor takes a run once. A follower whose run is
    refused (deleted or made invalid meanwhile, out of the chain's scope) is in ``refused``: the others are asked
    for all the same.
    """
    outcome = FollowingRuns()
    if not finished.status.is_final:
        return outcome
    actor = Actor(name=f"{CHAIN_ACTOR}:{finished.definition}", role=Role.OPERATOR)
    legacy = _legacy_run(actor, finished, runs)
    for follower in followers(store, finished):
        collected = CollectedRequests()
        try:
            follower_id, _, _ = store.get_versioned(ExportDefinition, follower.name)
            key = follower_key(finished, follower_id)
            if legacy is not None and _same_definition(legacy, follower_id, follower.name):
                # Requested by a release before per-follower keys: that run is this follower's run under its key
                # too (a finish redelivered after an upgrade starts no second run of it).
                claim_idempotency_key(actor, key, follower.name, {}, runs=runs, run_id=legacy.run_id)
            request_run(
                actor,
                follower.name,
                store=store,
                runs=runs,
                publisher=collected,
                idempotency_key=key,
                trigger=Trigger.EVENT,
            )
        except (Refused, NotFound, StoredObjectInvalid) as exc:
            outcome.refused.append((follower.name, str(exc)))
            continue
        # A run asked for before and still queued is in it again: request_run publishes a queued run's request anew.
        outcome.requests += collected.requests
    return outcome


def _legacy_run(actor: Actor, finished: RunRecord, runs: RunsStore) -> RunRecord | None:
    """The run a release before per-follower keys requested after ``finished`` (under ``after:<run id>``), if any."""
    run_id = runs.idempotency_key_run(actor.name, "", legacy_key(finished))
    return None if run_id is None else runs.get_run(run_id)


def _same_definition(run: RunRecord, definition_id: uuid.UUID, name: str) -> bool:
    """Whether ``run`` is a run of that definition (by its id; by its name when the run recorded no id)."""
    return run.definition_id == definition_id if run.definition_id is not None else run.definition == name
