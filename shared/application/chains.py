"""Chained exports: a definition whose schedule is ``after: {definition: X, statuses: [...]}`` runs after each
run of X that finishes with one of those statuses.

The notifier fires them (it sees every run finish first): :func:`request_following_runs` requests each
follower's run through :func:`shared.application.runs.request_run` under the Idempotency-Key
``after:<run id of X>``, so the run of a follower is requested once per finished run of X however often
X's events are redelivered. Cycles (A after B after A) are refused when a definition is saved
(:func:`shared.application.chain_checks.chain_problems`), naming the cycle.
"""

from __future__ import annotations

from shared.application.actors import Actor, Role
from shared.application.ports import DefinitionsStore, RunsStore
from shared.application.runs import request_run
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.runs import RunRecord
from shared.events import RunRequested, Trigger

#: Who requests chained runs (in the audit of runs: ``requested_by``), and the key prefix of their requests.
CHAIN_ACTOR = "chain"
KEY_PREFIX = "after:"


class _Collected:
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


def request_following_runs(finished: RunRecord, *, store: DefinitionsStore, runs: RunsStore) -> list[RunRequested]:
    """The run requests to publish for the definitions chained after ``finished`` (a final run).

    Idempotent: under the key ``after:<run id>``, asking again returns the run asked for before. A run asked
    for before and still queued (its request may have been lost with a crash before it was published) is
    asked for again under the same run id: the extractor takes a run once.
    """
    if not finished.status.is_final:
        return []
    requests: list[RunRequested] = []
    for follower in followers(store, finished):
        actor = Actor(name=f"{CHAIN_ACTOR}:{finished.definition}", role=Role.OPERATOR)
        collected = _Collected()
        request_run(
            actor,
            follower.name,
            store=store,
            runs=runs,
            publisher=collected,
            idempotency_key=f"{KEY_PREFIX}{finished.run_id}",
            trigger=Trigger.EVENT,
        )
        # A run asked for before and still queued is in it again: request_run publishes a queued run's request anew.
        requests += collected.requests
    return requests
