"""Retrying a replay and a cancel whose events Kafka did not acknowledge, in the application layer (which the admin
API, the console and exportctl call): a replay under an Idempotency-Key is one replay run, published again while its
extraction is not complete; the key is one request's (another run replayed, a run request: refused); a cancel
retried publishes its cancellation again. Over a real SQLite catalog."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.exc import OperationalError

from shared.application import runs as use_cases
from shared.application.actors import Actor, Role
from shared.application.errors import (
    Busy,
    CancelNotPublished,
    Conflict,
    Invalid,
    PublishFailed,
    RunNotPublished,
)
from shared.application.ports import DeadLetterSource
from shared.application.replay import Replay, replay_dead_letters
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.replay import BATCHES_ACKNOWLEDGED, STARTED_ACKNOWLEDGED
from shared.domain.runs import RunStatus
from shared.events import (
    AnyRunEvent,
    BatchOutcome,
    DeadLetter,
    ExtractionCompleted,
    Priority,
    RunCancelled,
    RunFailed,
    RunStarted,
)
from tests.admin_app import RecordingPublisher

OPERATOR = Actor(name="ops", role=Role.OPERATOR)
REASON = "KafkaTimeoutError: Timeout after 15.0 s"


@dataclass
class Publisher(RecordingPublisher):
    """Records what is published, batches too; ``away``: Kafka acknowledges nothing (what the adapter raises)."""

    batches: list[str] = field(default_factory=list)
    away: bool = False

    def publish_run_events(self, events: Sequence[AnyRunEvent]) -> None:
        if self.away:
            raise PublishFailed("the run events on exports.run-events", REASON)
        super().publish_run_events(events)

    def publish_member_batches(self, priority: Priority, batches: Sequence[tuple[str, bytes]]) -> None:
        self.batches.extend(key for key, _ in batches)


@dataclass
class Letters:
    letters: list[DeadLetter]

    def dead_letters(self) -> list[DeadLetter]:
        return self.letters


def _seed(stores: CatalogStores) -> None:
    """The definition nightly (its query, template and profile): two members a batch."""
    stores.definitions.apply(ConnectionProfile(name="partner", base_url="https://partner.example.com"))
    stores.definitions.apply(SavedQuery(name="gold", sql="SELECT id, tier FROM members"))
    stores.definitions.apply(HttpTemplate(name="upsert", query="gold", profile="partner", batch_size=2))
    stores.definitions.apply(ExportDefinition(name="nightly", query="gold", template="upsert"))


@pytest.fixture
def stores(tmp_path: Path, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    stores = migrated_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    _seed(stores)
    yield stores
    stores.close()


def _run(stores: CatalogStores, key: str | None = None) -> uuid.UUID:
    """A run of nightly, recorded (its request published), under ``key`` if one is given."""
    record = use_cases.request_run(
        OPERATOR,
        "nightly",
        store=stores.definitions,
        runs=stores.runs,
        publisher=RecordingPublisher(),
        idempotency_key=key,
    )
    return record.run_id


def _letters(*runs: uuid.UUID) -> Letters:
    """Three refused members of each of ``runs`` (two batches at the template's size)."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return Letters(
        [
            DeadLetter(
                reason="HTTP 400",
                source_topic="t",
                service="dispatcher",
                run_id=run,
                batch_index=0,
                members=[{"id": i, "tier": "gold"} for i in (1, 2, 3)],
                at=at,
            )
            for run in runs
        ]
    )


