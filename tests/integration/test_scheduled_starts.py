"""Scheduled runs published ahead of their instant, on real Kafka and real catalogs (SQLite, PostgreSQL).

The scheduler and the extractor share a clock shifted a few seconds before a whole minute (schedules fire on
whole minutes), so a burst is due seconds after the test starts; the extractor's consumer loop runs on a thread
as the service wires it (rounds of up to EXPORT_EXTRACTOR_START_ROUND requests, each request's records published
once it is handled, scheduled runs held back until their instant).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from devtools.processes import wait_until
from services.extractor.extraction import Extractor
from services.extractor.prompt_sends import prompt_sends
from services.extractor.request_rounds import Request, request_rounds
from services.extractor.run_request_decoding import decode_run_request
from services.extractor.scheduled_runs import StartTimes
from services.extractor.settings import ExtractorSettings
from services.scheduler.clock import ManualClock
from services.scheduler.planning import scheduled_run_id
from services.scheduler.scheduling import Scheduler
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.checkpoints import RunSync
from shared.domain.runs import RunStatus
from shared.domain.schedule_state import ScheduleAdvance
from shared.domain.sync_mode import SyncMode
from shared.events import RUN_EVENT_ADAPTER, ExtractionCompleted, RunRequested, RunSkipped, RunStarted, Trigger
from shared.kafka import ConsumerLoop, Outgoing, ensure_topics, make_consumer, make_producer, produce, produce_and_wait
from shared.querystore import MemberReader
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings
from tests.kafka_helpers import read_to_end, read_until

pytestmark = pytest.mark.integration

UTC = dt.UTC
#: The burst's instant, a whole minute; the shared clock reaches it LEAD seconds after the test starts.
INSTANT = dt.datetime(2031, 5, 6, 7, 8, tzinfo=UTC)
LEAD = dt.timedelta(seconds=6.5)
LOOKAHEAD = dt.timedelta(seconds=5)
BURST = 50
#: Run requests a round takes, as the service's default.
START_ROUND: int = ExtractorSettings.model_fields["extractor_start_round"].default
#: Due run requests a round starts together at most, as the service's default.
START_BATCH: int = ExtractorSettings.model_fields["extractor_start_batch"].default


#: What the extractor logs for a request of a run the scheduler kept from starting (overlap skip).
WITHHELD = (
    "run withheld by the scheduler's overlap policy (skip): another run of its definition was active; request ignored"
)


class ShiftedClock:
    """The real clock, shifted: it says ``start`` when created."""

    def __init__(self, start: dt.datetime) -> None:
        self.offset = start - dt.datetime.now(UTC)

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC) + self.offset


@dataclass
class Setup:
    settings: CommonSettings
    catalog: CatalogStores
    store_url: str
    clock: ShiftedClock

    def definition(self, name: str, **schedule: object) -> ExportDefinition:
        """A definition due once, at INSTANT (its run extracts a few members)."""
        on = {"date": INSTANT.date().isoformat(), "time": INSTANT.strftime("%H:%M")}
        return ExportDefinition.model_validate(
            {"name": name, "query": "few", "template": "t", "schedule": {"enabled": True, "once": on, **schedule}}
        )

    def scheduler(self, publish: Callable[[list[Outgoing]], None], scheduling: object | None = None) -> Scheduler:
        return Scheduler(
            scheduling=scheduling or self.catalog.scheduling,  # type: ignore[arg-type]
            definitions=self.catalog.definitions,
            runs=self.catalog.runs,
            clock=self.clock,
            topics=self.settings.topics,
            publish=publish,
            lookahead=LOOKAHEAD,
        )

    def run_events(self, done: Callable[[list[Any]], bool], timeout: float = 120) -> list[Any]:
        values = read_until(
            self.settings.kafka_bootstrap_servers,
            self.settings.topics.run_events,
            lambda vs: done([RUN_EVENT_ADAPTER.validate_json(v) for v in vs]),
            timeout=timeout,
        )
        return [RUN_EVENT_ADAPTER.validate_json(v) for v in values]

    def all_run_events(self) -> list[Any]:
        """Every run event published so far (each acknowledged before: none is still on its way)."""
        values = read_to_end(self.settings.kafka_bootstrap_servers, self.settings.topics.run_events)
        return [RUN_EVENT_ADAPTER.validate_json(v) for v in values]

    @contextmanager
    def extractor(
        self, clock: ShiftedClock | None = None, extraction: Any = None, start_batch: int = START_BATCH
    ) -> Iterator[ConsumerLoop[Request]]:
        """The extractor's consumer loop on a thread, wired as the service wires it (on ``extraction``, the catalog's
        extraction store unless given; up to ``start_batch`` due requests started together, 0: none); stopped on
        leaving."""
        start_times = StartTimes(max_wait=dt.timedelta(seconds=120), now=(clock or self.clock).now)
        topics = self.settings.topics
        consumer = make_consumer(
            self.settings,
            f"{self.settings.topic_prefix}member-export-extractor",
            [topics.run_requests],
            max_poll_records=START_ROUND,
        )
        reader = MemberReader.from_url(self.store_url)
        loop: ConsumerLoop[Request] = ConsumerLoop(
            service="extractor",
            consumer=consumer,
            producer=make_producer(self.settings, "extractor"),
            decode=decode_run_request,
            dead_letter_topic=topics.dead_letters,
            handle_round=request_rounds(
                lambda request: extractor.handle(request),
                start_times.hold,
                lambda: loop.stopping.is_set(),
                publish=lambda outgoing: extractor.publish(outgoing),
                start=(lambda requests: extractor.starts(requests)) if start_batch else None,
            ),
            poll_timeout_ms=100,
        )
        if start_batch:
            loop.held_round_records = start_batch
        extractor = Extractor(
            definitions=self.catalog.definitions,
            runs=self.catalog.runs,
            extraction=extraction or self.catalog.extraction,
            reader=reader,
            topics=topics,
            send=prompt_sends(loop.producer),
            page_size=1_000,
            start_times=start_times,
        )
        # The topic's partitions known before the group is joined: an assignment made without them is empty, and
        # stays so until the consumer's next metadata refresh (minutes).
        wait_until(
            lambda: bool(consumer.partitions_for_topic(topics.run_requests)), timeout=30, what="the topic's partitions"
        )
        thread = threading.Thread(target=run_until_it_dies, args=(loop,), name="extractor", daemon=True)
        thread.start()
        try:
            yield loop
        finally:
            loop.stopping.set()
            thread.join(30)
            reader.close()
            assert not thread.is_alive(), "the extractor did not stop"


class Died(BaseException):
    """The extractor process dying: nothing of it runs after this, nothing more is committed."""


def run_until_it_dies(loop: ConsumerLoop[Request]) -> None:
    with suppress(Died):  # what the loop did not commit is read again by the next extractor
        loop.run()


@pytest.fixture
def setup(catalog: CatalogStores, kafka_bootstrap: str, tmp_path: Path) -> Setup:
    settings = CommonSettings(
        kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", topic_partitions=3
    )
    ensure_topics(settings)
    store_url = f"sqlite:///{tmp_path / 'members.db'}"
    engine = make_engine(store_url)
    create_demo_members(engine, 20)
    engine.dispose()
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="few", sql="SELECT id, email FROM members WHERE id <= 3"))
    catalog.definitions.apply(HttpTemplate(name="t", query="few", profile="p", batch_size=100))
    return Setup(settings, catalog, store_url, ShiftedClock(INSTANT - LEAD))


class CrashAfterPublishing:
    """The catalog's scheduling store, whose first advance fails: the scheduler dies between publishing its runs
    and recording them."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.crashed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def advance_schedules(self, advances: list[ScheduleAdvance]) -> int:
        if advances and not self.crashed:
            self.crashed = True
            raise ConnectionError("the scheduler died")
        return self.store.advance_schedules(advances)  # type: ignore[attr-defined]


