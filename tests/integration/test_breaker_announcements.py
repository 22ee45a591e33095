"""Circuit breaker announcements on SQLite and PostgreSQL: a replica's breakers reported off the event loop,
each fleet change published until it is (a failed publication is tried again), and each email sent once
through the outbox (an SMTP failure retried by the sweep, a redelivered change not mailed again)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.smtp_sink import SmtpSink
from services.dispatcher.breaker_notices import BreakerNotices
from services.dispatcher.breakers import ProfileBreakers
from services.notifier.breaker_notices import BreakerMails
from services.notifier.mailer import SmtpMailer
from shared.catalog.breaker_mail_store import SqlBreakerMailStore
from shared.catalog.fleet_store import SqlFleetStore
from shared.catalog.stores import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate
from shared.domain.circuit_breaker import BreakerState, Transition
from shared.events import CircuitBreakerChanged
from shared.kafka import Outgoing

pytestmark = pytest.mark.integration

OPENED = Transition(BreakerState.CLOSED, BreakerState.OPEN, 0.0)
HALF_OPEN = Transition(BreakerState.OPEN, BreakerState.HALF_OPEN, 5.0)
CLOSED = Transition(BreakerState.HALF_OPEN, BreakerState.CLOSED, 6.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _published(outgoing: list[Outgoing]) -> list[tuple[str, int]]:
    events = [CircuitBreakerChanged.model_validate_json(o.value) for o in outgoing]
    return [(e.state, e.episode) for e in events]


def test_a_change_is_published_again_until_its_publication_succeeds(catalog: CatalogStores):
    clock = Clock()
    notices = BreakerNotices(SqlFleetStore(catalog.database), "run-events", "a", ttl_seconds=10, wall_clock=clock)
    sent: list[Outgoing] = []
    failing = True

    def publish(outgoing: list[Outgoing]) -> None:
        if failing:
            raise RuntimeError("Kafka away")
        sent.extend(outgoing)

    notices.publish = publish
    notices.on_change("p", OPENED)
    with pytest.raises(RuntimeError):
        notices.sweep()
    notices.on_change("p", HALF_OPEN)  # still holding batches: no news
    failing = False
    clock.now += 1
    notices.sweep()
    assert _published(sent) == [("open", 1)]
    notices.sweep()
    assert _published(sent) == [("open", 1)]  # announced once

    notices.on_change("p", CLOSED)
    notices.sweep()
    assert _published(sent) == [("open", 1), ("closed", 1)]


def test_a_replica_stopping_or_its_breaker_rebuilt_lets_the_fleets_breaker_close(catalog: CatalogStores):
    clock = Clock()
    store = SqlFleetStore(catalog.database)
    a = BreakerNotices(store, "run-events", "a", ttl_seconds=10, wall_clock=clock)
    b = BreakerNotices(store, "run-events", "b", ttl_seconds=10, wall_clock=clock)
    sent: list[Outgoing] = []
    a.publish = b.publish = sent.extend
    a.on_change("p", OPENED)
    b.on_change("p", OPENED)
    a.sweep()
    b.sweep()
    a.leave()  # scaled down while open
    b.sweep()
    assert _published(sent) == [("open", 1)]  # b still holds batches

    breakers = ProfileBreakers(on_change=b.on_change)
    breakers._entry(ConnectionProfile(name="p", base_url="http://127.0.0.1:9", circuit_breaker={}))
    breakers._entries["p"].breaker.state = BreakerState.OPEN  # as if opened by failures
    breakers.check(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))  # its breaker setting removed
    b.sweep()
    assert _published(sent) == [("open", 1), ("closed", 1)]
    a.sweep()  # a has left: it reports nothing any more
    assert not store.report_breakers("c", [], clock(), 10)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


def apply_nightly_on_profile_p(catalog: CatalogStores) -> None:
    """Profile ``p``, and the definition ``nightly`` using it, whose error emails go to oncall@example.com."""
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/m"))
    catalog.definitions.apply(
        ExportDefinition.model_validate(
            {
                "name": "nightly",
                "query": "q",
                "template": "t",
                "notifications": {"error": {"enabled": True, "recipients": ["oncall@example.com"]}},
            }
        )
    )


def test_each_breaker_email_is_sent_once_and_retried_by_the_sweep_when_smtp_fails(
    catalog: CatalogStores, sink: SmtpSink
):
    apply_nightly_on_profile_p(catalog)
    outbox = SqlBreakerMailStore(catalog.database)
    down = BreakerMails(catalog.definitions, outbox, SmtpMailer("127.0.0.1", 9, max_attempts=1), "x@example.com")
    change = CircuitBreakerChanged(profile="p", state="open", episode=1)
    down.handle(change)  # SMTP away: not sent, kept
    assert sink.received() == []

    up = BreakerMails(catalog.definitions, outbox, SmtpMailer("127.0.0.1", sink.port, max_attempts=1), "x@example.com")
    up.handle(change)  # the same change again (redelivered): claimed before, unsent: sent now
    up.retry_unsent()  # sent already: nothing more
    up.handle(change)
    assert [m.message["X-Export-Circuit"] for m in sink.received()] == ["p; open; 1"]

    closing = CircuitBreakerChanged(profile="p", state="closed", episode=1)
    down.handle(closing)
    up.retry_unsent()  # the sweep sends what SMTP refused
    up.retry_unsent()
    assert [m.message["X-Export-Circuit"] for m in sink.received()] == ["p; open; 1", "p; closed; 1"]


def test_a_breaker_email_is_not_given_up_through_an_smtp_outage_longer_than_its_attempts(
    catalog: CatalogStores, sink: SmtpSink
):
    """Session 49: each sweep's failure at a server that is down spent one of the breaker email's 20 attempts, so an
    outage of 20 sweeps gave it up unsent; now such a failure spends none (the runs' emails' rule)."""
    apply_nightly_on_profile_p(catalog)
    outbox = SqlBreakerMailStore(catalog.database)
    down = BreakerMails(catalog.definitions, outbox, SmtpMailer("127.0.0.1", 9, max_attempts=1), "x@example.com")
    down.handle(CircuitBreakerChanged(profile="p", state="open", episode=1))
    for _ in range(SqlBreakerMailStore.MAX_ATTEMPTS + 2):  # the sweeps of an outage
        with down.round.open("a sweep"):  # as the notifier's sweep: the round's failure closes its mail
            down.retry_unsent()

    up = BreakerMails(catalog.definitions, outbox, SmtpMailer("127.0.0.1", sink.port, max_attempts=1), "x@example.com")
    up.retry_unsent()
    assert [m.message["X-Export-Circuit"] for m in sink.received()] == ["p; open; 1"]  # before: given up, unsent
