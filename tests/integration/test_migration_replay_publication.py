"""Migration 0017 (a replay run's publication: its plan, the steps Kafka acknowledged, who publishes it) on SQLite and
PostgreSQL, on a catalog with data: the runs keep their rows, a replay recorded before it has no plan and no step
acknowledged, its publication is claimed by one request at a time (taken over past the lease, ended by the last
step), a new replay's plan is read back as written; a downgrade keeps the runs and drops the columns."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from shared.domain.replay import ALL_ACKNOWLEDGED, STARTED_ACKNOWLEDGED, ReplayPlan, ReplayPublication
from shared.domain.runs import RunRecord
from tests.integration.test_migrations import RUN_NIGHTLY, RUN_REPLAY, engine, fill_baseline

pytestmark = pytest.mark.integration

__all__ = ["engine"]  # the migrations' tests' fixture: an engine on the (empty) database

COLUMNS = "run_id, status, trigger, replay_of, extracted, delivered, finished_at"
NEW = {"replay_plan", "replay_acknowledged", "replay_claimed_at", "replay_claimed_by"}


def test_0017_keeps_the_runs_and_a_replays_publication_is_claimed_once_and_ended_by_its_last_step(
    engine: Engine, database_url: str
):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0016")
    with engine.connect() as connection:
        before = connection.execute(sa.text(f"SELECT {COLUMNS} FROM runs ORDER BY run_id")).all()

    upgrade(engine, "0017")
    upgrade(engine)

    with engine.connect() as connection:
        assert connection.execute(sa.text(f"SELECT {COLUMNS} FROM runs ORDER BY run_id")).all() == before
        new = connection.execute(sa.text(f"SELECT {', '.join(sorted(NEW))} FROM runs")).all()
    assert set(new) == {(0, None, None, None)}
    catalog = CatalogStores.from_url(database_url)
    try:
        runs, replay = catalog.runs, uuid.UUID(RUN_REPLAY)
        assert runs.replay_publication(replay) == ReplayPublication(plan=None, acknowledged=0)
        assert runs.batches_with_outcomes(uuid.UUID(RUN_NIGHTLY)) == {0, 1}
        assert runs.claim_replay_publication(replay, "a", 60)
        assert runs.claim_replay_publication(replay, "a", 60)  # its own claim again
        assert not runs.claim_replay_publication(replay, "b", 60)
        assert runs.replay_step_acknowledged(replay, "a", STARTED_ACKNOWLEDGED)  # still a's claim
        assert not runs.claim_replay_publication(replay, "b", 60)
        with engine.begin() as connection:  # a's claim made two minutes ago (the catalog clock is milliseconds)
            connection.execute(
                sa.text("UPDATE runs SET replay_claimed_at = :at WHERE run_id = :id"),
                {"at": _minutes_ago(engine, 2), "id": str(replay)},
            )
        assert runs.claim_replay_publication(replay, "b", 60)  # a's claim past the lease: taken over
        assert not runs.replay_step_acknowledged(replay, "a", ALL_ACKNOWLEDGED)  # no longer a's: records nothing
        assert runs.replay_publication(replay) == ReplayPublication(plan=None, acknowledged=STARTED_ACKNOWLEDGED)
        runs.release_replay_publication(replay, "b")
        assert runs.claim_replay_publication(replay, "c", 60)
        assert runs.replay_step_acknowledged(replay, "c", ALL_ACKNOWLEDGED)
        assert not runs.claim_replay_publication(replay, "c", 0.0)  # all acknowledged: nothing left to claim
        plan = ReplayPlan(members=3, batches=2, digest="d" * 64)
        fresh = RunRecord(run_id=uuid.uuid4(), definition="nightly-gold", trigger="replay", replay_of=replay)
        assert runs.record_requested_run(fresh, replay_plan=plan)
        assert runs.replay_publication(fresh.run_id) == ReplayPublication(plan=plan, acknowledged=0)
    finally:
        catalog.close()
    with engine.connect() as connection:
        claimed = connection.execute(
            sa.text("SELECT replay_acknowledged, replay_claimed_at, replay_claimed_by FROM runs WHERE run_id = :id"),
            {"id": RUN_REPLAY},
        ).one()
    assert tuple(claimed) == (ALL_ACKNOWLEDGED, None, None)

    downgrade(engine, "0016")
    assert current_revision(engine) == "0016"
    with engine.connect() as connection:
        after = connection.execute(
            sa.text(f"SELECT {COLUMNS} FROM runs WHERE run_id != :id ORDER BY run_id"), {"id": str(fresh.run_id)}
        ).all()
        columns = {c["name"] for c in sa.inspect(connection).get_columns("runs")}
    assert after == before
    assert NEW & columns == set()
    upgrade(engine)
    assert current_revision(engine) != "0016"


def _minutes_ago(engine: Engine, minutes: int) -> object:
    """An instant ``minutes`` before now, as the dialect stores the runs' instants."""
    at = datetime.now(UTC) - timedelta(minutes=minutes)
    return at.strftime("%Y-%m-%d %H:%M:%S.%f") if engine.dialect.name == "sqlite" else at
