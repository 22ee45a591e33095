"""The Idempotency-Key rule in the application layer (``shared.application.runs``), which the admin API and
exportctl's direct mode both call: a key names one request (definition and parameters) of one caller.
Over a real SQLite catalog; and the catalog migration that gave the schedule's bounds their one name.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared.application import runs as use_cases
from shared.application.actors import Actor, Role
from shared.application.errors import Invalid, PublishFailed, RunNotPublished
from shared.catalog import CatalogStores, make_engine
from shared.catalog.schema import downgrade, upgrade
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.runs import RunStatus
from shared.events import RunRequested, RunStarted, Trigger
from tests.admin_app import RecordingPublisher

pytestmark = pytest.mark.integration

OPERATOR = Actor(name="ops", role=Role.OPERATOR)


@pytest.fixture
def stores(tmp_path: Path, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    stores = migrated_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    stores.definitions.apply(ConnectionProfile(name="partner", base_url="https://partner.example.com"))
    stores.definitions.apply(
        SavedQuery(
            name="gold",
            sql="SELECT id, tier FROM members WHERE tier = :tier",
            parameters={"tier": {"type": "string", "default": "gold"}},
        )
    )
    stores.definitions.apply(HttpTemplate(name="upsert", query="gold", profile="partner"))
    for name in ("nightly", "weekly"):
        stores.definitions.apply(ExportDefinition(name=name, query="gold", template="upsert"))
    yield stores
    stores.close()


def _request(
    stores: CatalogStores, publisher: RecordingPublisher, key: str, *, definition: str = "nightly", **parameters: Any
) -> uuid.UUID:
    record = use_cases.request_run(
        OPERATOR,
        definition,
        store=stores.definitions,
        runs=stores.runs,
        publisher=publisher,
        parameters=parameters,
        idempotency_key=key,
    )
    return record.run_id


def test_a_retried_request_is_the_same_run_published_again_only_while_it_is_queued(stores: CatalogStores) -> None:
    publisher = RecordingPublisher()
    first = _request(stores, publisher, "k1", tier="silver")
    # Still queued: its request may not have reached Kafka (see the next test), so it is published again under the
    # same run id, which the extractor starts once.
    assert _request(stores, publisher, "k1", tier="silver") == first
    assert [request.run_id for request in publisher.run_requests] == [first, first]
    assert publisher.run_requests[1].parameters == {"tier": "silver"}
    stores.runs.fold_run_event(RunStarted(run_id=first, definition="nightly", trigger=Trigger.MANUAL))
    assert _request(stores, publisher, "k1", tier="silver") == first  # started: nothing published
    assert len(publisher.run_requests) == 2


@dataclass
class KafkaAway(RecordingPublisher):
    """A publisher whose broker does not acknowledge (what the Kafka adapter raises then)."""

    def publish_run_request(self, request: RunRequested) -> None:
        raise PublishFailed("the run request on exports.run-requests", "KafkaTimeoutError: Timeout after 15.0 s")


def test_a_run_request_kafka_does_not_acknowledge_is_said_recorded_queued_and_a_retry_publishes_it(
    stores: CatalogStores,
) -> None:
    with pytest.raises(RunNotPublished) as failed:
        _request(stores, KafkaAway(), "k1")
    run_id = failed.value.run_id
    record = stores.runs.get_run(run_id)
    assert record is not None
    assert record.status is RunStatus.QUEUED
    assert str(failed.value) == (
        f"run {run_id} was recorded queued, but Kafka did not acknowledge its request (KafkaTimeoutError: Timeout "
        "after 15.0 s): its outcome is unknown: it starts if the broker received it; retrying with the same "
        "Idempotency-Key publishes it again (the run starts once), else a run that never starts is failed as stuck "
        "(EXPORT_NOTIFIER_STUCK_AFTER_SECONDS)"
    )
    publisher = RecordingPublisher()
    assert _request(stores, publisher, "k1") == run_id  # before: the run, and nothing published (left queued)
    assert [request.run_id for request in publisher.run_requests] == [run_id]


@pytest.mark.parametrize(
    ("definition", "parameters"),
    [("nightly", {"tier": "platinum"}), ("nightly", {}), ("weekly", {"tier": "silver"})],
)
def test_a_key_reused_for_another_request_is_refused_and_stays_refused(
    stores: CatalogStores, definition: str, parameters: dict[str, Any]
) -> None:
    publisher = RecordingPublisher()
    first = _request(stores, publisher, "k1", tier="silver")
    for _ in range(2):
        with pytest.raises(Invalid, match="'k1' was already used for a different request") as refused:
            _request(stores, publisher, "k1", definition=definition, **parameters)
        assert refused.value.slug == "idempotency-key-reused"
    assert _request(stores, publisher, "k1", tier="silver") == first  # the first request keeps its key
    assert {request.run_id for request in publisher.run_requests} == {first}


def test_other_keys_and_other_callers_start_their_own_runs(stores: CatalogStores) -> None:
    publisher = RecordingPublisher()
    first = _request(stores, publisher, "k1")
    assert _request(stores, publisher, "k2") != first
    other = use_cases.request_run(
        Actor(name="someone-else", role=Role.OPERATOR),
        "nightly",
        store=stores.definitions,
        runs=stores.runs,
        publisher=publisher,
        idempotency_key="k1",
    )
    assert other.run_id != first


def test_the_migration_renames_stored_schedule_bounds_and_back(database_url: str) -> None:
    """On SQLite and PostgreSQL: a catalog of the last release, with definitions, upgraded and downgraded."""
    engine = make_engine(database_url)
    upgrade(engine, "0004")
    objects = sa.table("catalog_objects", *(sa.column(c) for c in ("id", "kind", "name", "version")))
    spec_column = sa.column("spec", sa.JSON())
    objects.append_column(spec_column)
    objects.append_column(sa.column("created_at", sa.DateTime()))
    objects.append_column(sa.column("updated_at", sa.DateTime()))
    old_schedule = {"enabled": True, "repeat": {"cron": "0 2 * * *"}, "start_date": "2026-01-01", "end_date": None}
    rows = [
        (
            "d1",
            "ExportDefinition",
            "nightly",
            {"name": "nightly", "query": "q", "template": "t", "schedule": old_schedule},
        ),
        ("d2", "ExportDefinition", "plain", {"name": "plain", "query": "q", "template": "t"}),
        ("q1", "SavedQuery", "q", {"name": "q", "sql": "SELECT id FROM members", "start_date": "kept"}),
    ]
    with engine.begin() as connection:
        for id_, kind, name, spec in rows:
            connection.execute(
                sa.insert(objects).values(
                    id=id_,
                    kind=kind,
                    name=name,
                    spec=spec,
                    version=1,
                    created_at=sa.func.now(),
                    updated_at=sa.func.now(),
                )
            )

    def specs() -> dict[str, Any]:
        with engine.begin() as connection:
            return dict(connection.execute(sa.select(objects.c.id, spec_column)).all())

    upgrade(engine)
    after = specs()
    assert after["d1"]["schedule"] == {
        "enabled": True,
        "repeat": {"cron": "0 2 * * *"},
        "from": "2026-01-01",
        "to": None,
    }
    assert ExportDefinition.model_validate(after["d1"]).schedule.start_date.isoformat() == "2026-01-01"
    assert after["d2"] == rows[1][3]
    assert after["q1"] == rows[2][3]  # not a definition: left alone
    downgrade(engine, "0004")
    assert specs()["d1"]["schedule"] == old_schedule
    engine.dispose()