def test_a_burst_published_ahead_starts_at_its_instant_once_though_a_crashed_scheduler_published_it_twice(
    setup: Setup,
):
    names = [f"aligned-{i:03d}" for i in range(BURST)]
    for name in names:
        setup.catalog.definitions.apply(setup.definition(name))
    producer = make_producer(setup.settings, "scheduler")
    published: list[tuple[dt.datetime, RunRequested]] = []

    def publish(outgoing: list[Outgoing]) -> None:
        produce_and_wait(producer, outgoing)
        published.extend((setup.clock.now(), RunRequested.model_validate_json(o.value)) for o in outgoing)

    together = started_together()
    with setup.extractor():
        crashing = setup.scheduler(publish, CrashAfterPublishing(setup.catalog.scheduling))

        def published_or_crashed() -> bool:
            if published:
                return True
            try:
                crashing.tick()
            except ConnectionError:
                return True
            return bool(published)

        wait_until(published_or_crashed, timeout=60, interval=0.2, what="the burst published ahead")
        # A new scheduler (the same one restarted) ticks through the window and past the instant.
        restarted = setup.scheduler(publish)
        while setup.clock.now() < INSTANT + dt.timedelta(seconds=2):
            restarted.tick()
            time.sleep(0.5)  # the scheduler's tick, as its loop paces it: the clock ends it, not a condition
        events = setup.run_events(lambda es: sum(isinstance(e, ExtractionCompleted) for e in es) >= BURST)
    producer.close()

    ids = {setup.catalog.definitions.get_with_id(ExportDefinition, n)[0]: n for n in names}
    expected = {scheduled_run_id(definition_id, INSTANT) for definition_id in ids}
    assert Counter(r.run_id for _, r in published) == dict.fromkeys(expected, 2), "published twice, by the crash"
    assert all(when < INSTANT <= when + LOOKAHEAD for when, _ in published), "published ahead, within the window"
    started = [e for e in events if isinstance(e, RunStarted)]
    assert Counter(e.run_id for e in started) == dict.fromkeys(expected, 1), "each run started once"
    assert all(e.at + setup.clock.offset >= INSTANT for e in started), "a run started before its instant"
    assert {e.scheduled_for for e in started} == {INSTANT}
    assert started_together() - together == BURST, "started together, ahead of their extraction"


