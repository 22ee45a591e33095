"""Run requests within the contract that used to be lost: a too-large integer parameter, another system's
scheduled run (session 51's contract hunt)."""

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.extractor.extraction import Extractor
from shared.catalog import make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import RUN_EVENT_ADAPTER, Event, RunFailed, RunRequested, RunStarted
from shared.kafka import InFlight, Outgoing
from shared.querystore import MemberReader
from shared.querystore.demo_data import create_demo_members
from shared.settings import CommonSettings

QUERY = SavedQuery(
    name="q",
    sql="SELECT id FROM members WHERE points >= :min_points",
    parameters={"min_points": {"type": "integer", "default": 0}},
)


@pytest.fixture
def handle(tmp_path: Path, migrated_catalog: Callable[[str], Any]) -> Iterator[Callable[[bytes], list[Event]]]:
    """Handle one run request (JSON) for definition ``d`` (no schedule) on a SQLite member store: its run events."""
    members = f"sqlite:///{tmp_path / 'members.db'}"
    engine = make_engine(members)
    create_demo_members(engine, 5)
    engine.dispose()
    catalog = migrated_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(QUERY)
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p"))
    catalog.definitions.apply(ExportDefinition(name="d", query="q", template="t"))
    topics = CommonSettings().topics
    reader = MemberReader.from_url(members)
    sent: list[Outgoing] = []

    def send(outgoing: list[Outgoing]) -> InFlight:
        sent.extend(outgoing)
        return InFlight([], timeout_seconds=1.0)

    extractor = Extractor(
        definitions=catalog.definitions,
        runs=catalog.runs,
        extraction=catalog.extraction,
        reader=reader,
        topics=topics,
        send=send,
        page_size=100,
    )

    def run(value: bytes) -> list[Event]:
        outgoing = extractor.handle(RunRequested.model_validate_json(value))
        records = [*sent, *outgoing]
        return [RUN_EVENT_ADAPTER.validate_json(o.value) for o in records if o.topic == topics.run_events]

    try:
        yield run
    finally:
        reader.close()
        catalog.close()


def test_an_integer_parameter_too_large_for_the_store_fails_the_run_naming_the_query(handle) -> None:
    # It used to raise OverflowError: no run.failed, the run left running until the stuck sweep.
    value = b'{"definition": "d", "run_id": "%s", "parameters": {"min_points": 9223372036854775808}}'
    events = handle(value % str(uuid.uuid4()).encode())
    failed = [e for e in events if isinstance(e, RunFailed)]
    assert len(failed) == 1
    assert "query 'q' failed" in failed[0].reason


def test_another_systems_scheduled_run_for_a_definition_without_schedule_starts(handle) -> None:
    # Without definition_id (the scheduler always sets it) it used to be withdrawn as "disabled": recorded nowhere.
    due = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=50)
    request = {"definition": "d", "run_id": str(uuid.uuid4()), "trigger": "schedule", "scheduled_for": due.isoformat()}
    events = handle(json.dumps(request).encode())
    assert any(isinstance(e, RunStarted) for e in events), [type(e).__name__ for e in events]
