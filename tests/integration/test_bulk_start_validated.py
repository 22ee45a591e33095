"""A burst's start judges every definition as it is stored now, though the objects it validated are kept (issue 18).

The definitions store keeps what a bulk read validated, by row and version, and the extractor reads a scheduled
burst's definitions ahead of its instant (``BulkStarts.prepare``): a definition changed, withdrawn or deleted
since is still judged from what is stored at the instant, and one unchanged is not validated again."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from services.extractor.bulk_starts import BulkStarts
from services.extractor.scheduled_runs import StartTimes
from services.scheduler.planning import scheduled_run_id
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import RunRequested, Trigger
from shared.kafka import InFlight, Outgoing
from shared.topics import Topics

UTC = dt.UTC
FIRST = dt.datetime(2031, 5, 6, 2, 30, tzinfo=UTC)
SECOND = FIRST + dt.timedelta(days=1)
DAILY = {"enabled": True, "timezone": "UTC", "repeat": {"every": "day", "time": "02:30"}}


def definition(name: str, **changes: Any) -> ExportDefinition:
    return ExportDefinition.model_validate({"name": name, "query": "q", "template": "t", "schedule": DAILY} | changes)


@pytest.fixture
def stores(catalog: CatalogStores) -> CatalogStores:
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id, email FROM members"))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", batch_size=100))
    catalog.definitions.apply_all([definition(name) for name in ("kept", "rescheduled", "disabled", "deleted")])
    return catalog


def bulk_of(catalog: CatalogStores, sent: list[Outgoing]) -> BulkStarts:
    def send(outgoing: list[Outgoing]) -> InFlight:
        sent.extend(outgoing)
        return InFlight([], timeout_seconds=1.0)  # acknowledged at once

    return BulkStarts(
        definitions=catalog.definitions,
        runs=catalog.runs,
        extraction=catalog.extraction,
        topics=Topics(prefix="t."),
        send=send,
        start_times=StartTimes(max_wait=dt.timedelta(seconds=60)),
    )


def burst(catalog: CatalogStores, instant: dt.datetime, names: list[str]) -> list[RunRequested]:
    """The requests the scheduler publishes ahead of ``instant`` for ``names``' runs."""
    requests = []
    for name in names:
        definition_id = catalog.definitions.get_with_id(ExportDefinition, name)[0]
        requests.append(
            RunRequested(
                run_id=scheduled_run_id(definition_id, instant),
                definition=name,
                trigger=Trigger.SCHEDULE,
                requested_by="scheduler",
                requested_at=instant - dt.timedelta(seconds=5),
                scheduled_for=instant,
                definition_id=definition_id,
            )
        )
    return requests


def started_names(bulk: BulkStarts, requests: list[RunRequested]) -> set[str]:
    return {bulk.started[r.run_id] for r in requests if r.run_id in bulk.started}


def test_a_definition_changed_or_deleted_after_its_burst_was_read_ahead_is_judged_as_stored_at_the_instant(
    stores: CatalogStores,
):
    names = ["kept", "rescheduled", "disabled", "deleted"]
    bulk = bulk_of(stores, [])
    first = burst(stores, FIRST, names)
    bulk.prepare(first)
    assert bulk(first) == 4
    assert started_names(bulk, first) == set(names)
    for request in first:
        bulk.handled(request.run_id)  # extracted: the next burst's runs do not wait for them

    second = burst(stores, SECOND, names)
    bulk.prepare(second)  # every definition read and kept as it is now, ahead of the instant
    stores.definitions.apply(definition("rescheduled", schedule=DAILY | {"repeat": {"every": "day", "time": "03:00"}}))
    stores.definitions.apply(definition("disabled", schedule=DAILY | {"enabled": False}))
    stores.definitions.delete(ExportDefinition, "deleted")

    assert bulk(second) == 1  # the others withdrawn or gone: left to the one-by-one path, which says why
    assert started_names(bulk, second) == {"kept"}


def test_a_definition_changed_back_to_due_after_a_burst_starts_in_the_next(stores: CatalogStores):
    bulk = bulk_of(stores, [])
    stores.definitions.apply(definition("disabled", schedule=DAILY | {"enabled": False}))
    first = burst(stores, FIRST, ["disabled"])
    bulk.prepare(first)
    assert bulk(first) == 0  # kept disabled

    stores.definitions.apply(definition("disabled"))  # enabled again
    second = burst(stores, SECOND, ["disabled"])
    assert bulk(second) == 1


def test_a_burst_of_definitions_read_ahead_validates_none_of_them_again_at_its_instant(
    stores: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    names = ["kept", "rescheduled", "disabled", "deleted"]
    bulk = bulk_of(stores, [])
    requests = burst(stores, FIRST, names)
    bulk.prepare(requests)
    stores.definitions.apply(definition("kept", label="edited"))  # one changed since: validated again
    validated: list[str] = []
    real = ExportDefinition.model_validate.__func__  # type: ignore[attr-defined]

    def counted(cls: type[ExportDefinition], /, spec: Any, **kwargs: Any) -> ExportDefinition:
        validated.append(spec["name"])
        return real(cls, spec, **kwargs)

    monkeypatch.setattr(ExportDefinition, "model_validate", classmethod(counted))
    assert bulk(requests) == 4
    assert validated == ["kept"]
    assert stores.definitions.many_run_objects(names=["kept"])[0]["kept"].definition.label == "edited"
