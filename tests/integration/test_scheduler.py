"""The scheduler against real catalogs (SQLite, PostgreSQL) and real Kafka, time driven by the test."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, text
from structlog.testing import capture_logs

from services.scheduler.clock import ManualClock
from services.scheduler.planning import scheduled_run_id
from services.scheduler.scheduling import FULL_SYNC_EVERY, Scheduler
from shared.catalog import CatalogStores
from shared.catalog.database import now as real_now
from shared.catalog.engine import make_engine
from shared.catalog.schema import downgrade, upgrade
from shared.catalog.tables import CatalogObjectRow
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.checkpoints import RunSync
from shared.domain.runs import RunStatus
from shared.domain.schedule import fire_times
from shared.domain.sync_mode import SyncMode
from shared.events import (
    RUN_EVENT_ADAPTER,
    AnyRunEvent,
    BatchOutcome,
    ExtractionCompleted,
    RunMissed,
    RunRequested,
    RunSkipped,
    RunStarted,
    Trigger,
)
from shared.kafka import Outgoing, ensure_topics, make_producer, produce_and_wait
from shared.settings import CommonSettings
from shared.topics import Topics
from tests.admin_app import in_process_api, seed
from tests.integration.test_console_fields import signed_in
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC)  # the next night Paris moves to summer time
MINUTE = dt.timedelta(minutes=1)


def definition(name: str, zone: str = "UTC", **schedule) -> ExportDefinition:
    return ExportDefinition.model_validate(
        {
            "name": name,
            "query": "q",
            "template": "t",
            "schedule": {"enabled": True, "timezone": zone, **schedule},
        }
    )


class Recorder:
    """A publish function that keeps what the scheduler published."""

    def __init__(self) -> None:
        self.records: list[Outgoing] = []

    def __call__(self, outgoing: list[Outgoing]) -> None:
        self.records.extend(outgoing)

    def events(self):
        return [
            RUN_EVENT_ADAPTER.validate_json(r.value)
            if r.topic.endswith("run-events")
            else RunRequested.model_validate_json(r.value)
            for r in self.records
        ]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def scheduler(catalog: CatalogStores, recorder: Recorder) -> Scheduler:
    return Scheduler(
        scheduling=catalog.scheduling,
        definitions=catalog.definitions,
        runs=catalog.runs,
        clock=ManualClock(T0),
        topics=Topics("x."),
        publish=recorder,
        catch_up=dt.timedelta(hours=1),
    )


def run_for(scheduler: Scheduler, duration: dt.timedelta, step: dt.timedelta = MINUTE) -> None:
    clock = scheduler.clock
    assert isinstance(clock, ManualClock)
    end = clock.now() + duration
    while clock.now() < end:
        clock.advance(step)
        scheduler.tick()


def scheduler_on(stores: CatalogStores, clock: ManualClock | None = None, **options: Any) -> Scheduler:
    """A scheduler process on ``stores`` (its clock at T0 unless told), keeping what it publishes to itself."""
    return Scheduler(
        scheduling=stores.scheduling,
        definitions=stores.definitions,
        runs=stores.runs,
        clock=clock or ManualClock(T0),
        topics=Topics("x."),
        publish=Recorder(),
        **options,
    )


def failing_maths_for(cron: str) -> Callable[..., list[dt.datetime]]:
    """The scheduler's ``fire_times``, raising for the schedules of ``cron`` what a schedule's maths raised
    (OverflowError, issue s48): patched into services.scheduler.planning, the admin API's and exportctl's still work."""
    real_fire_times = fire_times

    def failing(schedule, *args, **kwargs):
        if schedule.cron == cron:
            raise OverflowError("date value out of range")
        return real_fire_times(schedule, *args, **kwargs)

    return failing


def test_a_daily_schedule_fires_at_local_time_with_deterministic_ids(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder
):
    catalog.definitions.apply(definition("nightly", "Europe/Paris", repeat={"every": "day", "time": "02:30"}))
    catalog.definitions.apply(
        definition("paused", cron="* * * * *").model_copy(
            update={"schedule": definition("p", cron="* * * * *").schedule.model_copy(update={"enabled": False})}
        )
    )
    scheduler.tick()
    run_for(scheduler, dt.timedelta(days=3), step=dt.timedelta(minutes=5))
    fired = [e for e in recorder.events() if isinstance(e, RunRequested)]
    definition_id, _ = catalog.definitions.get_with_id(ExportDefinition, "nightly")
    assert REGISTRY.get_sample_value("member_export_scheduler_definitions") == 1  # "paused" is not counted
    # 02:30 does not exist on 29 March in Paris: it fires at 03:00 CEST (01:00 UTC).
    expected = [
        dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        dt.datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
        dt.datetime(2026, 3, 31, 0, 30, tzinfo=UTC),
    ]
    assert [r.scheduled_for for r in fired] == expected
    assert [r.run_id for r in fired] == [scheduled_run_id(definition_id, due) for due in expected]
    assert {(r.definition, r.trigger) for r in fired} == {("nightly", Trigger.SCHEDULE)}


def _counted(metric: str, definition: str) -> float:
    """A scheduler counter's value for ``definition`` (0 before its first increment)."""
    return REGISTRY.get_sample_value(metric, {"definition": definition}) or 0.0


