"""Migration 0024 (the circuit breaker emails' refused recipients, ``circuit_breaker_mails.refused_recipients``) on
SQLite and PostgreSQL, on an outbox with rows: they are intact (null: nothing refused kept), an email of them is
claimed and marked with its refusals, and a downgrade drops the column and keeps the rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.breaker_mail_store import SqlBreakerMailStore
from shared.catalog.database import CatalogDatabase
from shared.catalog.engine import make_engine
from shared.catalog.schema import current_revision, downgrade, upgrade
from shared.domain.fleet import BreakerChange

pytestmark = pytest.mark.integration

COLUMNS = "profile, ordinal, definition, sent_at, attempts, last_error"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_0024_keeps_the_outbox_rows_and_their_emails_keep_their_refusals(engine: Engine):
    upgrade(engine, "0023")
    at = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as connection:
        for ordinal, sent, error in [(0, at, None), (1, None, "SMTPServerDisconnected: gone")]:
            connection.execute(
                sa.text(
                    "INSERT INTO circuit_breaker_mails (profile, ordinal, definition, changed_at, sent_at, attempts, "
                    "last_error) VALUES ('crm', :ordinal, 'nightly', :at, :sent, :attempts, :error)"
                ),
                {"ordinal": ordinal, "at": at, "sent": sent, "attempts": 0 if sent else 1, "error": error},
            )
        before = connection.execute(sa.text(f"SELECT {COLUMNS} FROM circuit_breaker_mails ORDER BY ordinal")).all()

    upgrade(engine, "0024")

    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(f"SELECT {COLUMNS}, refused_recipients FROM circuit_breaker_mails ORDER BY ordinal")
        ).all()
    assert [tuple(row[:-1]) for row in rows] == [tuple(row) for row in before]
    assert [row[-1] for row in rows] == [None, None]
    outbox = SqlBreakerMailStore(CatalogDatabase(engine))
    closed = BreakerChange("crm", "closed", 0, at)  # ordinal 1: the unsent one
    earlier: dict[tuple[str, int, str], tuple[dict[str, tuple[int, str]], int]] = {}
    assert outbox.claim_unsent_notifications([("crm", 1, "nightly")], 60, earlier=earlier)
    assert earlier == {("crm", 1, "nightly"): ({}, 1)}  # nothing refused kept before 0024
    outbox.mark(closed, "nightly", error="not delivered yet", refused={"later@example.com": (451, "try again")})
    assert outbox.claim_unsent_notifications([("crm", 1, "nightly")], 60, earlier=earlier)
    assert earlier == {("crm", 1, "nightly"): ({"later@example.com": (451, "try again")}, 2)}

    downgrade(engine, "0023")

    assert current_revision(engine) == "0023"
    assert "refused_recipients" not in {c["name"] for c in sa.inspect(engine).get_columns("circuit_breaker_mails")}
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM circuit_breaker_mails")).scalar_one() == 2
