"""Rounds of several run requests (a burst of small runs): their records published as each is handled, a round
cut short once it has taken its time, and the records the extractor waits for sent without lingering."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, NodeNotReadyError
from prometheus_client import REGISTRY

from services.extractor.prompt_sends import prompt_sends
from services.extractor.request_rounds import request_rounds
from services.extractor.scheduled_runs import StartTimes
from shared.events import RangeRequested, RunRequested, Trigger
from shared.kafka import Outgoing
from shared.kafka.held_records import HoldRecord

NOW = dt.datetime(2026, 3, 29, 0, 59, 50, tzinfo=dt.UTC)


def start_times() -> StartTimes:
    return StartTimes(max_wait=dt.timedelta(seconds=60), now=lambda: NOW, monotonic=lambda: 1000.0)


class Clock:
    """A monotonic clock, moved on by the handler (see Steps)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Steps:
    """A handler taking ``seconds[name]`` of ``clock``'s time per request; ``journal`` says what happened when."""

    def __init__(self, clock: Clock, seconds: dict[str, float] | None = None, fails: set[str] | None = None) -> None:
        self.clock, self.seconds, self.fails = clock, seconds or {}, fails or set()
        self.journal: list[str] = []

    def __call__(self, request: RunRequested | RangeRequested) -> list[Outgoing]:
        self.journal.append(f"handled {request.definition}")
        self.clock.now += self.seconds.get(request.definition, 0.1)
        if request.definition in self.fails:
            raise ValueError(f"{request.definition} is broken")
        return [Outgoing("events", str(request.run_id), request.definition.encode())]

    def publish(self, outgoing: list[Outgoing]) -> None:
        self.journal.extend(f"published {o.value.decode()}" for o in outgoing)


def requests(*names: str) -> list[RunRequested]:
    return [RunRequested(definition=name) for name in names]


def test_each_request_s_records_are_published_before_the_next_request_is_begun():
    clock = Clock()
    handler = Steps(clock, {"long": 1.5})
    results = request_rounds(handler, start_times().hold, lambda: False, publish=handler.publish, clock=clock)(
        requests("failed-fast", "long", "after")
    )
    assert results == [[], [], []]  # published already: the loop has nothing left to produce for them
    assert handler.journal == [
        "handled failed-fast",
        "published failed-fast",
        "handled long",
        "published long",
        "handled after",
        "published after",
    ]


def test_a_round_begins_no_request_after_its_time_and_hands_the_rest_to_the_next_round():
    clock = Clock()
    handler = Steps(clock, {"slow": 3.0})
    handle_round = request_rounds(handler, start_times().hold, lambda: False, round_seconds=2.0, clock=clock)
    first = handle_round(requests("a", "b"))
    assert all(isinstance(r, list) for r in first)
    # A round's first request is always begun, however long the round before took.
    results = handle_round(requests("slow", "next", "last"))
    assert isinstance(results[0], list)
    assert all(isinstance(r, HoldRecord) and r.until == 0.0 for r in results[1:])  # handed back, due at once
    assert handler.journal == ["handled a", "handled b", "handled slow"]


def test_requests_held_until_their_instant_do_not_use_up_a_round_s_time():
    clock = Clock()
    handler = Steps(clock)
    later = RunRequested(
        definition="later",
        trigger=Trigger.SCHEDULE,
        requested_at=NOW,
        scheduled_for=NOW + dt.timedelta(seconds=10),
    )
    clock.now = 5.0  # the round began long ago by this clock: only a handled request makes it time to stop
    handle_round = request_rounds(handler, start_times().hold, lambda: False, round_seconds=2.0, clock=clock)
    results = handle_round([later, *requests("now")])
    assert isinstance(results[0], HoldRecord)
    assert results[0].until > 1000.0
    assert isinstance(results[1], list)
    assert handler.journal == ["handled now"]


