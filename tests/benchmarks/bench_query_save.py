"""What saving a saved query costs when many definitions are stored on it (``replace_object``: the query's save-time
check of what is stored on it, :mod:`shared.application.query_checks`), on SQLite and PostgreSQL.

    python -m tests.benchmarks.bench_query_save [--definitions 10000] [--turns 3] [--postgres]

A catalog of one profile, one query ``q`` (``tier``: a string, default ``gold``; columns ``id, email, tier,
updated_at``), two templates on it and ``--definitions`` definitions on ``q``, each setting ``tier`` to ``"7"`` (a
value that binds as a string and as an integer), half of them scheduled, each with an error email and a webhook
(what a definition stores besides what the check reads). Timed, ``--turns`` times each, in this order each turn: a
save changing only the query's label (nothing relied on changed: nothing more read); ``tier``'s type changed
(string to integer: every value still binds, saved); ``tier`` made required without a default (every definition
gives it: saved); a column no template or watermark uses dropped (``updated_at``: saved); ``tier`` made a boolean
(every value breaks: refused, 409). Each saved change is undone by a save not timed. The median, the first and the
slowest in milliseconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from shared.application.actors import Actor, Role
from shared.application.errors import Conflict
from shared.application.objects import replace_object
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from tests.benchmarks.bench_delete_in_use import CHECKS, _said
from tests.benchmarks.common import postgres_databases

COLUMNS = ["id", "email", "tier", "updated_at"]
SQL = "SELECT id, email, tier, updated_at FROM members WHERE tier = :tier"
REQUIRED = {"required": True, "default": None}


def _query(**changes: Any) -> dict[str, Any]:
    tier = {"type": "string", "default": "gold"} | changes.pop("tier", {})
    return {"name": "q", "sql": SQL, "parameters": {"tier": tier}, "columns": COLUMNS} | changes


def _definition(index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": f"d{index}",
        "query": "q",
        "template": "t" if index % 2 else "t-email",
        "parameters": {"tier": "7"},
        "business_unit": "emea",
        "notifications": {
            "error": {"enabled": True, "recipients": ["ops@example.com", "crm@example.com"]},
            "webhooks": {"ops": {"url": "https://hooks.example.com/services/T0/B0/xyz"}},
        },
    }
    if index % 2:
        spec["schedule"] = {"enabled": True, "repeat": {"every": "day", "time": "02:00"}, "from": "2026-01-01"}
    return spec


def _fill(url: str, count: int) -> None:
    stores = CatalogStores.from_url(url, migrate=True)
    store = stores.definitions
    store.apply_all(
        [
            ConnectionProfile(name="p", base_url="https://partner.example.com"),
            SavedQuery.model_validate(_query()),
            HttpTemplate(name="t", query="q", profile="p", path="/m"),
            HttpTemplate(name="t-email", query="q", profile="p", path="/m/{{ member.email }}"),
        ]
    )
    for start in range(0, count, 1000):
        store.apply_all(
            [ExportDefinition.model_validate(_definition(i)) for i in range(start, min(start + 1000, count))]
        )
    stores.close()


def _timed(url: str, turns: int) -> dict[str, list[float]]:
    """Each save of the module's docstring, ``turns`` times, in a fresh process's stores."""
    stores = CatalogStores.from_url(url)
    actor = Actor(name="bench", role=Role.ADMIN)
    times: dict[str, list[float]] = {}

    def save(what: str, body: dict[str, Any], *, refused: bool = False) -> None:
        began = time.perf_counter()
        try:
            replace_object(actor, SavedQuery, "q", body, store=stores.definitions, checks=CHECKS)
        except Conflict:
            if not refused:
                raise
        else:
            if refused:
                raise AssertionError(f"{what}: must be refused")
        times.setdefault(what, []).append((time.perf_counter() - began) * 1000)

    try:
        for turn in range(turns):  # each timed save starts from the query as filled
            save("label only", _query(label=f"turn {turn}"))
            save("tier made required, no default (every definition gives it: saved)", _query(tier=REQUIRED))
            save("(back)", _query())
            save("tier's type changed (every value binds: saved)", _query(tier={"type": "integer", "default": None}))
            save("(back)", _query())
            save(
                "a column nothing uses dropped (saved)",
                _query(sql=SQL.replace(", updated_at", ""), columns=COLUMNS[:3]),
            )
            save("(back)", _query())
            save(
                "tier made a boolean (every value breaks: 409)",
                _query(tier={"type": "boolean", "default": None}),
                refused=True,
            )
    finally:
        stores.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--definitions", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="a throwaway local PostgreSQL, else SQLite")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        if args.postgres:
            url = postgres_databases(stack)("bench_query_save")
        else:
            url = f"sqlite:///{Path(stack.enter_context(tempfile.TemporaryDirectory())) / 'catalog.db'}"
        began = time.perf_counter()
        _fill(url, args.definitions)
        print(f"{'postgresql' if args.postgres else 'sqlite'}: {args.definitions} definitions on one query made in "
              f"{time.perf_counter() - began:.1f} s", flush=True)  # fmt: skip
        for what, times in _timed(url, args.turns).items():
            if not what.startswith("("):
                print(_said(f"query saved, {what}", times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