def test_missed_runs_beyond_the_window_are_recorded_and_the_latest_within_it_fires(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder
):
    catalog.definitions.apply(definition("hourly", cron="0 * * * *"))
    missed_before = _counted("member_export_scheduler_runs_missed_total", "hourly")
    fired_before = _counted("member_export_scheduler_runs_fired_total", "hourly")
    scheduler.tick()  # seen at T0
    clock = scheduler.clock
    assert isinstance(clock, ManualClock)
    clock.advance(dt.timedelta(hours=4, minutes=10))  # the scheduler was down
    scheduler.tick()
    events = recorder.events()
    assert [e.scheduled_for for e in events if isinstance(e, RunMissed)] == [
        T0 + dt.timedelta(hours=h) for h in (1, 2, 3)
    ]
    assert [e.scheduled_for for e in events if isinstance(e, RunRequested)] == [T0 + dt.timedelta(hours=4)]
    assert _counted("member_export_scheduler_runs_missed_total", "hourly") - missed_before == 3
    assert _counted("member_export_scheduler_runs_fired_total", "hourly") - fired_before == 1


def test_a_run_due_while_the_previous_one_is_active_is_skipped(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder
):
    catalog.definitions.apply(definition("busy", cron="*/15 * * * *"))
    catalog.definitions.apply(definition("parallel", cron="*/15 * * * *", overlap="allow"))
    for name in ("busy", "parallel"):
        catalog.runs.fold_run_event(
            RunStarted(
                run_id=scheduled_run_id(catalog.definitions.get_with_id(ExportDefinition, name)[0], T0),
                definition=name,
                trigger=Trigger.SCHEDULE,
            )
        )
    skipped_before = {
        name: _counted("member_export_scheduler_runs_skipped_total", name) for name in ("busy", "parallel")
    }
    scheduler.tick()
    run_for(scheduler, dt.timedelta(minutes=15))
    events = recorder.events()
    skipped = [e for e in events if isinstance(e, RunSkipped)]
    skipped_counted = {
        name: _counted("member_export_scheduler_runs_skipped_total", name) - before
        for name, before in skipped_before.items()
    }
    assert skipped_counted == {"busy": 1, "parallel": 0}
    assert [e.definition for e in skipped] == ["busy"]
    assert skipped[0].reason.startswith("previous run ")
    assert [e.definition for e in events if isinstance(e, RunRequested)] == ["parallel"]


def test_edits_take_effect_at_the_next_tick(scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder):
    catalog.definitions.apply(definition("edited", cron="0 3 * * *"))
    scheduler.tick()
    catalog.definitions.apply(definition("edited", cron="*/30 * * * *"))
    run_for(scheduler, dt.timedelta(hours=1))
    assert [e.scheduled_for for e in recorder.events()] == [T0 + dt.timedelta(minutes=30), T0 + dt.timedelta(hours=1)]
    catalog.definitions.apply(
        definition("edited", cron="*/30 * * * *").model_copy(
            update={"schedule": definition("x", cron="*/30 * * * *").schedule.model_copy(update={"enabled": False})}
        )
    )
    run_for(scheduler, dt.timedelta(hours=1))
    assert len(recorder.events()) == 2


def _fired(recorder: Recorder) -> list[tuple[str, dt.datetime | None]]:
    return [(e.definition, e.scheduled_for) for e in recorder.events() if isinstance(e, RunRequested)]


def _errors_counted() -> float:
    return REGISTRY.get_sample_value("member_export_scheduler_schedule_errors_total") or 0.0


def test_a_schedule_whose_maths_fails_is_logged_and_counted_and_the_others_still_fire(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
):
    catalog.definitions.apply(definition("healthy", cron="0 2 * * *"))
    catalog.definitions.apply(definition("broken", cron="0 3 * * *"))
    monkeypatch.setattr("services.scheduler.planning.fire_times", failing_maths_for("0 3 * * *"))
    errors_before = _errors_counted()
    with capture_logs() as logs:
        scheduler.tick()
        run_for(scheduler, dt.timedelta(days=2), step=dt.timedelta(minutes=30))
    assert _fired(recorder) == [("healthy", T0 + dt.timedelta(hours=14)), ("healthy", T0 + dt.timedelta(hours=38))]
    failed = [e for e in logs if e["event"].startswith("schedule not computable")]
    assert {(e["definition"], e["error"]) for e in failed} == {("broken", "OverflowError")}
    assert _errors_counted() - errors_before == len(failed) >= 1
    # Left with no next instant (not retried every tick); an edit computes it again.
    monkeypatch.setattr("services.scheduler.planning.fire_times", fire_times)
    catalog.definitions.apply(definition("broken", cron="0 4 * * *"))
    run_for(scheduler, dt.timedelta(days=1), step=dt.timedelta(minutes=30))
    assert ("broken", T0 + dt.timedelta(days=2, hours=16)) in _fired(recorder)