def test_a_held_run_lets_later_requests_through_does_not_hold_up_a_stop_and_is_read_again(setup: Setup):
    # Due a minute after the burst's instant: over a minute ahead, longer than the stop may take (30 s).
    due = INSTANT + dt.timedelta(minutes=1)
    setup.catalog.definitions.apply(
        setup.definition("later", once={"date": due.date().isoformat(), "time": due.strftime("%H:%M")})
    )
    setup.catalog.definitions.apply(ExportDefinition(name="on-demand", query="few", template="t"))
    later = RunRequested(
        definition="later", trigger=Trigger.SCHEDULE, requested_at=setup.clock.now(), scheduled_for=due
    )
    now = RunRequested(definition="on-demand")
    producer = make_producer(setup.settings, "test")
    # The same key: one partition, the on-demand request behind the held one.
    key, topic = str(later.run_id), setup.settings.topics.run_requests
    produce_and_wait(producer, [Outgoing(topic, key, later.to_bytes()), Outgoing(topic, key, now.to_bytes())])
    producer.close()

    with setup.extractor():  # stopped on leaving, within 30 s: the held run does not hold the stop up
        setup.run_events(lambda es: any(isinstance(e, RunStarted) and e.run_id == now.run_id for e in es))
    stopped = dt.datetime.now(UTC)

    # A replica whose clock has reached the instant reads the held request again (it was not committed).
    with setup.extractor(ShiftedClock(due)):
        events = setup.run_events(
            lambda es: any(isinstance(e, ExtractionCompleted) and e.run_id == later.run_id for e in es)
        )
    started = {e.run_id: e.at for e in events if isinstance(e, RunStarted)}
    assert len(started) == len([e for e in events if isinstance(e, RunStarted)]) == 2
    assert started[now.run_id] < stopped < started[later.run_id]


def published_ahead_request(setup: Setup, name: str) -> RunRequested:
    """The request the scheduler publishes ahead for ``name``'s run at INSTANT."""
    definition_id = setup.catalog.definitions.get_with_id(ExportDefinition, name)[0]
    return RunRequested(
        run_id=scheduled_run_id(definition_id, INSTANT),
        definition=name,
        trigger=Trigger.SCHEDULE,
        requested_at=INSTANT - LOOKAHEAD,
        requested_by="scheduler",
        scheduled_for=INSTANT,
        definition_id=definition_id,
    )