def _replay(
    stores: CatalogStores,
    run: uuid.UUID,
    publisher: Publisher,
    key: str | None,
    letters: DeadLetterSource | None = None,
    slot: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> Replay:
    return replay_dead_letters(
        OPERATOR,
        run,
        store=stores.definitions,
        runs=stores.runs,
        letters=letters or _letters(run),
        publisher=publisher,
        max_record_bytes=1_000_000,
        idempotency_key=key,
        slot=slot,
    )


def _unpublished(stores: CatalogStores, run: uuid.UUID, publisher: Publisher, key: str) -> uuid.UUID:
    """The replay run of ``run`` recorded under ``key`` whose events ``publisher`` did not all acknowledge."""
    with pytest.raises(RunNotPublished) as failed:
        _replay(stores, run, publisher, key)
    return failed.value.run_id


def test_a_replay_without_a_key_kafka_does_not_acknowledge_says_how_to_cancel_it_not_to_retry_with_a_key(
    stores: CatalogStores,
) -> None:
    """Before: "retrying with the same Idempotency-Key publishes them again", with no key given."""
    original = _run(stores)
    with pytest.raises(RunNotPublished) as failed:
        _replay(stores, original, Publisher(away=True), None)
    replay_id = failed.value.run_id
    assert failed.value.replay_of == original
    assert str(failed.value) == (
        f"replay run {replay_id} of run {original} was recorded queued, but Kafka did not acknowledge its events "
        f"({REASON}): their outcome is unknown: the broker may have received some of them; it was requested without "
        "an Idempotency-Key, so requesting it again starts another replay run: cancel this one if it must not start "
        f"(exportctl cancel {replay_id}, or POST /api/v1/runs/{replay_id}/cancel), else a run that never starts is "
        "failed as stuck (EXPORT_NOTIFIER_STUCK_AFTER_SECONDS)"
    )


def test_a_replay_kafka_does_not_acknowledge_is_recorded_queued_and_its_retry_publishes_the_same_replay_run(
    stores: CatalogStores,
) -> None:
    original = _run(stores)
    with pytest.raises(RunNotPublished) as failed:
        _replay(stores, original, Publisher(away=True), "k1")
    replay_id = failed.value.run_id
    assert failed.value.replay_of == original
    assert str(failed.value) == (
        f"replay run {replay_id} of run {original} was recorded queued, but Kafka did not acknowledge its events "
        f"({REASON}): their outcome is unknown: the broker may have received some of them; retrying with the same "
        "Idempotency-Key publishes them again (the same replay run, its batches under the same keys), else a run "
        "that never starts is failed as stuck (EXPORT_NOTIFIER_STUCK_AFTER_SECONDS)"
    )
    record = stores.runs.get_run(replay_id)
    assert record is not None
    assert (record.status, record.trigger, record.replay_of) == (RunStatus.QUEUED, "replay", original)
    # The retry: the same replay run, its events published again (before: a second replay run).
    publisher = Publisher()
    again = _replay(stores, original, publisher, "k1")
    assert again == Replay(run_id=replay_id, members=3, batches=2)
    assert [type(e) for e in publisher.run_events] == [RunStarted, ExtractionCompleted]
    assert {e.run_id for e in publisher.run_events} == {replay_id}
    assert publisher.batches == [f"{replay_id}:0", f"{replay_id}:1"]
    assert [r.run_id for r in stores.runs.replays_of(original)] == [replay_id]


def test_a_retried_replay_publishes_nothing_once_kafka_acknowledged_it_all_or_its_extraction_is_complete(
    stores: CatalogStores,
) -> None:
    original = _run(stores)
    first = _replay(stores, original, Publisher(), "k1")
    publisher = Publisher()
    # Kafka acknowledged all of it, not folded yet: nothing published again (before: all of it, its batches sent twice).
    assert _replay(stores, original, publisher, "k1") == first
    assert (publisher.run_events, publisher.batches) == ([], [])
    stores.runs.fold_run_event(ExtractionCompleted(run_id=first.run_id, definition="nightly", members=3, batches=2))
    assert _replay(stores, original, publisher, "k1") == first
    assert (publisher.run_events, publisher.batches) == ([], [])
    # Without a key, every replay is a replay run of its own (as before).
    assert _replay(stores, original, Publisher(), None).run_id != first.run_id


@dataclass
class LastFails(Publisher):
    """Acknowledges run.started and the batches, not run.extraction_completed (Kafka goes away midway)."""

    def publish_run_events(self, events: Sequence[AnyRunEvent]) -> None:
        if any(isinstance(e, ExtractionCompleted) for e in events):
            raise PublishFailed("the run events on exports.run-events", REASON)
        super().publish_run_events(events)


@dataclass
class BatchesFail(Publisher):
    """Acknowledges run.started, not the batches."""

    def publish_member_batches(self, priority: Priority, batches: Sequence[tuple[str, bytes]]) -> None:
        raise PublishFailed("the member batches on exports.member-batches", REASON)


def _outcome(run: uuid.UUID, index: int, delivered: int) -> BatchOutcome:
    return BatchOutcome(
        run_id=run, definition="nightly", batch_index=index, delivered=delivered, failed=0, status_code=200
    )


def test_a_replay_retry_publishes_only_what_kafka_did_not_acknowledge_and_no_batch_with_an_outcome(
    stores: CatalogStores,
) -> None:
    """The usual 503: run.started and the batches acknowledged (the partner got them), not the extraction's end."""
    original = _run(stores)
    replay_id = _unpublished(stores, original, LastFails(), "k1")
    publisher = Publisher()
    assert _replay(stores, original, publisher, "k1") == Replay(run_id=replay_id, members=3, batches=2)
    # Before: run.started and both batches again, which the dispatcher POSTs to the partner again.
    assert publisher.batches == []
    assert [type(e) for e in publisher.run_events] == [ExtractionCompleted]
    # Kafka goes away while the batches are published: batch 0 got through, the dispatcher delivered it.
    other = _run(stores)
    second = _unpublished(stores, other, BatchesFail(), "k2")
    stores.runs.fold_run_event(RunStarted(run_id=second, definition="nightly", trigger="replay", replay_of=other))
    stores.runs.fold_run_event(_outcome(second, 0, 2))
    publisher = Publisher()
    assert _replay(stores, other, publisher, "k2").run_id == second
    assert publisher.batches == [f"{second}:1"]  # before: :0 too, sent to the partner twice
    assert [type(e) for e in publisher.run_events] == [ExtractionCompleted]  # its start folded already
    stores.runs.fold_run_event(publisher.run_events[0])
    stores.runs.fold_run_event(_outcome(second, 1, 1))
    record = stores.runs.get_run(second)
    assert record is not None
    assert (record.status, record.extracted, record.delivered) == (RunStatus.SUCCEEDED, 3, 3)


def test_a_double_click_publishes_the_replay_once(stores: CatalogStores, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two submissions of one key at once: the second waits for the first's publication, then publishes nothing."""
    import shared.application.replay as replay_module

    original = _run(stores)
    second_waits = threading.Event()
    real_time = replay_module.__dict__.get("time")

    class WaitingClock:
        monotonic = staticmethod(real_time.monotonic if real_time is not None else lambda: 0.0)

        @staticmethod
        def sleep(seconds: float) -> None:
            second_waits.set()
            if real_time is not None:
                real_time.sleep(min(seconds, 0.01))

    monkeypatch.setattr(replay_module, "time", WaitingClock, raising=False)

    @dataclass
    class Slow(Publisher):
        """The first request's publisher: holds its run.started until the second request is under way."""

        def publish_run_events(self, events: Sequence[AnyRunEvent]) -> None:
            if any(isinstance(e, RunStarted) for e in events):
                second_waits.wait(timeout=5)
            super().publish_run_events(events)

    first_publisher, second_publisher = Slow(), Publisher()
    results: list[Replay] = []
    first = threading.Thread(target=lambda: results.append(_replay(stores, original, first_publisher, "k1")))
    first.start()
    try:
        results.append(_replay(stores, original, second_publisher, "k1"))
    finally:
        second_waits.set()
        first.join(timeout=30)
    assert len(results) == 2
    assert results[0] == results[1]
    replay_id = results[0].run_id
    assert first_publisher.batches + second_publisher.batches == [f"{replay_id}:0", f"{replay_id}:1"]
    assert len(first_publisher.run_events + second_publisher.run_events) == 2


def _more_letters(run: uuid.UUID) -> Letters:
    """``run``'s dead letters once a late one (members 4 and 5) joined them: other batches than before."""
    late = DeadLetter(
        reason="HTTP 400",
        source_topic="t",
        service="dispatcher",
        run_id=run,
        batch_index=1,
        members=[{"id": i, "tier": "gold"} for i in (4, 5)],
        at=datetime(2026, 1, 2, tzinfo=UTC),
    )
    return Letters([*_letters(run).letters, late])


def test_a_retry_whose_dead_letters_changed_is_refused_409_and_a_new_key_replays_them(stores: CatalogStores) -> None:
    """While its batches are not acknowledged (once they were, the retry finishes the replay run: below)."""
    original = _run(stores)
    replay_id = _unpublished(stores, original, BatchesFail(), "k1")
    more = _more_letters(original)
    publisher = Publisher()
    with pytest.raises(Conflict) as refused:  # before: the batch keys :0, :1 reused for other members, :2 added
        _replay(stores, original, publisher, "k1", more)
    assert refused.value.slug == "dead-letters-changed"
    assert str(refused.value) == (
        f"the dead letters of run {original} changed since replay run {replay_id} was recorded under this "
        "Idempotency-Key (3 members in 2 batches then, 5 in 3 now, or other members, template or priority): "
        "its batches keep what they were; use a new key to replay them as they are now"
    )
    assert (publisher.run_events, publisher.batches) == ([], [])
    assert _replay(stores, original, publisher, "k2", more).members == 5


def test_a_retry_once_the_batches_were_acknowledged_publishes_only_the_extractions_end_whatever_the_dead_letters(
    stores: CatalogStores,
) -> None:
    """The usual 503 (only run.extraction_completed unacknowledged), then a late dead letter, or retention dropped
    them, or Kafka cannot say: the retry finishes the replay run from its plan (before: 409 dead-letters-changed, 422
    nothing-to-replay, 503: the replay run never completes, and a new key sends every member again)."""
    for letters in (_more_letters, lambda run: Letters([]), lambda run: Unreadable()):
        original = _run(stores)
        replay_id = _unpublished(stores, original, LastFails(), "k1-" + str(original))
        publisher = Publisher()
        again = _replay(stores, original, publisher, "k1-" + str(original), letters(original))
        assert again == Replay(run_id=replay_id, members=3, batches=2)
        (completed,) = publisher.run_events
        assert isinstance(completed, ExtractionCompleted)
        assert (completed.run_id, completed.members, completed.batches) == (replay_id, 3, 2)
        assert publisher.batches == []
        stores.runs.fold_run_event(RunStarted(run_id=replay_id, definition="nightly", trigger="replay"))
        stores.runs.fold_run_event(publisher.run_events[0])
        record = stores.runs.get_run(replay_id)
        assert record is not None
        assert (record.extraction_complete, record.extracted, record.batches_expected) == (True, 3, 2)


def test_a_retry_whose_dead_letters_changed_while_another_request_got_the_batches_acknowledged_finishes_it(
    stores: CatalogStores,
) -> None:
    original = _run(stores)
    replay_id = _unpublished(stores, original, BatchesFail(), "k1")  # run.started acknowledged, not the batches

    class LateWhileAnotherPublishes:
        def dead_letters(self) -> list[DeadLetter]:
            # Meanwhile a concurrent retry of the key gets the batches acknowledged (then Kafka goes away).
            assert stores.runs.claim_replay_publication(replay_id, "another", 120)
            stores.runs.replay_step_acknowledged(replay_id, "another", BATCHES_ACKNOWLEDGED)
            stores.runs.release_replay_publication(replay_id, "another")
            return _more_letters(original).letters

    publisher = Publisher()
    again = _replay(stores, original, publisher, "k1", LateWhileAnotherPublishes())
    assert again == Replay(run_id=replay_id, members=3, batches=2)  # before: 409 dead-letters-changed
    assert [type(e) for e in publisher.run_events] == [ExtractionCompleted]
    assert publisher.batches == []


def test_a_holder_whose_claim_was_taken_over_stops_publishing(stores: CatalogStores) -> None:
    """Its lease ran out while Kafka made it wait: the request that took the claim over publishes what is left."""
    original = _run(stores)

    @dataclass
    class TakenOverMeanwhile(Publisher):
        def publish_member_batches(self, priority: Priority, batches: Sequence[tuple[str, bytes]]) -> None:
            super().publish_member_batches(priority, batches)
            (replay_id,) = {key.split(":")[0] for key, _ in batches}
            assert stores.runs.claim_replay_publication(uuid.UUID(replay_id), "another", -1.0)  # lease past

    publisher = TakenOverMeanwhile()
    with pytest.raises(Busy) as busy:
        _replay(stores, original, publisher, "k1")
    replay_id = uuid.UUID(publisher.batches[0].split(":")[0])
    assert busy.value.slug == "replay-being-published"
    assert busy.value.status == 503
    assert str(busy.value) == (
        f"replay run {replay_id} of run {original} is being published by another request (the same "
        "Idempotency-Key): retry with the same key"
    )
    # Before: it went on, run.extraction_completed published by both, the batches too when it was at run.started.
    assert [type(e) for e in publisher.run_events] == [RunStarted]
    publication = stores.runs.replay_publication(replay_id)
    assert publication is not None
    assert publication.acknowledged == STARTED_ACKNOWLEDGED  # the new holder's step, not the old one's


def test_a_request_waits_for_another_ones_publication_of_the_key_a_bounded_time_then_answers_busy(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.application.replay as replay_module

    monkeypatch.setattr(replay_module, "CLAIM_WAIT_SECONDS", 0.3, raising=False)
    monkeypatch.setattr(replay_module, "PUBLICATION_LEASE_SECONDS", 2.0)  # old code: took over after it
    monkeypatch.setattr(replay_module, "_CLAIM_POLL_SECONDS", 0.05)
    original = _run(stores)
    replay_id = _unpublished(stores, original, BatchesFail(), "k1")
    assert stores.runs.claim_replay_publication(replay_id, "another", 120)  # another request publishes it now
    publisher = Publisher()
    with pytest.raises(Busy, match=r"is being published by another request .*: retry with the same key"):
        _replay(stores, original, publisher, "k1")  # before: polled up to the lease, then published it too
    assert (publisher.run_events, publisher.batches) == ([], [])


def test_a_claim_that_cannot_be_released_leaves_the_publications_failure_as_the_answer(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(run_id: uuid.UUID, claimant: str) -> None:
        raise OperationalError("UPDATE runs", {}, Exception("database is locked"))

    monkeypatch.setattr(stores.runs, "release_replay_publication", locked)
    original = _run(stores)
    with pytest.raises(RunNotPublished) as failed:  # before: the OperationalError, the replay run's 503 lost
        _replay(stores, original, Publisher(away=True), "k1")
    assert failed.value.replay_of == original


class Unreadable:
    def dead_letters(self) -> list[DeadLetter]:
        raise TimeoutError("the dead letters cannot be read now")


class OneSlot:
    """The admin process's bound on its uses of the dead letters, of one (``DeadLetterReplays.slot``'s refusal)."""

    BUSY = "1 read of the dead letters is running now (Kafka may be slow or down): retry in 10 s"

    def __init__(self) -> None:
        self.slots = threading.BoundedSemaphore(1)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self.slots.acquire(blocking=False):
            raise Busy(self.BUSY, slug="dead-letters-busy")
        try:
            yield
        finally:
            self.slots.release()

    def held(self) -> bool:
        if self.slots.acquire(blocking=False):
            self.slots.release()
            return False
        return True


def test_a_replay_holds_its_slot_over_its_publication_and_one_refused_records_and_publishes_nothing(
    stores: CatalogStores,
) -> None:
    """The slot is held while every event of the replay is published, a retry's that reads no dead letters too
    (before: the bound was the read's only), and given back after a failure; refused, the replay is :class:`Busy` with
    a replay's words, nothing recorded nor published, its key bound to this run's replay as it says."""
    bound = OneSlot()

    @dataclass
    class Held(Publisher):
        """Records whether the slot was held at each publication; ``last_fails``: Kafka does not acknowledge
        run.extraction_completed."""

        last_fails: bool = False
        published_held: list[bool] = field(default_factory=list)

        def publish_run_events(self, events: Sequence[AnyRunEvent]) -> None:
            self.published_held.append(bound.held())
            if self.last_fails and any(isinstance(e, ExtractionCompleted) for e in events):
                raise PublishFailed("the run events on exports.run-events", REASON)
            super().publish_run_events(events)

        def publish_member_batches(self, priority: Priority, batches: Sequence[tuple[str, bytes]]) -> None:
            self.published_held.append(bound.held())
            super().publish_member_batches(priority, batches)

    original, other = _run(stores), _run(stores)
    first = Held(last_fails=True)
    with pytest.raises(RunNotPublished) as failed:
        _replay(stores, original, first, "k1", slot=bound.slot)
    assert first.published_held == [True, True, True]  # run.started, the batches, run.extraction_completed
    assert not bound.held()  # given back after the failure
    retry = Held()
    # The dead letters not read (only the extraction's end left to publish), the slot held all the same.
    again = _replay(stores, original, retry, "k1", Unreadable(), bound.slot)
    assert again == Replay(run_id=failed.value.run_id, members=3, batches=2)
    assert retry.published_held == [True]  # before: published outside the bound
    assert not bound.held()
    # Refused: nothing recorded nor published; the key is bound to this run's replay all the same.
    with bound.slot():
        refused = Held()
        with pytest.raises(Busy) as busy:
            _replay(stores, original, refused, "k2", slot=bound.slot)
    assert busy.value.slug == "dead-letters-busy"
    assert str(busy.value) == (
        f"{OneSlot.BUSY}; no replay run was recorded (the Idempotency-Key stays bound to this run's replay: retry with "
        "it)"
    )
    assert (refused.published_held, [r.run_id for r in stores.runs.replays_of(original)]) == ([], [again.run_id])
    with pytest.raises(Invalid) as reused:
        _replay(stores, other, Publisher(), "k2", slot=bound.slot)
    assert reused.value.slug == "idempotency-key-reused"
    retried = _replay(stores, original, Publisher(), "k2", slot=bound.slot)  # its retry replays the run
    assert retried.run_id != again.run_id


def test_a_retry_with_nothing_left_to_publish_is_its_replay_run_while_every_slot_is_taken(
    stores: CatalogStores,
) -> None:
    """A retry whose replay run's events Kafka all acknowledged, or whose extraction is complete, is answered from the
    catalog without one of the process's dead-letter reads: the same replay run while as many reads run as it allows,
    nothing published (before: 503 ``dead-letters-busy`` saying no replay run was recorded)."""
    bound = OneSlot()
    original = _run(stores)
    first = _replay(stores, original, Publisher(), "k1")  # all of it acknowledged, not folded yet
    with bound.slot():  # the reads under way
        for folded in (False, True):
            if folded:  # the notifier folded its extraction's end
                event = ExtractionCompleted(run_id=first.run_id, definition="nightly", members=3, batches=2)
                stores.runs.fold_run_event(event)
            retry = Publisher()
            assert _replay(stores, original, retry, "k1", Unreadable(), bound.slot) == first, folded
            assert (retry.run_events, retry.batches) == ([], [])
    assert [r.run_id for r in stores.runs.replays_of(original)] == [first.run_id]


def test_a_retry_refused_busy_names_the_replay_run_an_earlier_request_recorded_under_its_key(
    stores: CatalogStores,
) -> None:
    """Refused a slot, a retry whose replay run an earlier request recorded (its events not all acknowledged, or a
    double click's first publishing them now) names it and says to retry with the same key (before: "no replay run was
    recorded", while it was); nothing published; the retry with a free slot publishes that replay run."""
    bound = OneSlot()
    original = _run(stores)
    recorded = _unpublished(stores, original, Publisher(away=True), "k1")
    with bound.slot():
        refused = Publisher()
        with pytest.raises(Busy) as busy:
            _replay(stores, original, refused, "k1", slot=bound.slot)
    assert busy.value.slug == "dead-letters-busy"
    assert str(busy.value) == (
        f"{OneSlot.BUSY}; replay run {recorded} was recorded by an earlier request under this key: retry with the "
        "same key"
    )
    assert (refused.run_events, refused.batches) == ([], [])
    assert _replay(stores, original, Publisher(), "k1", slot=bound.slot).run_id == recorded


def test_a_retry_of_a_complete_replay_returns_it_without_reading_the_dead_letters(stores: CatalogStores) -> None:
    original = _run(stores)
    first = _replay(stores, original, Publisher(), "k1")
    stores.runs.fold_run_event(ExtractionCompleted(run_id=first.run_id, definition="nightly", members=3, batches=2))
    for letters in (Letters([]), Unreadable()):  # retention dropped them; Kafka cannot say (before: 422, 503)
        assert (
            replay_dead_letters(
                OPERATOR,
                original,
                store=stores.definitions,
                runs=stores.runs,
                letters=letters,
                publisher=Publisher(),
                max_record_bytes=1_000_000,
                idempotency_key="k1",
            )
            == first
        )


def test_a_retry_of_a_replay_that_ended_before_its_extraction_was_complete_is_refused_naming_it(
    stores: CatalogStores,
) -> None:
    original = _run(stores)
    stuck = _unpublished(stores, original, Publisher(away=True), "k1")
    stores.runs.fold_run_event(RunFailed(run_id=stuck, definition="nightly", reason="stuck"))
    publisher = Publisher()
    with pytest.raises(Conflict) as refused:  # before: the replay run returned, exit 0, nothing sent
        _replay(stores, original, publisher, "k1")
    assert refused.value.slug == "replay-ended"
    assert str(refused.value) == (
        f"replay run {stuck} of run {original}, the replay of this Idempotency-Key, ended failed before its "
        f"extraction was complete: use a new key to replay run {original} again"
    )
    assert (publisher.run_events, publisher.batches) == ([], [])


def test_a_replay_key_used_for_another_run_or_a_run_request_is_refused_with_the_reason(stores: CatalogStores) -> None:
    original, other = _run(stores), _run(stores)
    letters = _letters(original, other)
    first = _replay(stores, original, Publisher(), "k1", letters)
    for _ in range(2):
        with pytest.raises(Invalid) as refused:
            _replay(stores, other, Publisher(), "k1", letters)
        assert refused.value.slug == "idempotency-key-reused"
        assert refused.value.reason == (
            "Idempotency-Key 'k1' was already used for a different request (a replay of another run, or a run "
            "request): use a new key for a new request, the same key only to retry the same request"
        )
    assert _replay(stores, original, Publisher(), "k1", letters) == first  # the first replay keeps its key
    # A run request's key is not a replay's, nor the other way round.
    _run(stores, "k2")
    with pytest.raises(Invalid, match="'k2' was already used for a different request"):
        _replay(stores, original, Publisher(), "k2", letters)
    with pytest.raises(Invalid, match="'k1' was already used for a different request"):
        _run(stores, "k1")
    assert [r.run_id for r in stores.runs.replays_of(original)] == [first.run_id]
    assert stores.runs.replays_of(other) == []


@given(st.uuids(), st.uuids(), st.text(), st.dictionaries(st.text(max_size=5), st.integers()))
def test_a_replays_fingerprint_is_its_runs_and_never_a_run_requests(
    run: uuid.UUID, other: uuid.UUID, definition: str, parameters: dict[str, int]
) -> None:
    assert use_cases.replay_fingerprint(run) == use_cases.replay_fingerprint(uuid.UUID(str(run)))
    assert (use_cases.replay_fingerprint(run) == use_cases.replay_fingerprint(other)) is (run == other)
    for allowed in (False, True):
        requested = use_cases.request_fingerprint(definition, parameters, allow_mass_removal=allowed)
        assert use_cases.replay_fingerprint(run) != requested


def _cancel(stores: CatalogStores, run: uuid.UUID, publisher: Publisher) -> RunStatus:
    record = use_cases.cancel_run(OPERATOR, run, store=stores.definitions, runs=stores.runs, publisher=publisher)
    return record.status


def test_a_cancel_kafka_does_not_acknowledge_is_recorded_and_cancelling_again_publishes_it(
    stores: CatalogStores,
) -> None:
    run = _run(stores)
    with pytest.raises(CancelNotPublished) as failed:
        _cancel(stores, run, Publisher(away=True))
    assert failed.value.run_id == run
    assert str(failed.value) == (
        f"run {run} was recorded cancelled (the extractor and the dispatcher stop it), but Kafka did not acknowledge "
        f"its cancellation event ({REASON}): its outcome is unknown; cancelling it again publishes it again"
    )
    record = stores.runs.get_run(run)
    assert record is not None
    assert record.status is RunStatus.CANCELLED
    # Cancelling again publishes the cancellation again (before: 409 "has finished (cancelled)", nothing published).
    publisher = Publisher()
    assert _cancel(stores, run, publisher) is RunStatus.CANCELLED
    assert [(type(e), e.run_id) for e in publisher.run_events] == [(RunCancelled, run)]
    # A run that finished otherwise is still refused, nothing published.
    done = _run(stores)
    stores.runs.fold_run_event(RunFailed(run_id=done, definition="nightly", reason="boom"))
    with pytest.raises(Conflict, match=r"has finished \(failed\)"):
        _cancel(stores, done, publisher)
    assert len(publisher.run_events) == 1


def test_cancelling_a_cancelled_run_whose_finish_the_notifier_handled_publishes_nothing(stores: CatalogStores) -> None:
    run = _run(stores)
    publisher = Publisher()
    _cancel(stores, run, publisher)
    assert _cancel(stores, run, publisher) is RunStatus.CANCELLED  # not handled yet: published again
    assert len(publisher.run_events) == 2
    assert stores.runs.mark_finishes_handled([run]) == {run}
    for _ in range(3):  # before: one run.cancelled more for each, without bound
        assert _cancel(stores, run, publisher) is RunStatus.CANCELLED
    assert len(publisher.run_events) == 2


def test_exportctl_replay_with_an_idempotency_key_is_one_replay_run_and_another_run_under_it_exits_4(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    migrated_catalog: Callable[[str], CatalogStores],
) -> None:
    """``exportctl dead-letters replay RUN --idempotency-key KEY`` on the catalog (Kafka's part replaced)."""
    from shared.cli import direct, reachability
    from shared.cli.common import CliSettings
    from shared.cli.exits import REFUSED, CliError
    from shared.cli.parser import build_parser
    from shared.kafka import event_publisher

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    stores = migrated_catalog(url)
    _seed(stores)
    original, other = _run(stores), _run(stores)
    stores.close()
    publisher = Publisher()
    monkeypatch.setattr(reachability, "require_kafka", lambda servers: None)
    monkeypatch.setattr(event_publisher, "KafkaDeadLetters", lambda settings, **_: _letters(original, other))
    monkeypatch.setattr(direct.Direct, "publisher", lambda self, wait_seconds=None: publisher)
    settings = CliSettings(catalog_url=url)

    def replay(run: uuid.UUID) -> str:
        args = build_parser().parse_args(["dead-letters", "replay", str(run), "--idempotency-key", "k1"])
        assert args.func(settings, args) == 0
        return capsys.readouterr().out

    first = replay(original)
    assert replay(original) == first  # the same replay run (before: --idempotency-key unknown, exit 2)
    replay_id = uuid.UUID(first.split()[1])
    assert [e.run_id for e in publisher.run_events] == [replay_id] * 2  # published once: Kafka acknowledged it all
    with pytest.raises(CliError) as refused:
        replay(other)
    assert refused.value.code == REFUSED
    assert "Idempotency-Key 'k1' was already used for a different request (a replay of another run" in str(
        refused.value
    )


def test_exportctl_replays_publication_waits_for_kafka_within_the_claims_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_catalog: Callable[[str], CatalogStores]
) -> None:
    """Each publication of ``exportctl dead-letters replay`` waits ``REPLAY_PUBLISH_WAIT_SECONDS`` at most for its
    acknowledgement (before: the producer's delivery timeout and a margin, 125 s, past the lease: another request
    took the claim over and both published)."""
    from kafka.errors import KafkaTimeoutError

    from shared.application.replay import PUBLICATION_LEASE_SECONDS, REPLAY_PUBLISH_WAIT_SECONDS
    from shared.cli import direct, reachability
    from shared.cli.common import CliSettings
    from shared.cli.exits import UNREACHABLE, CliError
    from shared.cli.parser import build_parser
    from shared.kafka import event_publisher

    waited: list[float] = []

    class Unacknowledged:
        def get(self, timeout: float) -> None:
            waited.append(timeout)
            raise KafkaTimeoutError("no acknowledgement")

    class FrozenBroker:
        config = {"delivery_timeout_ms": 120_000}

        def send(self, topic: str, **record: object) -> Unacknowledged:
            return Unacknowledged()

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    stores = migrated_catalog(url)
    _seed(stores)
    original = _run(stores)
    stores.close()
    monkeypatch.setattr(reachability, "require_kafka", lambda servers: None)
    monkeypatch.setattr(event_publisher, "KafkaDeadLetters", lambda settings, **_: _letters(original))
    monkeypatch.setattr(direct.Direct, "_connect", lambda self, max_block_seconds=None: FrozenBroker())
    args = build_parser().parse_args(["dead-letters", "replay", str(original), "--idempotency-key", "k1"])
    with pytest.raises(CliError) as failed:
        args.func(CliSettings(catalog_url=url), args)
    assert failed.value.code == UNREACHABLE
    assert "Kafka did not acknowledge its events" in failed.value.message
    assert waited
    assert max(waited) <= REPLAY_PUBLISH_WAIT_SECONDS < PUBLICATION_LEASE_SECONDS