def test_a_definition_stored_with_a_date_past_the_calendar_does_not_stop_the_others(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder
):
    """A catalog holding, from before the dates' bound, a schedule whose maths overflowed Python's calendar (its
    day before 0001-01-01): every tick failed, and the nightly never fired."""
    catalog.definitions.apply(definition("nightly", repeat={"every": "day", "time": "02:00"}))
    catalog.definitions.apply(definition("ancient", repeat={"every": "day", "time": "02:00"}, **{"from": "2026-01-01"}))
    with catalog.definitions.database.transaction() as session:  # as an older release stored it
        row = session.execute(select(CatalogObjectRow).where(CatalogObjectRow.name == "ancient")).scalar_one()
        row.spec = {**row.spec, "schedule": {**row.spec["schedule"], "from": "0001-01-01"}}
    scheduler.tick()
    run_for(scheduler, dt.timedelta(days=2), step=dt.timedelta(minutes=30))
    assert [name for name, _ in _fired(recorder)] == ["nightly", "nightly"]


def test_an_edit_stamped_before_the_latest_edit_is_seen(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
):
    """An edit whose updated_at is not the newest (its writer's now() read before another writer's commit, or its
    host's clock behind) left (count, latest update) unchanged: the scheduler never saw it, and the definition never
    fired until a restart."""
    catalog.definitions.apply(definition("a", cron="0 3 * * *"))
    catalog.definitions.apply(definition("b", cron="0 4 * * *"))
    scheduler.tick()
    catalog.definitions.apply(definition("a", cron="0 5 * * *"))
    scheduler.tick()
    monkeypatch.setattr("shared.catalog.definitions_store.now", lambda: real_now() - dt.timedelta(seconds=5))
    catalog.definitions.apply(definition("b", cron="0 6 * * *"))
    monkeypatch.setattr("shared.catalog.definitions_store.now", real_now)
    run_for(scheduler, dt.timedelta(days=1), step=dt.timedelta(minutes=30))
    assert ("b", T0 + dt.timedelta(hours=18)) in _fired(recorder)
    assert catalog.scheduling.schedules_to_sync() == []


def test_an_edit_the_fingerprint_misses_is_seen_within_a_minute(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
):
    """Whatever the fingerprint says (one equal after a change is unlikely, not impossible): bounded, not forever."""
    catalog.definitions.apply(definition("a", cron="0 3 * * *"))
    scheduler.tick()
    monkeypatch.setattr(catalog.definitions, "definitions_fingerprint", lambda: (1, 1, None))
    scheduler.tick()
    catalog.definitions.apply(definition("a", cron="* * * * *"))
    run_for(scheduler, FULL_SYNC_EVERY + MINUTE)
    assert catalog.scheduling.schedules_to_sync() == []
    assert {name for name, _ in _fired(recorder)} == {"a"}  # every minute, from the edit's first sync on


@pytest.fixture
def postgres_catalog(
    postgres_database_factory: Callable[[], str], migrated_catalog: Callable[[str], CatalogStores]
) -> Iterator[CatalogStores]:
    catalog = migrated_catalog(postgres_database_factory())
    yield catalog
    catalog.close()