def extractor_of(setup: Setup, producer: Any, reader: MemberReader, extraction: Any = None) -> Extractor:
    """An extractor handling requests directly (no consumer loop: they are due by the time they are handled)."""
    return Extractor(
        definitions=setup.catalog.definitions,
        runs=setup.catalog.runs,
        extraction=extraction or setup.catalog.extraction,
        reader=reader,
        topics=setup.settings.topics,
        send=lambda out: produce(producer, out),
        page_size=1_000,
    )


def test_a_run_published_ahead_is_withdrawn_or_skipped_when_its_definition_changed_meanwhile(setup: Setup):
    names = ("still-due", "disabled", "rescheduled", "deleted", "replaced", "renamed", "busy")
    for name in names:
        setup.catalog.definitions.apply(setup.definition(name))
    requests = {name: published_ahead_request(setup, name) for name in names}
    # Meanwhile, between the publish and the instant:
    setup.catalog.definitions.apply(setup.definition("disabled", enabled=False))
    moved = {"date": INSTANT.date().isoformat(), "time": (INSTANT + dt.timedelta(minutes=1)).strftime("%H:%M")}
    setup.catalog.definitions.apply(setup.definition("rescheduled", once=moved))
    setup.catalog.definitions.delete(ExportDefinition, "deleted")
    # Deleted and created again: another definition (its own schedule fires it under its own run id).
    setup.catalog.definitions.delete(ExportDefinition, "replaced")
    setup.catalog.definitions.apply(setup.definition("replaced"))
    setup.catalog.definitions.rename("renamed", setup.definition("renamed-since"))  # the same definition
    active = uuid.uuid4()
    setup.catalog.runs.fold_run_event(RunStarted(run_id=active, definition="busy", trigger=Trigger.EVENT))

    producer = make_producer(setup.settings, "test")
    extractor = extractor_of(setup, producer, reader := MemberReader.from_url(setup.store_url))
    outcomes = {name: extractor.handle(request) for name, request in requests.items()}
    setup.catalog.definitions.apply(setup.definition("disabled"))  # enabled again: the request redelivered
    again = extractor.handle(requests["disabled"])
    producer.flush()

    reader.close()
    producer.close()
    assert all(outcome == [] for outcome in outcomes.values()), outcomes  # the skip is published at once
    assert again == []
    events = setup.all_run_events()
    assert sorted((type(e).__name__, e.definition, e.run_id) for e in events) == sorted(
        [
            ("RunStarted", "still-due", requests["still-due"].run_id),
            ("ExtractionCompleted", "still-due", requests["still-due"].run_id),
            ("RunStarted", "renamed-since", requests["renamed"].run_id),
            ("ExtractionCompleted", "renamed-since", requests["renamed"].run_id),
            ("RunSkipped", "busy", requests["busy"].run_id),
        ]
    )
    [skipped] = [e for e in events if isinstance(e, RunSkipped)]
    assert (skipped.scheduled_for, skipped.reason) == (INSTANT, f"previous run {active} was still active")


