"""Migration 0019 (the circuit breaker emails' claims: each outbox row's next attempt time) on SQLite and PostgreSQL,
on a catalog with data: the outbox keeps its rows, an email unsent before it is due at once and claimed by one
sweep at a time, a sent or given-up one is not; a downgrade keeps the rows and drops the column."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.breaker_mail_store import SqlBreakerMailStore
from shared.catalog.database import CatalogDatabase
from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from tests.integration.test_migrations import engine, fill_baseline

pytestmark = pytest.mark.integration

__all__ = ["engine"]  # the migrations' tests' fixture: an engine on the (empty) database

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
COLUMNS = "profile, ordinal, definition, sent_at, attempts, last_error"
#: The outbox as the release before 0019 wrote it: an email sent, one unsent after two failed attempts, one given up.
ROWS = [
    {"profile": "crm", "ordinal": 2, "definition": "nightly-gold", "changed_at": T0, "sent_at": T0, "attempts": 0},
    {
        "profile": "crm",
        "ordinal": 2,
        "definition": "weekly",
        "changed_at": T0,
        "sent_at": None,
        "attempts": 2,
        "last_error": "SMTP away",
    },
    {
        "profile": "crm",
        "ordinal": 3,
        "definition": "weekly",
        "changed_at": T0 + timedelta(hours=1),
        "sent_at": None,
        "attempts": SqlBreakerMailStore.MAX_ATTEMPTS,
        "last_error": "no recipients any more",
    },
]


def test_0019_keeps_the_outbox_and_its_unsent_email_is_due_and_claimed_by_one_sweep(engine: Engine):
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0018")
    mails = sa.Table("circuit_breaker_mails", sa.MetaData(), autoload_with=engine)
    with engine.begin() as connection:
        connection.execute(sa.insert(mails), ROWS)
        before = connection.execute(sa.text(f"SELECT {COLUMNS} FROM circuit_breaker_mails ORDER BY 1, 2, 3")).all()

    upgrade(engine, "0019")
    upgrade(engine)

    with engine.connect() as connection:
        assert connection.execute(sa.text(f"SELECT {COLUMNS} FROM circuit_breaker_mails ORDER BY 1, 2, 3")).all() == (
            before
        )
        assert set(connection.execute(sa.text("SELECT next_attempt_at FROM circuit_breaker_mails")).scalars()) == {None}
    outbox = SqlBreakerMailStore(CatalogDatabase(engine))
    unsent = [(change.profile, change.ordinal, name) for change, name in outbox.unsent()]
    assert unsent == [("crm", 2, "weekly")]  # due at once; not the sent one, nor the one given up
    keys = [("crm", 2, "nightly-gold"), ("crm", 2, "weekly"), ("crm", 3, "weekly")]
    claims = outbox.claim_unsent_notifications(keys, 60)
    assert list(claims) == [("crm", 2, "weekly")]
    assert outbox.claim_unsent_notifications(keys, 60) == {}  # another sweep's: not claimed twice
    assert outbox.unsent() == []

    downgrade(engine, "0018")
    assert current_revision(engine) == "0018"
    with engine.connect() as connection:
        after = connection.execute(sa.text(f"SELECT {COLUMNS} FROM circuit_breaker_mails ORDER BY 1, 2, 3")).all()
        columns = {c["name"] for c in sa.inspect(connection).get_columns("circuit_breaker_mails")}
    assert after == before
    assert "next_attempt_at" not in columns
    upgrade(engine)
    assert current_revision(engine) != "0018"