def test_two_replicas_fire_every_due_instant_once_and_survive_the_leaders_death(
    postgres_catalog: CatalogStores, settings: CommonSettings
):
    zones = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
    definitions = [definition(f"every-15-{i}", zones[i % len(zones)], repeat={"every": "15min"}) for i in range(40)]
    for d in definitions:
        postgres_catalog.definitions.apply(d)
    ensure_topics(settings, [settings.topics.run_requests, settings.topics.run_events])
    producer = make_producer(settings, "test-scheduler")
    second_catalog = CatalogStores.from_url(
        postgres_catalog.database.engine.url.render_as_string(hide_password=False), migrate=True
    )

    def publish(outgoing: list[Outgoing]) -> None:
        produce_and_wait(producer, outgoing)

    lease, step = 45, dt.timedelta(seconds=30)
    clock = ManualClock(T0)
    replicas = {
        name: Scheduler(
            scheduling=replica_catalog.scheduling,
            definitions=replica_catalog.definitions,
            runs=replica_catalog.runs,
            clock=clock,
            topics=settings.topics,
            publish=publish,
            replica_id=f"replica-{name}",
            lease_seconds=lease,
        )
        for name, replica_catalog in (("a", postgres_catalog), ("b", second_catalog))
    }
    fired: list[tuple[str, dt.datetime, RunRequested]] = []  # (replica, clock time, request)
    end, killed_at = T0 + dt.timedelta(hours=6, minutes=30), T0 + dt.timedelta(hours=3, minutes=10)
    while clock.now() <= end:
        for name, replica in replicas.items():
            if name == "a" and clock.now() >= killed_at:
                continue  # replica A is dead: it neither ticks nor renews its lease
            fired += [(name, clock.now(), request) for request in replica.tick()]
        clock.advance(step)
    producer.close()
    second_catalog.close()

    expected = Counter((d.name, due) for d in definitions for due in fire_times(d.schedule, T0, end, limit=10_000))
    assert sum(expected.values()) >= 1000
    assert Counter((r.definition, r.scheduled_for) for _, _, r in fired) == expected, "no double run, no miss"
    assert {name for name, when, _ in fired if when < killed_at} == {"a"}, "one leader at a time"
    assert {name for name, when, _ in fired if when >= killed_at} == {"b"}
    delays = [when - request.scheduled_for for _, when, request in fired if request.scheduled_for]
    assert max(delays) <= dt.timedelta(seconds=lease) + step, "the survivor took over within the lease"

    published = [
        RunRequested.model_validate_json(v)
        for v in read_until(
            settings.kafka_bootstrap_servers,
            settings.topics.run_requests,
            lambda vs: len(vs) >= sum(expected.values()),
            timeout=120,
        )
    ]
    assert len(published) == len({p.run_id for p in published}) == sum(expected.values())


class _Crash(BaseException):
    """The scheduler's process dying (not an exception its loop would log and carry on from)."""