class CrashMarkingDone:
    """The catalog's extraction store, whose first save of a finished checkpoint fails: the extractor dies between
    publishing what a run became and marking it done."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.crashed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def save_checkpoint(self, checkpoint: Any) -> None:
        if checkpoint.completed and not self.crashed:
            self.crashed = True
            raise ConnectionError("the extractor died")
        self.store.save_checkpoint(checkpoint)  # type: ignore[attr-defined]


def test_a_skip_decided_at_the_instant_is_recorded_though_the_extractor_died_before_marking_the_run_done(
    setup: Setup,
):
    setup.catalog.definitions.apply(setup.definition("busy"))
    request = published_ahead_request(setup, "busy")
    setup.catalog.runs.fold_run_event(RunStarted(run_id=uuid.uuid4(), definition="busy", trigger=Trigger.EVENT))
    producer = make_producer(setup.settings, "test")
    reader = MemberReader.from_url(setup.store_url)
    with pytest.raises(ConnectionError):
        extractor_of(setup, producer, reader, CrashMarkingDone(setup.catalog.extraction)).handle(request)
    assert extractor_of(setup, producer, reader).handle(request) == []  # the request redelivered after the crash
    assert extractor_of(setup, producer, reader).handle(request) == []  # and again: done by now, nothing sent
    reader.close()
    producer.close()
    events = setup.all_run_events()
    assert [type(e) for e in events] == [RunSkipped, RunSkipped]
    for event in events:
        setup.catalog.runs.fold_run_event(event)
    record = setup.catalog.runs.get_run(request.run_id)
    assert record is not None
    assert (record.status, record.scheduled_for) == (RunStatus.SKIPPED, INSTANT)


def test_a_run_published_ahead_and_started_is_resumed_not_judged_again(setup: Setup):
    setup.catalog.definitions.apply(setup.definition("started"))
    request = published_ahead_request(setup, "started")
    # Its first start fixed its sync mode (its checkpoint says so); then the extractor died, and meanwhile its
    # definition was disabled: the redelivered request resumes the run (a schedule change never stops a run).
    checkpoint = setup.catalog.extraction.claim_extraction(request.run_id, "started")
    setup.catalog.extraction.save_checkpoint(replace(checkpoint, sync=RunSync(SyncMode.FULL, full_scope=True)))
    setup.catalog.definitions.apply(setup.definition("started", enabled=False))
    delays = start_delays()
    producer = make_producer(setup.settings, "test")
    reader = MemberReader.from_url(setup.store_url)
    extractor_of(setup, producer, reader).handle(request)
    reader.close()
    producer.close()
    events = setup.all_run_events()
    assert [(type(e), e.run_id) for e in events] == [
        (RunStarted, request.run_id),
        (ExtractionCompleted, request.run_id),
    ]
    assert start_delays() == delays, "a resume counted as a start"


def start_delays() -> float:
    return REGISTRY.get_sample_value("member_export_extractor_scheduled_start_delay_seconds_count") or 0.0


def test_a_definition_renamed_or_replaced_after_its_run_was_published_ahead_fires_once_at_the_instant(
    setup: Setup,
):
    for name in ("renamed", "replaced"):
        setup.catalog.definitions.apply(setup.definition(name))
    original = {
        name: setup.catalog.definitions.get_with_id(ExportDefinition, name)[0] for name in ("renamed", "replaced")
    }
    producer = make_producer(setup.settings, "scheduler")
    published: list[RunRequested] = []

    def publish(outgoing: list[Outgoing]) -> None:
        produce_and_wait(producer, outgoing)
        published.extend(RunRequested.model_validate_json(o.value) for o in outgoing)

    scheduler = setup.scheduler(publish)
    with setup.extractor():

        def both_published() -> bool:
            if len(published) < 2:
                scheduler.tick()
            return len(published) >= 2

        wait_until(both_published, timeout=60, interval=0.2, what="both definitions published")
        assert setup.clock.now() < INSTANT, "published when due, not ahead: the test's clock is too late"
        setup.catalog.definitions.rename("renamed", setup.definition("renamed-since"))
        setup.catalog.definitions.delete(ExportDefinition, "replaced")
        setup.catalog.definitions.apply(setup.definition("replaced"))
        while setup.clock.now() < INSTANT + dt.timedelta(seconds=2):
            scheduler.tick()
            time.sleep(0.5)  # the scheduler's tick, as its loop paces it: the clock ends it, not a condition
        setup.run_events(lambda es: sum(isinstance(e, ExtractionCompleted) for e in es) >= 2)
    producer.close()
    events = setup.all_run_events()  # the extractor stopped: all it published

    replaced = setup.catalog.definitions.get_with_id(ExportDefinition, "replaced")[0]
    assert replaced != original["replaced"]
    started = Counter((e.definition, e.run_id) for e in events if isinstance(e, RunStarted))
    assert started == {
        ("renamed-since", scheduled_run_id(original["renamed"], INSTANT)): 1,
        ("replaced", scheduled_run_id(replaced, INSTANT)): 1,
    }


class DyingAtClaim:
    """The catalog's extraction store; the extractor dies as it claims the ``at``-th run (counting from 1)."""

    def __init__(self, store: object, at: int) -> None:
        self.store, self.at, self.claims = store, at, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def claim_run(self, run_id: uuid.UUID, definition: str, **how: Any) -> Any:
        self.claims += 1
        if self.claims == self.at:
            raise Died
        return self.store.claim_run(run_id, definition, **how)  # type: ignore[attr-defined]


