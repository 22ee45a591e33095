"""A run's ``started`` webhook goes out once across notifier replicas, and is not lost to a notifier that fails after
folding the run's ``run.started``: it is claimed in the ledger in the fold's transaction (an outbox), left to the
replica that folded it for the finish lease (another replica's sweep does not send it meanwhile), then retried by
any replica's sweep.

Real HTTP receiver (signatures verified); the catalog is SQLite and PostgreSQL (the ``catalog`` fixture)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from devtools.http_receiver import HttpReceiver
from devtools.processes import wait_until
from devtools.smtp_sink import SmtpSink
from shared.catalog import CatalogStores
from shared.errors import CatalogTimedOut
from shared.events import AnyRunEvent, RunStarted, Trigger
from tests.integration.test_notifier_finish_claim import DEADLINE, failed_run, held_in, replica
from tests.integration.test_notifier_finish_once import Killed, dying
from tests.integration.test_notifier_webhooks import definition, receiver, signing_secret, sink, verified

pytestmark = pytest.mark.integration

#: The webhooks' tests' fixtures: their signing secret in the environment (autouse), an SMTP sink, an HTTP receiver.
__all__ = ["receiver", "signing_secret", "sink"]

#: The finish lease of the replicas here: how long a ``started`` webhook is left to the replica that folded it.
LEASE = 1.0


def started_run() -> list[AnyRunEvent]:
    return [RunStarted(run_id=uuid.uuid4(), definition="nightly", trigger=Trigger.SCHEDULE)]


def started_webhooks(receiver: HttpReceiver) -> list[tuple[str, str]]:
    """(run id, ``webhook-id``) of each ``started`` webhook the receiver accepted."""
    return [
        (verified(r)["data"]["run_id"], r.headers["webhook-id"])
        for r in receiver.receipts()
        if r.status == 200 and verified(r)["type"] == "member_export.run.started"
    ]


class TimingOutOnce:
    """The definitions store, except that its first read of a definition times out on the catalog."""

    def __init__(self, definitions: Any) -> None:
        self.definitions, self.failed = definitions, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.definitions, name)

    def find(self, *args: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise CatalogTimedOut("ExportDefinition", "nightly", "57014")
        return self.definitions.find(*args)


@pytest.mark.parametrize("failure", ["killed-after-the-fold", "definition-read-timed-out"])
def test_a_started_webhook_is_not_lost_when_the_notifier_fails_after_folding_the_run_start(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver, failure: str
):
    """The notifier folds ``run.started`` (committed) and fails before the webhook: its process killed, or the
    catalog timing out on the definition's read. The event comes again (redelivered, replayed) and finds the run
    started. Before, nothing sent the webhook ever; now it was claimed with the fold, and the sweep sends it once
    the lease is over (the same ``webhook-id`` as any attempt), once."""
    catalog.definitions.apply(definition(receiver))
    poll = started_run()
    first = replica(catalog, sink, "replica-a", lease=LEASE)
    if failure == "killed-after-the-fold":
        first.runs = dying(catalog.runs, "fold_run_events", after_it=True)
        with pytest.raises(Killed):
            first.handle_all(poll)
    else:
        first.definitions = TimingOutOnce(catalog.definitions)
        (outcome,) = first.handle_all(poll)
        assert isinstance(outcome, CatalogTimedOut)  # the event's failure: dead-lettered, then replayed
    second = replica(catalog, sink, "replica-b", lease=LEASE)
    second.handle_all(poll)  # the event again (handed to another replica, or replayed)
    assert catalog.runs.get_run(poll[0].run_id).started_at is not None
    wait_until(lambda: bool(second.sweep() or True) and bool(started_webhooks(receiver)), timeout=DEADLINE)
    for notifier in (first, second):
        notifier.runs, notifier.definitions = catalog.runs, catalog.definitions
        notifier.handle_all(poll)
        notifier.sweep()
    assert [run_id for run_id, _ in started_webhooks(receiver)] == [str(poll[0].run_id)]


def test_another_replicas_sweep_does_not_send_a_started_webhook_its_folder_is_sending(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Replica A folded ``run.started`` and is in the middle of sending its webhook (held before the request).
    Before, replica B's sweep found it claimed and unsent and sent it too (twice, the same ``webhook-id``); now it
    is A's within the lease, and B's sweep leaves it."""
    catalog.definitions.apply(definition(receiver))
    poll = started_run()
    first = replica(catalog, sink, "replica-a", lease=60.0)
    second = replica(catalog, sink, "replica-b", lease=60.0)
    holding, release = held_in(first, "webhook")
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(first.handle_all(poll)))
    thread.start()
    try:
        assert holding.wait(DEADLINE), "replica A never reached its send"
        second.sweep()
        assert started_webhooks(receiver) == []
    finally:
        release.set()
        thread.join(DEADLINE)
    assert not thread.is_alive()
    assert results == [[[]]]
    second.sweep()
    second.handle_all(poll)
    ((run_id, webhook_id),) = started_webhooks(receiver)
    assert run_id == str(poll[0].run_id)
    assert webhook_id.startswith("msg_")


def test_a_polls_started_webhooks_go_out_before_its_finishes(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """A poll finishes run A (its error email held: an SMTP outage can hold a finish for minutes) and starts run B.
    Before, B's ``started`` webhook waited for A's finish, past its hold from other replicas' sweeps when the finish
    was long (then sent twice); now the poll's ``started`` webhooks go first."""
    catalog.definitions.apply(definition(receiver))
    finishing = failed_run(datetime.now(UTC))
    starting = started_run()
    notifier = replica(catalog, sink, "replica-a", lease=60.0)
    holding, release = held_in(notifier, "mail")
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(notifier.handle_all(finishing + starting)))
    thread.start()
    try:
        assert holding.wait(DEADLINE), "the finish never reached its email"
        sent = {run_id for run_id, _ in started_webhooks(receiver)}
        assert str(starting[0].run_id) in sent, "B's started webhook waited for A's finish"
    finally:
        release.set()
        thread.join(DEADLINE)
    assert not thread.is_alive()
    assert [mail.subject for mail in sink.received()] == ["[member export] nightly: failed"]
    assert sorted(run_id for run_id, _ in started_webhooks(receiver)) == sorted(
        str(event.run_id) for event in (finishing[0], starting[0])
    )