def _crashing_between_publish_and_advance(catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(advances):
        raise _Crash

    monkeypatch.setattr(catalog.scheduling, "advance_schedules", crash)


def _kafka_scheduler(catalog: CatalogStores, settings: CommonSettings, clock: ManualClock, sent: list[Outgoing]):
    """A scheduler process publishing to real Kafka (and keeping what it published in ``sent``)."""
    producer = make_producer(settings, "test-scheduler")

    def publish(outgoing: list[Outgoing]) -> None:
        produce_and_wait(producer, outgoing)
        sent.extend(outgoing)

    scheduler = Scheduler(
        scheduling=catalog.scheduling,
        definitions=catalog.definitions,
        runs=catalog.runs,
        clock=clock,
        topics=settings.topics,
        publish=publish,
        catch_up=dt.timedelta(hours=1),
    )
    return scheduler, producer


def test_a_run_published_before_a_crash_is_not_recorded_missed_when_the_scheduler_returns_past_the_window(
    catalog: CatalogStores, settings: CommonSettings, monkeypatch: pytest.MonkeyPatch
):
    """The scheduler published a run's request and died before moving its schedule on; it came back more than the
    catch-up window later. The run had run (the request was in Kafka, the extractor ran it): it was recorded missed
    all the same, its record turned from succeeded to missed and its definition counted a missed run."""
    catalog.definitions.apply(definition("nightly", repeat={"every": "day", "time": "13:00"}))
    definition_id, _ = catalog.definitions.get_with_id(ExportDefinition, "nightly")
    due = T0 + dt.timedelta(hours=1)
    run_id = scheduled_run_id(definition_id, due)
    ensure_topics(settings, [settings.topics.run_requests, settings.topics.run_events])
    clock, sent = ManualClock(T0), list[Outgoing]()
    first, producer = _kafka_scheduler(catalog, settings, clock, sent)
    first.tick()  # seen at T0
    clock.advance(dt.timedelta(hours=1, seconds=1))
    with monkeypatch.context() as patched:
        _crashing_between_publish_and_advance(catalog, patched)
        with pytest.raises(_Crash):
            first.tick()
    producer.close()
    requested = read_until(
        settings.kafka_bootstrap_servers, settings.topics.run_requests, lambda values: len(values) >= 1, timeout=60
    )
    assert [RunRequested.model_validate_json(v).run_id for v in requested] == [run_id]
    # The extractor ran it (its events folded into the run's record, as the notifier does).
    extraction: list[AnyRunEvent] = [
        RunStarted(run_id=run_id, definition="nightly", trigger=Trigger.SCHEDULE, scheduled_for=due),
        ExtractionCompleted(run_id=run_id, definition="nightly", members=3, batches=1),
        BatchOutcome(run_id=run_id, definition="nightly", batch_index=0, delivered=3, failed=0),
    ]
    for event in extraction:
        catalog.runs.fold_run_event(event)
    assert catalog.runs.get_run(run_id).status is RunStatus.SUCCEEDED
    missed_before = _counted("member_export_scheduler_runs_missed_total", "nightly")

    clock.advance(dt.timedelta(hours=3))  # back past the catch-up window (a new process)
    sent.clear()
    second, producer = _kafka_scheduler(catalog, settings, clock, sent)
    second.tick()
    producer.close()
    events = [RUN_EVENT_ADAPTER.validate_json(o.value) for o in sent if o.topic == settings.topics.run_events]
    for event in events:
        catalog.runs.fold_run_event(event)
    assert [e for e in events if isinstance(e, RunMissed)] == []
    assert catalog.runs.get_run(run_id).status is RunStatus.SUCCEEDED
    assert _counted("member_export_scheduler_runs_missed_total", "nightly") == missed_before
    # And the schedule moved on: the next day's instant fires.
    clock.advance(dt.timedelta(hours=21))  # the next day, 13:00:01
    sent.clear()
    third, producer = _kafka_scheduler(catalog, settings, clock, sent)
    third.tick()
    producer.close()
    fired = [RunRequested.model_validate_json(o.value) for o in sent if o.topic == settings.topics.run_requests]
    assert [r.scheduled_for for r in fired] == [due + dt.timedelta(days=1)]


def test_a_schedule_not_computable_is_counted_while_it_is_and_the_admin_api_names_it(
    tmp_path: Path, migrated_catalog: Callable[[str], CatalogStores], monkeypatch: pytest.MonkeyPatch
):
    """Before, only a counter of errors said it (its rate fell after an hour whether or not the definition was fixed),
    and the schedule preview listed fire times that never came."""
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http in the test client
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with in_process_api(tmp_path, catalog_url=url, migrated_catalog=migrated_catalog) as api, api.client() as admin:
        seed(admin)
        path = "/api/v1/export-definitions/nightly/schedule"
        assert admin.put(path, json={"enabled": True, "timezone": "UTC", "cron": "0 3 * * *"}).status_code == 200
        stores = CatalogStores.from_url(url)
        scheduler = scheduler_on(stores)
        with monkeypatch.context() as patched:
            patched.setattr("services.scheduler.planning.fire_times", failing_maths_for("0 3 * * *"))
            scheduler.tick()
        assert REGISTRY.get_sample_value("member_export_scheduler_definitions_not_computable") == 1
        preview = admin.get(f"{path}/preview").json()
        assert (preview["not_computable"], preview["fire_times"]) == ("OverflowError", [])
        with signed_in(api, "admin") as console:
            assert "OverflowError: not fired until edited" in console.page("/exports")
        scheduler.tick()  # not computed again (and not counted as fixed) until an edit
        assert REGISTRY.get_sample_value("member_export_scheduler_definitions_not_computable") == 1

        assert admin.put(path, json={"enabled": True, "timezone": "UTC", "cron": "0 4 * * *"}).status_code == 200
        scheduler.tick()
        assert REGISTRY.get_sample_value("member_export_scheduler_definitions_not_computable") == 0
        preview = admin.get(f"{path}/preview").json()
        assert preview["not_computable"] is None
        assert len(preview["fire_times"]) == 5
        with signed_in(api, "admin") as console:
            assert "not fired until edited" not in console.page("/exports")
        stores.close()


def _crashed_while_firing(scheduler: Scheduler, catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler publishes ``hourly``'s run due at T0 + 1 h and dies before moving its schedule on."""
    scheduler.tick()
    clock = scheduler.clock
    assert isinstance(clock, ManualClock)
    clock.advance(dt.timedelta(hours=1, seconds=1))
    with monkeypatch.context() as patched:
        _crashing_between_publish_and_advance(catalog, patched)
        with pytest.raises(_Crash):
            scheduler.tick()
    clock.advance(dt.timedelta(minutes=5))


def test_a_run_published_before_a_crash_and_running_is_not_skipped_for_itself(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
):
    """Back within the catch-up window, its schedule not moved on: the run was due again, and the active run that
    its skip policy found was itself. It was recorded skipped while it ran ("previous run <itself> was still
    active"), its record turned to skipped."""
    catalog.definitions.apply(definition("hourly", cron="0 * * * *"))
    definition_id, _ = catalog.definitions.get_with_id(ExportDefinition, "hourly")
    due = T0 + dt.timedelta(hours=1)
    run_id = scheduled_run_id(definition_id, due)
    _crashed_while_firing(scheduler, catalog, monkeypatch)
    catalog.runs.fold_run_event(RunStarted(run_id=run_id, definition="hourly", trigger=Trigger.SCHEDULE))
    recorder.records.clear()
    scheduler.tick()  # the replacement process
    events = recorder.events()
    for event in events:
        if not isinstance(event, RunRequested):
            catalog.runs.fold_run_event(event)
    assert [e for e in events if isinstance(e, RunSkipped)] == []
    assert [(type(e), e.run_id) for e in events] == [(RunRequested, run_id)]  # published again: the same run
    assert catalog.runs.get_run(run_id).status is RunStatus.EXTRACTING


def test_a_schedule_not_computable_before_migration_0021_is_counted_and_named_after_the_upgrade(
    database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """0021 kept no error for a schedule whose maths had failed before it: stored with no next instant, as a paused or
    ended one is, it was not counted by the gauge nor named by the schedule preview until its definition was edited."""
    engine = make_engine(database_url)
    upgrade(engine)  # the definitions written by this release's store, then the catalog taken back to 0020
    old = CatalogStores.from_url(database_url)  # what a release before 0021 had stored
    old.definitions.apply(definition("nightly", repeat={"every": "day", "time": "02:00"}))
    old.definitions.apply(definition("broken", cron="0 3 * * *"))
    old.definitions.apply(definition("paused", cron="0 4 * * *", enabled=False))
    old.definitions.apply(definition("ended", repeat={"every": "day", "time": "02:00"}, to="2026-01-31"))
    old.close()
    downgrade(engine, "0020")
    with engine.begin() as connection:  # as 0020's scheduler left them: no next instant, nothing else said
        rows = connection.execute(select(CatalogObjectRow.id, CatalogObjectRow.name, CatalogObjectRow.version)).all()
        for id_, name, version in rows:
            connection.execute(
                text(
                    "INSERT INTO schedules (definition_id, definition_version, handled_until, next_due_at) VALUES "
                    "(:id, :version, :handled, :next)"
                ),
                {
                    "id": id_,
                    "version": version,
                    "handled": T0,
                    "next": T0 + dt.timedelta(hours=14) if name == "nightly" else None,
                },
            )
    upgrade(engine)
    engine.dispose()

    stores = CatalogStores.from_url(database_url)
    scheduler = scheduler_on(stores)
    monkeypatch.setattr("services.scheduler.planning.fire_times", failing_maths_for("0 3 * * *"))
    with capture_logs() as logs:
        scheduler.tick()
        scheduler.tick()
    assert REGISTRY.get_sample_value("member_export_scheduler_definitions_not_computable") == 1
    assert stores.definitions.schedules_not_computable() == {"broken": "OverflowError"}
    assert [(e["definition"], e["error"]) for e in logs if e["event"].startswith("schedule not computable")] == [
        ("broken", "OverflowError")
    ]
    stores.close()


@pytest.mark.parametrize("overlap", ["skip", "allow"])
def test_a_run_published_again_after_a_crash_keeps_its_definitions_overlap_policy(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, overlap: str
):
    """Its first publication never reached Kafka; meanwhile a manual run of the definition started. Published again
    by the next process, it ran beside that run although the definition skips overlapping runs."""
    catalog.definitions.apply(definition("hourly", cron="0 * * * *", overlap=overlap))
    definition_id, _ = catalog.definitions.get_with_id(ExportDefinition, "hourly")
    run_id = scheduled_run_id(definition_id, T0 + dt.timedelta(hours=1))
    _crashed_while_firing(scheduler, catalog, monkeypatch)
    manual = RunStarted(run_id=uuid.uuid4(), definition="hourly", trigger=Trigger.MANUAL)
    catalog.runs.fold_run_event(manual)
    recorder.records.clear()  # lost with the broker's failure
    skipped_before = _counted("member_export_scheduler_runs_skipped_total", "hourly")
    scheduler.tick()  # the replacement process
    events = recorder.events()
    for event in events:
        if not isinstance(event, RunRequested):
            catalog.runs.fold_run_event(event)
    if overlap == "skip":
        assert [(type(e), e.run_id) for e in events] == [(RunSkipped, run_id)]
        assert events[0].reason == f"previous run {manual.run_id} was still active"
        assert catalog.runs.get_run(run_id).status is RunStatus.SKIPPED
        assert _counted("member_export_scheduler_runs_skipped_total", "hourly") - skipped_before == 1
    else:
        assert [(type(e), e.run_id) for e in events] == [(RunRequested, run_id)]
    recorder.records.clear()
    scheduler.tick()  # the schedule moved on: nothing published again
    assert recorder.events() == []


def test_a_run_published_before_a_crash_and_finished_is_published_again_as_it_was_beside_another_run(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
):
    """Its request reached Kafka and the run finished; a manual run is going when the scheduler comes back. The
    republish is the same request (the extractor ignores a run id it ran): the run is not turned into a skipped one."""
    catalog.definitions.apply(definition("hourly", cron="0 * * * *"))
    definition_id, _ = catalog.definitions.get_with_id(ExportDefinition, "hourly")
    due = T0 + dt.timedelta(hours=1)
    run_id = scheduled_run_id(definition_id, due)
    _crashed_while_firing(scheduler, catalog, monkeypatch)
    # The extractor ran it: its checkpoint claimed, its sync fixed, done; its events folded into its record.
    checkpoint = catalog.extraction.claim_extraction(run_id, "hourly")
    catalog.extraction.save_checkpoint(
        replace(checkpoint, completed=True, sync=RunSync(SyncMode.FULL, full_scope=True))
    )
    for event in (
        RunStarted(run_id=run_id, definition="hourly", trigger=Trigger.SCHEDULE, scheduled_for=due),
        ExtractionCompleted(run_id=run_id, definition="hourly", members=3, batches=1),
        BatchOutcome(run_id=run_id, definition="hourly", batch_index=0, delivered=3, failed=0),
        RunStarted(run_id=uuid.uuid4(), definition="hourly", trigger=Trigger.MANUAL),
    ):
        catalog.runs.fold_run_event(event)
    recorder.records.clear()
    scheduler.tick()
    events = recorder.events()
    for event in events:
        if not isinstance(event, RunRequested):
            catalog.runs.fold_run_event(event)
    assert [(type(e), e.run_id) for e in events] == [(RunRequested, run_id)]
    assert catalog.runs.get_run(run_id).status is RunStatus.SUCCEEDED


def test_a_run_due_after_a_rename_is_skipped_while_a_run_started_under_the_old_name_is_active(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder
):
    """Overlap skip. The definition's 13:00 run was going when the definition was renamed: at 14:00 the scheduler
    looked for runs by the new name, found none, and started the 14:00 run beside it."""
    catalog.definitions.apply(definition("hourly", cron="0 * * * *"))
    run_for(scheduler, dt.timedelta(hours=1))
    [first] = [e for e in recorder.events() if isinstance(e, RunRequested)]
    catalog.runs.fold_run_event(RunStarted(run_id=first.run_id, definition="hourly", trigger=Trigger.SCHEDULE))
    catalog.definitions.rename("hourly", definition("hourly-renamed", cron="0 * * * *"))
    recorder.records.clear()
    run_for(scheduler, dt.timedelta(hours=1))
    events = recorder.events()
    assert [(type(e), e.definition) for e in events] == [(RunSkipped, "hourly-renamed")]
    assert events[0].reason == f"previous run {first.run_id} was still active"


def test_a_definition_created_under_a_renamed_ones_old_name_is_not_skipped_for_the_renamed_ones_run(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder
):
    """Overlap skip. 'hourly' was renamed 'hourly-renamed' while its run was going, then a new 'hourly' was created:
    the new one has never run, yet its 14:00 run was recorded skipped for the renamed one's run (found by the name it
    was recorded under)."""
    catalog.definitions.apply(definition("hourly", cron="0 * * * *"))
    run_for(scheduler, dt.timedelta(hours=1))
    [first] = [e for e in recorder.events() if isinstance(e, RunRequested)]
    catalog.runs.fold_run_event(RunStarted(run_id=first.run_id, definition="hourly", trigger=Trigger.SCHEDULE))
    catalog.definitions.rename("hourly", definition("hourly-renamed", cron="0 * * * *", enabled=False))
    catalog.definitions.apply(definition("hourly", cron="0 * * * *"))
    assert catalog.runs.active_runs(["hourly-renamed", "hourly"]) == {"hourly-renamed": first.run_id}
    recorder.records.clear()
    run_for(scheduler, dt.timedelta(hours=1))
    assert [(type(e), e.definition) for e in recorder.events()] == [(RunRequested, "hourly")]


def test_a_definition_deleted_and_created_again_under_its_name_is_not_skipped_for_the_deleted_ones_run(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder
):
    """Overlap skip. 'hourly' was deleted while its 13:00 run was going, then created again under the same name: the
    new definition has never run, yet its 14:00 run was recorded skipped for the deleted one's run (found by name).
    A run recorded with no definition (its definition unknown when it began) is still found by its name."""
    catalog.definitions.apply(definition("hourly", cron="0 * * * *"))
    run_for(scheduler, dt.timedelta(hours=1))
    [first] = [e for e in recorder.events() if isinstance(e, RunRequested)]
    catalog.runs.fold_run_event(RunStarted(run_id=first.run_id, definition="hourly", trigger=Trigger.SCHEDULE))
    catalog.definitions.delete(ExportDefinition, "hourly")
    unknown = RunStarted(run_id=uuid.uuid4(), definition="other", trigger=Trigger.MANUAL)  # no such definition yet
    catalog.runs.fold_run_event(unknown)
    catalog.definitions.apply(definition("hourly", cron="0 * * * *"))
    assert catalog.runs.active_runs(["hourly", "other"]) == {"other": unknown.run_id}
    recorder.records.clear()
    run_for(scheduler, dt.timedelta(hours=1))
    assert [(type(e), e.definition) for e in recorder.events()] == [(RunRequested, "hourly")]


def test_a_rename_while_the_scheduler_was_down_keeps_its_missed_and_late_runs(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
):
    """The scheduler was down from 12:00 to 15:30 and the hourly definition was renamed at 15:20, its schedule as it
    was. A rename counted as a schedule edit: nothing before it fired or was recorded missed (the 13:00 and 14:00
    runs unrecorded, the alert silent, the 15:00 run within the catch-up window not fired)."""
    catalog.definitions.apply(definition("hourly", cron="0 * * * *"))
    scheduler.tick()  # seen at T0 (12:00)
    clock = scheduler.clock
    assert isinstance(clock, ManualClock)
    clock.advance(dt.timedelta(hours=3, minutes=20))
    with monkeypatch.context() as patched:  # renamed at 15:20 by the scheduler's clock
        patched.setattr("shared.catalog.definitions_store.now", clock.now)
        catalog.definitions.rename("hourly", definition("renamed", cron="0 * * * *"))
    clock.advance(dt.timedelta(minutes=10))
    scheduler.tick()
    events = recorder.events()
    assert [(type(e).__name__, e.definition, e.scheduled_for) for e in events] == [
        ("RunMissed", "renamed", T0 + dt.timedelta(hours=1)),
        ("RunMissed", "renamed", T0 + dt.timedelta(hours=2)),
        ("RunRequested", "renamed", T0 + dt.timedelta(hours=3)),
    ]


def test_a_run_published_before_a_crash_is_published_again_after_a_rename(
    scheduler: Scheduler, catalog: CatalogStores, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
):
    """Its first publication never reached Kafka, and the definition was renamed before the scheduler came back: the
    rename wiped the instant the scheduler was publishing, so the run was neither published again nor recorded."""
    catalog.definitions.apply(definition("hourly", cron="0 * * * *"))
    definition_id, _ = catalog.definitions.get_with_id(ExportDefinition, "hourly")
    _crashed_while_firing(scheduler, catalog, monkeypatch)
    catalog.definitions.rename("hourly", definition("renamed", cron="0 * * * *"))
    recorder.records.clear()  # lost with the broker's failure
    scheduler.tick()  # the replacement process
    events = recorder.events()
    due = T0 + dt.timedelta(hours=1)
    assert [(type(e), e.run_id, e.definition) for e in events] == [
        (RunRequested, scheduled_run_id(definition_id, due), "renamed")
    ]


def test_a_schedule_stored_before_migration_0023_keeps_its_state_and_counts_its_next_edit_as_a_schedule_edit(
    database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """0023 adds the digest of the schedule last computed, null on the rows stored before it."""
    engine = make_engine(database_url)
    upgrade(engine)  # the definition written by this release's store, then the catalog taken back to 0022
    old = CatalogStores.from_url(database_url)
    old.definitions.apply(definition("hourly", cron="0 * * * *"))
    old.close()
    downgrade(engine, "0022")
    with engine.begin() as connection:  # as 0022's scheduler left it, publishing its 13:00 run when it stopped
        connection.execute(
            text(
                "INSERT INTO schedules (definition_id, definition_version, handled_until, next_due_at, firing_for) "
                "SELECT id, version, :handled, :next, :next FROM catalog_objects WHERE name = 'hourly'"
            ),
            {"handled": T0, "next": T0 + dt.timedelta(hours=1)},
        )
    upgrade(engine)
    engine.dispose()

    stores = CatalogStores.from_url(database_url)
    try:
        clock = ManualClock(T0 + dt.timedelta(hours=1, minutes=5))
        scheduler = scheduler_on(stores, clock)
        scheduler.tick()  # the row as it was: its unconfirmed 13:00 run published again
        assert isinstance(scheduler.publish, Recorder)
        assert _fired(scheduler.publish) == [("hourly", T0 + dt.timedelta(hours=1))]
        scheduler.publish.records.clear()
        # Its first edit since counts as a schedule edit (no digest known): nothing due before it fires. The next keeps
        # the schedule's place (the digest written at that sync).
        with monkeypatch.context() as patched:
            patched.setattr("shared.catalog.definitions_store.now", clock.now)
            clock.advance(dt.timedelta(hours=1, minutes=25))  # down until 14:30, renamed then
            stores.definitions.rename("hourly", definition("renamed", cron="0 * * * *"))
            clock.advance(dt.timedelta(minutes=5))
            scheduler.tick()
            assert scheduler.publish.events() == []  # 14:00, due before the edit: neither fired nor missed
            clock.advance(dt.timedelta(hours=1, minutes=30))  # down until 16:05, renamed then
            stores.definitions.rename("renamed", definition("renamed-again", cron="0 * * * *"))
        clock.advance(dt.timedelta(minutes=5))
        scheduler.tick()
        assert [(type(e), e.definition, e.scheduled_for) for e in scheduler.publish.events()] == [
            (RunMissed, "renamed-again", T0 + dt.timedelta(hours=3)),
            (RunRequested, "renamed-again", T0 + dt.timedelta(hours=4)),
        ]
    finally:
        stores.close()
