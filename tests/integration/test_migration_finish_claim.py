"""Migration 0015 (who claims a run's finish, since when; the index of unhandled finishes) on SQLite and PostgreSQL,
on a catalog with data: the runs keep their rows and marks, an unhandled run's finish is claimed once and finished by
the sweep when it is past the lease, a downgrade keeps the runs and drops the claim's columns and index."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from devtools.smtp_sink import SmtpSink
from services.notifier.mailer import SmtpMailer
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from tests.integration.test_migrations import RUN_NIGHTLY, RUN_WEEKLY, engine, fill_baseline
from tests.integration.test_notifier import notifier_on

pytestmark = pytest.mark.integration

__all__ = ["engine"]  # the migrations' tests' fixture: an engine on the (empty) database

COLUMNS = "run_id, status, delivered, finished_at, finish_handled_at"


def test_0015_keeps_the_runs_and_their_marks_and_an_unhandled_finish_is_claimed_once_then_swept(
    engine: Engine, database_url: str
):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0014")
    with engine.begin() as connection:
        # A run folded final by a 0014 notifier that died before its finish: final, unhandled, no event to come.
        connection.execute(
            sa.text("UPDATE runs SET status = 'failed', finished_at = last_event_at WHERE run_id = :id"),
            {"id": RUN_WEEKLY},
        )
        before = connection.execute(sa.text(f"SELECT {COLUMNS} FROM runs ORDER BY run_id")).all()
    assert [run_id for run_id, *_, handled in before if handled is None] == [RUN_WEEKLY]

    upgrade(engine, "0015")
    upgrade(engine)

    with engine.connect() as connection:
        assert connection.execute(sa.text(f"SELECT {COLUMNS} FROM runs ORDER BY run_id")).all() == before
        claims = connection.execute(sa.text("SELECT finish_claimed_at, finish_claimed_by FROM runs")).all()
    assert set(claims) == {(None, None)}
    catalog = CatalogStores.from_url(database_url)
    try:
        weekly, nightly = uuid.UUID(RUN_WEEKLY), uuid.UUID(RUN_NIGHTLY)
        assert catalog.runs.claim_finishes([weekly, nightly], "a", 60) == ({weekly}, set())  # nightly: handled
        assert catalog.runs.claim_finishes([weekly], "b", 60) == (set(), {weekly})
        with SmtpSink() as sink:
            notifier = notifier_on(catalog, SmtpMailer("127.0.0.1", sink.port, max_attempts=1, max_wait=0.1))
            notifier.replica_id = "b"
            notifier.sweep()  # a's claim is fresh: left to it
            assert catalog.runs.finishes_unhandled([weekly]) == {weekly}
            notifier.finish_lease_seconds = 0.0  # a's claim is over at once (its finish, 2025, long past too)
            notifier.sweep()
            assert sink.received() == []  # the baseline's definitions mail no one
        assert not catalog.runs.finishes_unhandled([weekly])
    finally:
        catalog.close()

    downgrade(engine, "0014")
    assert current_revision(engine) == "0014"
    with engine.connect() as connection:
        after = connection.execute(sa.text("SELECT run_id, status, delivered FROM runs ORDER BY run_id")).all()
        columns = {c["name"] for c in sa.inspect(connection).get_columns("runs")}
        indexes = {i["name"] for i in sa.inspect(connection).get_indexes("runs")}
    assert after == [(run_id, status, delivered) for run_id, status, delivered, *_ in before]
    assert {"finish_claimed_at", "finish_claimed_by"} & columns == set()
    assert "ix_runs_finish_unhandled" not in indexes
    upgrade(engine)
    assert current_revision(engine) != "0014"