def test_a_failed_request_stays_its_own_and_a_publish_the_broker_refuses_hands_the_rest_back():
    clock = Clock()
    handler = Steps(clock, fails={"broken"})
    unavailable = NodeNotReadyError("broker away")
    published: list[str] = []

    def publish(outgoing: list[Outgoing]) -> None:
        if outgoing[0].value == b"unlucky":
            raise unavailable
        published.extend(o.value.decode() for o in outgoing)

    results = request_rounds(handler, start_times().hold, lambda: False, publish=publish, clock=clock)(
        requests("broken", "fine", "unlucky", "after")
    )
    assert isinstance(results[0], ValueError)
    assert results[1] == []
    assert results[2] is unavailable
    assert results[3] is unavailable
    assert published == ["fine"]
    assert handler.journal == ["handled broken", "handled fine", "handled unlucky"]


class Future:
    """A record's future: answered once flushed (or when the test says)."""

    def __init__(self, journal: list[str], error: Exception | None = None) -> None:
        self.journal, self.error, self.is_done = journal, error, False

    def get(self, timeout: float) -> Any:
        self.journal.append("acknowledged?")
        if self.error is not None:
            raise self.error


class Producer:
    """A producer stand-in: the records sent, what was flushed and when."""

    def __init__(self, flush_raises: Exception | None = None, error: Exception | None = None) -> None:
        self.journal: list[str] = []
        self.config = {"delivery_timeout_ms": 1000}
        self.flush_raises, self.error = flush_raises, error
        self.futures: list[Future] = []

    def send(self, topic: str, key: bytes, value: bytes, headers: Any = None) -> Future:
        self.journal.append(f"send {value.decode()}")
        self.futures.append(Future(self.journal, self.error))
        return self.futures[-1]

    def flush(self, timeout: float | None = None) -> None:
        self.journal.append("flush")
        if self.flush_raises is not None:
            raise self.flush_raises
        for future in self.futures:
            future.is_done = True


def test_waiting_for_records_not_acknowledged_yet_sends_them_at_once_then_waits_for_them():
    producer = Producer()
    sent = prompt_sends(producer)([Outgoing("events", "k", b"started"), Outgoing("batches", "k:0", b"batch")])
    assert producer.journal == ["send started", "send batch"]  # handed to the producer, not waited for yet
    sent.wait()
    assert producer.journal == ["send started", "send batch", "flush", "acknowledged?", "acknowledged?"]


def test_records_acknowledged_already_are_not_flushed_for():
    # A large run's page N, waited for once page N+1 is sent: its wait does not also wait for page N+1.
    producer = Producer()
    send = prompt_sends(producer)
    page = send([Outgoing("batches", "k:0", b"page N")])
    producer.futures[0].is_done = True
    send([Outgoing("batches", "k:1", b"page N+1")])
    page.wait()
    assert producer.journal == ["send page N", "send page N+1", "acknowledged?"]


def test_a_record_that_fails_raises_its_own_error_though_the_flush_timed_out():
    producer = Producer(flush_raises=KafkaTimeoutError("flush timed out"), error=NodeNotReadyError("broker away"))
    sent = prompt_sends(producer)([Outgoing("events", "k", b"v")])
    with pytest.raises(NodeNotReadyError):
        sent.wait()
    assert producer.journal == ["send v", "flush", "acknowledged?"]


def test_a_round_s_due_requests_are_given_to_start_together_before_any_is_handled_held_ones_not():
    clock = Clock()
    handler = Steps(clock, {"a": 1.5, "b": 1.5})
    later = RunRequested(
        definition="later", trigger=Trigger.SCHEDULE, requested_at=NOW, scheduled_for=NOW + dt.timedelta(seconds=5)
    )

    def start(due: Any) -> None:
        handler.journal.append("started " + " ".join(r.definition for r in due))

    round_ = request_rounds(
        handler, start_times().hold, lambda: False, publish=handler.publish, start=start, clock=clock
    )
    results = round_([*requests("a"), later, *requests("b", "c")])
    # Started together first (the held one not); then extracted one by one until the round's 2 s are up.
    assert handler.journal == ["started a b c", "handled a", "published a", "handled b", "published b"]
    assert [type(r) for r in results] == [list, HoldRecord, list, HoldRecord]