def started_together() -> float:
    """How many runs extractors in this process started together (services/extractor/bulk_starts.py)."""
    return REGISTRY.get_sample_value("member_export_extractor_runs_started_together_total") or 0.0


def test_a_burst_started_together_is_extracted_after_the_extractor_died_with_no_second_start(setup: Setup):
    names = [f"crash-{i:03d}" for i in range(BURST)]
    setup.catalog.definitions.apply_all([setup.definition(name) for name in names])
    requests = [published_ahead_request(setup, name) for name in names]
    producer = make_producer(setup.settings, "test")
    topic = setup.settings.topics.run_requests
    produce_and_wait(producer, [Outgoing(topic, str(r.run_id), r.to_bytes()) for r in requests])
    producer.close()

    # Its first claim one by one is after the round's start together: it dies between the start and the extraction.
    dying = DyingAtClaim(setup.catalog.extraction, 1)
    with setup.extractor(extraction=dying):
        wait_until(lambda: dying.claims >= 1, timeout=60, what="the extractor's death")
    before = setup.all_run_events()
    assert any(isinstance(e, RunStarted) for e in before), "started before it died"
    assert not any(isinstance(e, ExtractionCompleted) for e in before)
    assert committed_offsets(setup) == 0

    with setup.extractor():
        events = setup.run_events(lambda es: sum(isinstance(e, ExtractionCompleted) for e in es) >= BURST)
    ids = {r.run_id for r in requests}
    started = [e for e in events if isinstance(e, RunStarted)]
    assert Counter(e.run_id for e in started) == dict.fromkeys(ids, 1), "each run started once"
    assert all(e.at + setup.clock.offset >= INSTANT for e in started), "a run started before its instant"
    completed = [e for e in events if isinstance(e, ExtractionCompleted)]
    assert Counter(e.run_id for e in completed) == dict.fromkeys(ids, 1)
    assert {(e.members, e.batches) for e in completed} == {(3, 1)}


def committed_offsets(setup: Setup) -> int:
    """How many run requests the extractor's group has committed, over the topic's partitions."""
    group = f"{setup.settings.topic_prefix}member-export-extractor"
    topic = setup.settings.topics.run_requests
    # Not subscribed: it joins no group, it only asks the group's coordinator.
    consumer = KafkaConsumer(bootstrap_servers=setup.settings.kafka_bootstrap_servers, group_id=group)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return sum(consumer.committed(p) or 0 for p in partitions)
    finally:
        consumer.close()


def test_an_extractor_dying_mid_round_starts_no_run_twice_and_the_next_reads_the_round_again(setup: Setup):
    # A burst of small runs on one partition (one key): rounds of several requests each; the extractor dies
    # in the middle of its first round, the runs before it done (started, extracted) but none committed.
    count, dies_at = 2 * START_ROUND + 5, START_ROUND // 2
    names = [f"burst-{i:03d}" for i in range(count)]
    setup.catalog.definitions.apply_all([ExportDefinition(name=n, query="few", template="t") for n in names])
    requests = [RunRequested(definition=name) for name in names]
    producer = make_producer(setup.settings, "test")
    topic = setup.settings.topics.run_requests
    produce_and_wait(producer, [Outgoing(topic, "one-partition", r.to_bytes()) for r in requests])
    producer.close()

    dying = DyingAtClaim(setup.catalog.extraction, dies_at)
    with setup.extractor(extraction=dying):
        wait_until(lambda: dying.claims >= dies_at, timeout=60, what="the extractor's death")
    done_before = setup.all_run_events()
    assert sum(isinstance(e, ExtractionCompleted) for e in done_before) == dies_at - 1
    # Its round's requests, those of the runs done before it included, are not committed: read again.
    assert committed_offsets(setup) < dies_at - 1

    with setup.extractor():
        events = setup.run_events(lambda es: sum(isinstance(e, ExtractionCompleted) for e in es) >= count)
        wait_until(lambda: committed_offsets(setup) == count, timeout=30, what="every request committed")
    ids = {r.run_id for r in requests}
    started = Counter(e.run_id for e in events if isinstance(e, RunStarted))
    completed = Counter(e.run_id for e in events if isinstance(e, ExtractionCompleted))
    assert started == dict.fromkeys(ids, 1), "each run started once, though the first requests were read twice"
    assert completed == dict.fromkeys(ids, 1)


