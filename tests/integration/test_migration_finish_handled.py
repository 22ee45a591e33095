"""Migration 0014 (when the notifier handled a run's finish) on SQLite and PostgreSQL, on a catalog with data: the
runs final before it are handled (an event of theirs coming again is not counted, paused or mailed again), a run
unfinished then has its finish handled once when it finishes, a downgrade keeps the runs."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy import Engine

from devtools.smtp_sink import SmtpSink
from services.notifier.mailer import SmtpMailer
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from shared.events import BatchOutcome, RunFailed
from shared.metrics import UNKNOWN_DEFINITION
from tests.integration.test_migrations import (
    RUN_NIGHTLY,
    RUN_OF_DELETED,
    RUN_REPLAY,
    RUN_WEEKLY,
    engine,
    fill_baseline,
)
from tests.integration.test_notifier import notifier_on

pytestmark = pytest.mark.integration

__all__ = ["engine"]  # the migrations' tests' fixture: an engine on the (empty) database


def finished(definition: str, status: str) -> float:
    sample = {"definition": definition, "status": status}
    return REGISTRY.get_sample_value("member_export_runs_finished_total", sample) or 0.0


def test_runs_final_before_0014_are_handled_and_a_run_unfinished_then_is_handled_once_when_it_finishes(
    engine: Engine, database_url: str
):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0013")
    with engine.connect() as connection:
        before = connection.execute(sa.text("SELECT run_id, status, delivered FROM runs ORDER BY run_id")).all()
    upgrade(engine, "0014")
    upgrade(engine)  # to the head of this release, which the stores require

    catalog = CatalogStores.from_url(database_url)
    try:
        unhandled = catalog.runs.finishes_unhandled([uuid.UUID(run_id) for run_id, _, _ in before])
        with SmtpSink() as sink:
            notifier = notifier_on(catalog, SmtpMailer("127.0.0.1", sink.port, max_attempts=1, max_wait=0.1))
            # The baseline's definitions break this release's rules: their runs are counted as of no definition.
            counted = finished(UNKNOWN_DEFINITION, "succeeded"), finished(UNKNOWN_DEFINITION, "failed")
            # An old final run's batch outcome again (a replay from the dead-letter topic): nothing to handle.
            again = BatchOutcome(
                run_id=uuid.UUID(RUN_NIGHTLY), definition="nightly-gold", batch_index=1, delivered=497, failed=3
            )
            assert notifier.handle_all([again]) == [[]]
            # The run that was unfinished fails now: its finish is handled, once.
            failure = RunFailed(run_id=uuid.UUID(RUN_WEEKLY), definition="weekly-all", reason="query failed")
            assert notifier.handle_all([failure, failure]) == [[], []]
            notifier.handle(failure)
            assert sink.received() == []  # neither definition mails anyone
        assert (finished(UNKNOWN_DEFINITION, "succeeded"), finished(UNKNOWN_DEFINITION, "failed")) == (
            counted[0],
            counted[1] + 1,
        )
        assert {str(run_id) for run_id in unhandled} == {RUN_WEEKLY}  # not RUN_NIGHTLY, RUN_REPLAY, RUN_OF_DELETED
        assert {RUN_NIGHTLY, RUN_REPLAY, RUN_OF_DELETED} == {run_id for run_id, _, _ in before} - {RUN_WEEKLY}
        assert not catalog.runs.finishes_unhandled([uuid.UUID(RUN_WEEKLY)])
    finally:
        catalog.close()

    downgrade(engine, "0013")
    assert current_revision(engine) == "0013"
    with engine.connect() as connection:
        after = connection.execute(sa.text("SELECT run_id, status, delivered FROM runs ORDER BY run_id")).all()
        columns = {c["name"] for c in sa.inspect(connection).get_columns("runs")}
    assert {run_id for run_id, _, _ in after} == {run_id for run_id, _, _ in before}
    assert "finish_handled_at" not in columns
    upgrade(engine)
    with engine.connect() as connection:
        marks = connection.execute(sa.text("SELECT run_id, finish_handled_at FROM runs")).all()
    assert len(marks) == len(before)
    assert [run_id for run_id, mark in marks if mark is None] == []  # every run is final by now: all handled