def test_a_round_whose_start_together_fails_handles_its_requests_one_by_one():
    handler = Steps(Clock())

    def start(_due: Any) -> None:
        raise ConnectionError("the catalog is away")

    results = request_rounds(handler, start_times().hold, lambda: False, publish=handler.publish, start=start)(
        requests("a", "b")
    )
    assert handler.journal == ["handled a", "published a", "handled b", "published b"]
    assert results == [[], []]


def test_a_round_s_held_requests_are_given_to_prepare_after_the_due_ones_start_and_its_failure_changes_nothing():
    clock = Clock()
    handler = Steps(clock)
    later = RunRequested(
        definition="later", trigger=Trigger.SCHEDULE, requested_at=NOW, scheduled_for=NOW + dt.timedelta(seconds=5)
    )

    def start(due: Any) -> None:
        handler.journal.append("started " + " ".join(r.definition for r in due))

    def prepare(held: Any) -> None:
        handler.journal.append("prepared " + " ".join(r.definition for r in held))
        raise ConnectionError("the catalog is away")

    round_ = request_rounds(
        handler,
        start_times().hold,
        lambda: False,
        publish=handler.publish,
        start=start,
        pending=start_times().pending,
        prepare=prepare,
        clock=clock,
    )
    results = round_([*requests("a"), later, *requests("b")])
    assert handler.journal == ["started a b", "handled a", "published a", "handled b", "published b", "prepared later"]
    assert [type(r) for r in results] == [list, HoldRecord, list]


def test_a_slow_read_ahead_of_held_requests_hands_back_none_of_the_round_s_due_requests():
    """Reading ahead the definitions of runs due later (``prepare``) takes none of the round's time: the runs due
    now are all handled in the round, however long the read ahead takes (review of s32-schedcache)."""
    clock = Clock()
    handler = Steps(clock)
    later = RunRequested(
        definition="later", trigger=Trigger.SCHEDULE, requested_at=NOW, scheduled_for=NOW + dt.timedelta(seconds=5)
    )

    def prepare(held: Any) -> None:
        handler.journal.append("prepared " + " ".join(r.definition for r in held))
        clock.now += 2.5  # longer than a round (a catalog under load, thousands of definitions)

    round_ = request_rounds(
        handler,
        start_times().hold,
        lambda: False,
        publish=handler.publish,
        start=lambda due: None,
        pending=start_times().pending,
        prepare=prepare,
        round_seconds=2.0,
        clock=clock,
    )
    results = round_([*requests("a"), later, *requests("b", "c")])
    assert [type(r) for r in results] == [list, HoldRecord, list, list]
    assert handler.journal[-1] == "prepared later"


def _early_count() -> float:
    return REGISTRY.get_sample_value("member_export_extractor_scheduled_runs_started_early_total") or 0.0


@pytest.mark.parametrize("together", [False, True])
def test_a_run_started_early_is_counted_once_though_handed_back_by_the_round_s_time(together: bool):
    # Scheduled an hour ahead (further than the extractor waits): started when received, and counted as early
    # once, when begun; not at each round it is handed back to (the round's 2 s taken by a long run before it).
    clock = Clock()
    handler = Steps(clock, {"slow": 3.0})
    times = start_times()
    started: list[str] = []
    start = (lambda due: started.extend(r.definition for r in due)) if together else None
    round_ = request_rounds(
        handler, times.hold, lambda: False, publish=handler.publish, start=start, pending=times.pending, clock=clock
    )
    far = RunRequested(
        definition="far", trigger=Trigger.SCHEDULE, requested_at=NOW, scheduled_for=NOW + dt.timedelta(hours=1)
    )
    before = _early_count()
    first = round_([*requests("slow"), far])
    assert isinstance(first[1], HoldRecord)  # handed to the next round
    assert _early_count() == before
    round_([far])
    assert _early_count() - before == 1
    assert handler.journal[-2:] == ["handled far", "published far"]
    assert started == (["slow", "far", "far"] if together else [])
