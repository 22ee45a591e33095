"""Realistic demo members for the default SQLite query store (and for tests and benchmarks)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Column, DateTime, Engine, Integer, MetaData, String, Table, insert

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


def generate_members(count: int, *, seed: int = 42, start_id: int = 1) -> Iterator[dict[str, Any]]:
    """Yield ``count`` members with ids ``start_id`` onward; the same seed gives the same members."""
    rng = random.Random(seed)
    epoch = datetime(2015, 1, 1, tzinfo=UTC)
    tiers, weights = zip(*_TIERS, strict=True)
    for member_id in range(start_id, start_id + count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        joined = epoch + timedelta(seconds=rng.randrange(0, 11 * 365 * 86400))
        yield {
            "id": member_id,
            "email": f"{first.lower()}.{last.lower()}.{member_id}@example.com".replace("'", ""),
            "first_name": first,
            "last_name": last,
            "tier": rng.choices(tiers, weights)[0],
            "points": rng.randrange(0, 250_000),
            "joined_at": joined,
            "updated_at": joined + timedelta(seconds=rng.randrange(0, 86400 * 365)),
            "locale": rng.choice(_LOCALES),
            "consent_email": rng.random() < 0.8,
            "consent_sms": rng.random() < 0.4,
        }


def create_demo_members(engine: Engine, count: int, *, seed: int = 42, chunk: int = 5_000) -> int:
    """(Re)create the ``members`` table with ``count`` generated members; return the count."""
    metadata.drop_all(engine, tables=[members_table])
    metadata.create_all(engine, tables=[members_table])
    rows: list[dict[str, Any]] = []
    with engine.begin() as connection:
        for member in generate_members(count, seed=seed):
            rows.append(member)
            if len(rows) >= chunk:
                connection.execute(insert(members_table), rows)
                rows = []
        if rows:
            connection.execute(insert(members_table), rows)
    return count