@pytest.mark.parametrize("lookahead", [0.0, LOOKAHEAD.total_seconds()])
def test_a_run_recorded_skipped_after_a_crash_is_not_started_by_its_first_request_still_in_kafka(
    setup: Setup, lookahead: float
):
    """The scheduler published a run (at its instant, or ahead of it) and died before moving its schedule on; a manual
    run of the definition (overlap skip) started before the extractor read the request. The restarted scheduler
    recorded the run skipped; the extractor then started the first request all the same (at once when published at
    its instant, or at its instant once the manual run had finished): it ran, its members sent, its record saying
    skipped."""
    publish = SchedulerPublish(setup)
    clock = ManualClock(INSTANT - dt.timedelta(minutes=1))
    run_id = published_then_crashed(setup, clock, publish, lookahead)
    manual = RunStarted(run_id=uuid.uuid4(), definition="busy", trigger=Trigger.MANUAL)
    setup.catalog.runs.fold_run_event(manual)
    clock.advance(INSTANT + dt.timedelta(seconds=2) - clock.now())
    publish.sent.clear()
    scheduler_at(setup, clock, publish, lookahead=lookahead).tick()  # the restarted scheduler
    publish.producer.close()
    recorded = publish.run_events()
    assert [(type(e), e.run_id) for e in recorded] == [(RunSkipped, run_id)]
    for event in recorded:  # as the notifier does
        setup.catalog.runs.fold_run_event(event)
    if lookahead:  # the manual run finished before the extractor judged the run at its instant
        setup.catalog.runs.fold_run_event(
            ExtractionCompleted(run_id=manual.run_id, definition="busy", members=0, batches=0)
        )

    logs = first_request_handled(setup, run_id, times=2)  # and read again (a rebalance)
    events = setup.all_run_events()
    assert [e for e in events if e.run_id == run_id and not isinstance(e, RunSkipped)] == [], "the skipped run ran"
    record = setup.catalog.runs.get_run(run_id)
    assert record is not None
    assert (record.status, record.started_at) == (RunStatus.SKIPPED, None)
    # Said as what it is (before: "run already extracted; request ignored", for a run that never started).
    assert [(e["event"], e.get("active_run")) for e in logs if e.get("run_id") == str(run_id)] == [
        (WITHHELD, str(manual.run_id))
    ] * 2


def test_a_run_withheld_whose_skipped_record_failed_is_recorded_skipped_though_the_other_run_ended_before_the_retry(
    setup: Setup,
):
    """The scheduler published a run and died before moving its schedule on; a manual run of the definition (overlap
    skip) was going when it came back: it withheld the run, but the broker failed its skipped record. The manual run
    ended before the next tick, which published the run's request again: the extractor ignored it (the run withheld)
    and the run had no record at all, neither skipped nor run; the extractor said it was "already extracted"."""
    publish = SchedulerPublish(setup)
    clock = ManualClock(INSTANT - dt.timedelta(minutes=1))
    run_id = published_then_crashed(setup, clock, publish)
    manual = RunStarted(run_id=uuid.uuid4(), definition="busy", trigger=Trigger.MANUAL)
    setup.catalog.runs.fold_run_event(manual)
    restarted = scheduler_at(setup, clock, publish)
    publish.fail_records = True
    clock.advance(dt.timedelta(seconds=5))
    with pytest.raises(KafkaTimeoutError):
        restarted.tick()  # the run withheld, its skipped record not published
    ended = ExtractionCompleted(run_id=manual.run_id, definition="busy", members=0, batches=0)
    setup.catalog.runs.fold_run_event(ended)
    assert setup.catalog.runs.active_runs(["busy"]) == {}, "the manual run ended"
    publish.fail_records = False
    publish.sent.clear()
    clock.advance(dt.timedelta(seconds=5))
    restarted.tick()
    publish.producer.close()
    recorded = publish.run_events()
    assert [(type(e), e.run_id) for e in publish.decoded()] == [(RunSkipped, run_id)]
    assert recorded[0].reason == f"previous run {manual.run_id} was still active"
    for event in recorded:  # as the notifier does
        setup.catalog.runs.fold_run_event(event)

    logs = first_request_handled(setup, run_id)
    assert [e for e in setup.all_run_events() if e.run_id == run_id and not isinstance(e, RunSkipped)] == []
    record = setup.catalog.runs.get_run(run_id)
    assert record is not None, "the run has no record"
    assert (record.status, record.started_at) == (RunStatus.SKIPPED, None)
    ignored = [e for e in logs if e.get("run_id") == str(run_id)]
    assert [(e["event"], e.get("active_run")) for e in ignored] == [(WITHHELD, str(manual.run_id))]


