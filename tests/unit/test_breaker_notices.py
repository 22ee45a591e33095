"""The notifier's side of circuit breaker notices: run-events records decode to either kind, a poll's breaker
changes go to the mails and its run events to the fold, each answered in its place."""

from __future__ import annotations

import uuid

from services.notifier.breaker_notices import compose, decode, with_breaker_mails
from shared.domain.catalog_objects import ExportDefinition
from shared.events import CircuitBreakerChanged, RunStarted, Trigger
from shared.kafka import Outgoing


def test_run_events_records_decode_to_run_events_or_breaker_changes():
    run = RunStarted(run_id=uuid.uuid4(), definition="d", trigger=Trigger.MANUAL)
    change = CircuitBreakerChanged(profile="p", state="open", episode=1)
    assert decode(run.to_bytes()) == run
    assert decode(change.to_bytes()) == change


def test_a_poll_mixing_both_kinds_is_answered_in_order():
    runs = [RunStarted(run_id=uuid.uuid4(), definition=f"d{i}", trigger=Trigger.MANUAL) for i in range(2)]
    change = CircuitBreakerChanged(profile="p", state="closed", episode=3)
    folded: list[object] = []
    mailed: list[CircuitBreakerChanged] = []

    def handle_all(events):
        folded.extend(events)
        return [[Outgoing("t", e.definition, b"")] for e in events]

    class Mails:
        def handle(self, event: CircuitBreakerChanged) -> None:
            mailed.append(event)

    handle_round = with_breaker_mails(handle_all, Mails())  # type: ignore[arg-type]
    results = handle_round([runs[0], change, runs[1]])
    assert folded == runs
    assert mailed == [change]
    assert [[o.key for o in r] for r in results if isinstance(r, list)] == [["d0"], [], ["d1"]]


def test_the_email_names_the_definition_and_the_profile_and_goes_to_the_error_recipients():
    definition = ExportDefinition.model_validate(
        {
            "name": "nightly",
            "query": "q",
            "template": "t",
            "notifications": {"error": {"enabled": True, "recipients": ["oncall@example.com"]}},
        }
    )
    message = compose(CircuitBreakerChanged(profile="crm", state="open", episode=2), definition, "exports@example.com")
    assert message["Subject"] == "[member export] nightly: deliveries to crm paused (circuit breaker open)"
    assert message["To"] == "oncall@example.com"
    assert message["X-Export-Circuit"] == "crm; open; 2"
