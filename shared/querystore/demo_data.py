"""Realistic demo members for the default SQLite query store (and for tests and benchmarks)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Column, Connection, DateTime, Engine, Integer, MetaData, String, Table, insert

metadata = MetaData()

members_table = Table(
    "members",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(200), nullable=False),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("tier", String(20), index=True),
    Column("points", Integer),
    Column("joined_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
    Column("locale", String(10)),
    Column("consent_email", Boolean),
    Column("consent_sms", Boolean),
)

_FIRST = [
    "Amélie",
    "Louis",
    "Chloé",
    "Hugo",
    "Emma",
    "Jules",
    "Léa",
    "Noah",
    "Mia",
    "Lucas",
    "Sofia",
    "Aarav",
    "Olivia",
    "Mateo",
    "Yuki",
    "Zoé",
    "Ethan",
    "Inès",
    "Liam",
    "Nora",
]
_LAST = [
    "Martin",
    "Bernard",
    "Dubois",
    "Thomas",
    "Robert",
    "Petit",
    "Durand",
    "Leroy",
    "Moreau",
    "Garcia",
    "Smith",
    "Johnson",
    "Müller",
    "Rossi",
    "Sato",
    "Kumar",
    "Silva",
    "Nguyen",
    "Kowalski",
    "O'Brien",
]
_TIERS = [("bronze", 0.55), ("silver", 0.27), ("gold", 0.13), ("platinum", 0.05)]
_LOCALES = ["fr-FR", "en-GB", "en-US", "de-DE", "es-ES", "it-IT", "ja-JP"]


COLUMNS = tuple(column.name for column in members_table.columns)
_EPOCH = datetime(2015, 1, 1, tzinfo=UTC)
_JOIN_SPAN = 11 * 365 * 86400
_UPDATE_SPAN = 365 * 86400


def generate_rows(
    count: int, *, seed: int = 42, start_id: int = 1, chunk: int = 10_000
) -> Iterator[list[tuple[Any, ...]]]:
    """Yield chunks of member rows (tuples in :data:`COLUMNS` order), ids ``start_id`` onward.

    Column-wise per chunk (``rng.choices(k=...)``): millions of members for benchmarks in seconds,
    not minutes. The same seed gives the same members.
    """
    rng = random.Random(seed)
    tier_names, tier_weights = zip(*_TIERS, strict=True)
    for chunk_start in range(start_id, start_id + count, chunk):
        ids = range(chunk_start, min(chunk_start + chunk, start_id + count))
        size = len(ids)
        firsts, lasts = rng.choices(_FIRST, k=size), rng.choices(_LAST, k=size)
        tiers = rng.choices(tier_names, tier_weights, k=size)
        locales = rng.choices(_LOCALES, k=size)
        rows = []
        for i, member_id in enumerate(ids):
            first, last = firsts[i], lasts[i]
            joined = _EPOCH + timedelta(seconds=int(rng.random() * _JOIN_SPAN))
            rows.append(
                (
                    member_id,
                    f"{first.lower()}.{last.lower().replace(chr(39), '')}.{member_id}@example.com",
                    first,
                    last,
                    tiers[i],
                    int(rng.random() * 250_000),
                    joined,
                    joined + timedelta(seconds=int(rng.random() * _UPDATE_SPAN)),
                    locales[i],
                    rng.random() < 0.8,
                    rng.random() < 0.4,
                )
            )
        yield rows


def generate_members(count: int, *, seed: int = 42, start_id: int = 1) -> Iterator[dict[str, Any]]:
    """Yield ``count`` members (column→value) with ids ``start_id`` onward; the same seed, the same members."""
    for rows in generate_rows(count, seed=seed, start_id=start_id):
        for row in rows:
            yield dict(zip(COLUMNS, row, strict=True))


def create_demo_members(engine: Engine, count: int, *, seed: int = 42) -> int:
    """(Re)create the ``members`` table with ``count`` generated members; return the count."""
    metadata.drop_all(engine, tables=[members_table])
    metadata.create_all(engine, tables=[members_table])
    with engine.begin() as connection:
        for rows in generate_rows(count, seed=seed):
            _bulk_insert(connection, rows)
    return count


def _bulk_insert(connection: Connection, rows: list[tuple[Any, ...]]) -> None:
    # The driver's bulk paths: COPY on PostgreSQL, executemany on SQLite (ORM-free, type-processing
    # free: 10x faster than a Core insert of dicts, which matters at the benchmarks' millions).
    driver = connection.connection.driver_connection
    names = ", ".join(COLUMNS)
    if connection.dialect.name == "postgresql":
        with driver.cursor() as cursor, cursor.copy(f"COPY members ({names}) FROM STDIN") as copy:  # type: ignore[union-attr]
            for row in rows:
                copy.write_row(row)
    elif connection.dialect.name == "sqlite":
        # SQLAlchemy's SQLite DateTime storage format, so ORM reads and raw reads agree.
        stored = [(*row[:6], _sqlite_time(row[6]), _sqlite_time(row[7]), *row[8:]) for row in rows]
        marks = ", ".join("?" for _ in COLUMNS)
        driver.executemany(f"INSERT INTO members ({names}) VALUES ({marks})", stored)  # type: ignore[union-attr]  # noqa: S608
    else:
        connection.execute(insert(members_table), [dict(zip(COLUMNS, row, strict=True)) for row in rows])


def _sqlite_time(value: datetime) -> str:
    # What SQLAlchemy's DateTime stores on SQLite (UTC wall time, microseconds); isoformat is 20x strftime.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
