"""Migration 0007 (webhook notifications in the ledger) on SQLite and PostgreSQL, on a catalog with data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.engine import make_engine
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from shared.catalog.stores import CatalogStores
from tests.integration.test_migrations import RUN_NIGHTLY, RUN_OF_DELETED, fill_baseline

pytestmark = pytest.mark.integration

WEBHOOK_KIND = "webhook:" + "a" * 100 + ":completed_with_errors"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _notifications(engine: Engine) -> dict[tuple[str, str], dict[str, object]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM notifications")).mappings()
        return {(row["run_id"], row["kind"]): dict(row) for row in rows}


def test_emails_recorded_before_0007_keep_their_state_and_webhook_kinds_fit(engine: Engine, database_url: str):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0006")
    upgrade(engine, "0007")
    rows = _notifications(engine)
    sent, unsent = rows[(RUN_NIGHTLY, "error")], rows[(RUN_OF_DELETED, "error")]
    assert sent["sent_at"] is not None
    assert (unsent["sent_at"], unsent["last_error"]) == (None, "SMTP 451 try again later")
    assert {(r["attempts"], r["next_attempt_at"], r["gave_up_at"]) for r in rows.values()} == {(0, None, None)}
    upgrade(engine)  # to the head of this release, which the stores require
    catalog = CatalogStores.from_url(database_url)
    try:
        # The unsent email is still due (as before the migration), and a long webhook kind now fits.
        assert (uuid.UUID(RUN_OF_DELETED), "error") in catalog.runs.unsent_notifications()
        assert catalog.runs.claim_notification(uuid.UUID(RUN_NIGHTLY), WEBHOOK_KIND, ["ops"])
    finally:
        catalog.close()

    downgrade(engine, "0006")
    assert current_revision(engine) == "0006"
    assert set(_notifications(engine)) == {(RUN_NIGHTLY, "error"), (RUN_OF_DELETED, "error")}
