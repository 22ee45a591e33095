"""Migration 0020 (who holds a notification's claim: ``notifications.claimed_by``, ``claimed_until``, ``claimed_at``)
on SQLite and PostgreSQL, on a catalog with data: the ledger keeps its rows; a claim made before it names no replica
and waits for its lease, whoever asks; an unsent notification due is claimed in a replica's name and taken back by
that replica alone, restarted (not by the live process that claimed it); a downgrade keeps the rows (a claim in hand
keeps its lease) and drops the columns."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.database import CatalogDatabase
from shared.catalog.runs_store import SqlRunsStore
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.domain.runs import Claimant
from tests.integration.test_migrations import RUN_NIGHTLY, RUN_OF_DELETED, engine, fill_baseline

pytestmark = pytest.mark.integration

__all__ = ["engine"]  # the migrations' tests' fixture: an engine on the (empty) database

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
COLUMNS = "run_id, kind, recipients, sent_at, last_error, attempts, next_attempt_at, gave_up_at"
#: The ledger as the release before 0020 left it, besides the baseline's rows: a webhook claimed by a finish (its
#: lease running: the finish was interrupted), one backing off after a failed attempt, one given up.
CLAIMED = (RUN_NIGHTLY, "webhook:ops:failed")
BACKING_OFF = (RUN_OF_DELETED, "webhook:ops:failed")
GIVEN_UP = (RUN_NIGHTLY, "webhook:audit:failed")


def rows(lease_end: datetime) -> list[dict[str, object]]:
    base = {"recipients": ["ops"], "sent_at": None, "last_error": None, "attempts": 0, "gave_up_at": None}
    return [
        base | {"run_id": CLAIMED[0], "kind": CLAIMED[1], "next_attempt_at": lease_end},
        base
        | {
            "run_id": BACKING_OFF[0],
            "kind": BACKING_OFF[1],
            "last_error": "HTTP 503",
            "attempts": 1,
            "next_attempt_at": lease_end,
        },
        base
        | {
            "run_id": GIVEN_UP[0],
            "kind": GIVEN_UP[1],
            "recipients": ["audit"],
            "last_error": "HTTP 404",
            "attempts": 1,
            "gave_up_at": T0,
            "next_attempt_at": None,
        },
    ]


def started_after_now(runs: SqlRunsStore, name: str) -> Claimant:
    """A process named ``name`` started now, strictly after what the catalog wrote so far (SQLite's clock counts
    milliseconds: wait, with a deadline, for it to move on)."""
    first = runs.catalog_clock()
    deadline = time.monotonic() + 30.0
    while (started := runs.catalog_clock()) <= first:
        assert time.monotonic() < deadline, "the catalog's clock never moved"
    return Claimant(name, started)


def ledger(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(f"SELECT {COLUMNS} FROM notifications ORDER BY 1, 2"))]


def test_0020_keeps_the_ledger_and_a_claim_from_before_it_is_no_ones_while_a_new_one_is_its_replicas(engine: Engine):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0019")
    notifications = sa.Table("notifications", sa.MetaData(), autoload_with=engine)
    lease_end = datetime.now(UTC) + timedelta(minutes=10)
    with engine.begin() as connection:
        connection.execute(sa.insert(notifications), rows(lease_end))
    before = ledger(engine)
    assert len(before) == 5  # the baseline's two emails (one sent, one unsent) and the three above

    upgrade(engine, "0020")
    upgrade(engine)

    assert ledger(engine) == before
    with engine.connect() as connection:
        owners = connection.execute(sa.text("SELECT claimed_by, claimed_until, claimed_at FROM notifications")).all()
    assert set(owners) == {(None, None, None)}
    runs = SqlRunsStore(CatalogDatabase(engine))
    unsent_email = (uuid.UUID(RUN_OF_DELETED), "error")
    assert runs.unsent_notifications() == [unsent_email]  # due at once, as before; the claimed and backing off not
    keys = [(uuid.UUID(run_id), kind) for run_id, kind in (CLAIMED, BACKING_OFF, GIVEN_UP)]
    live_a = started_after_now(runs, "replica-a")
    for claimant in (live_a, started_after_now(runs, "replica-b"), None):  # a claim from before 0020 is no one's:
        assert runs.claim_unsent_notifications(keys, 60, claimant) == {}  # it waits for its lease
    claimed = runs.claim_unsent_notifications([unsent_email], 60, live_a)
    assert set(claimed) == {unsent_email}
    assert runs.claim_unsent_notifications([unsent_email], 60, started_after_now(runs, "replica-b")) == {}  # live
    assert runs.claim_unsent_notifications([unsent_email], 60, live_a) == {}  # its own since it started: not again
    restarted_a = started_after_now(runs, "replica-a")
    assert set(runs.claim_unsent_notifications([unsent_email], 60, restarted_a)) == {unsent_email}  # A restarted

    downgrade(engine, "0019")
    assert current_revision(engine) == "0019"
    with engine.connect() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("notifications")}
        lease = connection.execute(
            sa.text("SELECT next_attempt_at FROM notifications WHERE run_id = :id AND kind = 'error'"),
            {"id": RUN_OF_DELETED},
        ).scalar_one()
    assert not {"claimed_by", "claimed_until", "claimed_at"} & columns
    assert lease is not None  # A's claim in hand keeps its lease: it waits for it, as every claim did before 0020
    after = {row[:2]: row for row in ledger(engine)}
    assert {key: row for key, row in after.items() if key != (RUN_OF_DELETED, "error")} == {
        row[:2]: row for row in before if row[:2] != (RUN_OF_DELETED, "error")
    }
    upgrade(engine)
    assert current_revision(engine) != "0019"