def first_request_handled(setup: Setup, run_id: uuid.UUID, times: int = 1) -> list[MutableMapping[str, Any]]:
    """The first run request in Kafka (``run_id``'s) handled ``times`` by an extractor: what it logged meanwhile."""
    requested = read_until(
        setup.settings.kafka_bootstrap_servers, setup.settings.topics.run_requests, lambda vs: len(vs) >= 1, timeout=60
    )
    assert [RunRequested.model_validate_json(v).run_id for v in requested] == [run_id]  # the first request, in Kafka
    extractor_producer = make_producer(setup.settings, "extractor")
    reader = MemberReader.from_url(setup.store_url)
    extractor = extractor_of(setup, extractor_producer, reader)
    with capture_logs() as logs:
        for _ in range(times):
            extractor.handle(RunRequested.model_validate_json(requested[0]))
    reader.close()
    extractor_producer.close()
    return logs


class SchedulerPublish:
    """The scheduler's publish to Kafka, keeping what it sent; with ``fail_records``, the broker fails a publish of run
    events (the skipped or missed records)."""

    def __init__(self, setup: Setup) -> None:
        self.topics = setup.settings.topics
        self.producer = make_producer(setup.settings, "scheduler")
        self.sent: list[Outgoing] = []
        self.fail_records = False

    def __call__(self, outgoing: list[Outgoing]) -> None:
        if self.fail_records and any(o.topic == self.topics.run_events for o in outgoing):
            raise KafkaTimeoutError("the broker failed the publish")
        produce_and_wait(self.producer, outgoing)
        self.sent.extend(outgoing)

    def decoded(self) -> list[Any]:
        """The run events and run requests sent, decoded."""
        return [
            RUN_EVENT_ADAPTER.validate_json(o.value)
            if o.topic == self.topics.run_events
            else RunRequested.model_validate_json(o.value)
            for o in self.sent
        ]

    def run_events(self) -> list[Any]:
        return [e for e in self.decoded() if not isinstance(e, RunRequested)]


def scheduler_at(
    setup: Setup, clock: ManualClock, publish: SchedulerPublish, scheduling: object = None, lookahead: float = 0.0
) -> Scheduler:
    """A scheduler process on ``clock`` (on ``scheduling``: the catalog's scheduling store unless given)."""
    return Scheduler(
        scheduling=scheduling or setup.catalog.scheduling,  # type: ignore[arg-type]
        definitions=setup.catalog.definitions,
        runs=setup.catalog.runs,
        clock=clock,
        topics=setup.settings.topics,
        publish=publish,
        lookahead=dt.timedelta(seconds=lookahead),
    )


def published_then_crashed(
    setup: Setup, clock: ManualClock, publish: SchedulerPublish, lookahead: float = 0.0
) -> uuid.UUID:
    """A definition 'busy' due at INSTANT (``clock`` a minute before), whose run a scheduler published (at its
    instant, or ahead of it with ``lookahead``) and died before moving its schedule on: the run's id."""
    setup.catalog.definitions.apply(setup.definition("busy"))
    run_id = scheduled_run_id(setup.catalog.definitions.get_with_id(ExportDefinition, "busy")[0], INSTANT)
    crashing = scheduler_at(setup, clock, publish, CrashAfterPublishing(setup.catalog.scheduling), lookahead)
    crashing.tick()  # seen
    clock.advance(dt.timedelta(seconds=60 - lookahead / 2 if lookahead else 61))  # ahead of its instant, or at it
    with pytest.raises(ConnectionError):
        crashing.tick()
    assert [r.run_id for r in publish.decoded()] == [run_id]
    return run_id
