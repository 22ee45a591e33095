"""What deleting a definition costs in a catalog of many (``delete_object``: its referrers looked for, then the
store's own look in the delete's transaction), on SQLite and PostgreSQL; saving and deleting a template, by a
token scoped to one business unit (the definitions using it looked for: the token's scope check, the audit entry's
units); saving a definition (the name derived from its label looked up; the chain it follows checked for a loop);
and migration 0025 (the references of every template and definition filled).

    python -m tests.benchmarks.bench_delete_in_use [--definitions 10000] [--deletes 5] [--postgres]

A catalog of one profile, query and template and ``--definitions`` definitions, half of them each following the one
before (``schedule.after``). Timed: a delete refused in use (a followed definition: 409) and a delete done (a
definition nobody follows), ``--deletes`` each; then, by a token scoped to ``apac``, a template used by one ``apac``
definition saved (its label changed) and an unused template deleted, ``--deletes`` each; the median and the slowest
in milliseconds. The stores are made anew
for the timed deletes (a fresh process's first delete: nothing validated kept), then each delete in turn. Then, by an
unscoped token, a definition created from its label (``Nightly report``: named ``nightly-report``, then
``nightly-report-2``…) and a definition that follows another saved (its label changed), ``--deletes`` each. Last,
the catalog taken down to 0024 and migration 0025 timed (seconds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from shared.application.actors import Actor, Role
from shared.application.checks import ObjectChecks
from shared.application.errors import Conflict
from shared.application.objects import create_object, delete_object, replace_object
from shared.catalog import CatalogStores, make_engine
from shared.catalog.schema import downgrade, upgrade
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.destinations import DestinationPolicy
from shared.domain.secret_references import SecretReferencePolicy

APAC = Actor(name="apac-bot", role=Role.ADMIN, business_units=frozenset({"apac"}))
CHECKS = ObjectChecks(
    policy=DestinationPolicy.parse(""),
    resolve_host=lambda _host: ["93.184.215.14"],
    secret_references=SecretReferencePolicy.parse("PARTNER_", "/var/run/secrets/member-export"),
)


def _definition(index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": f"d{index}", "query": "q", "template": "t", "business_unit": "emea"}
    if index % 2:  # every odd one follows the one before it
        spec["schedule"] = {"enabled": True, "after": {"definition": f"d{index - 1}"}}
    return spec


def _fill(url: str, count: int) -> None:
    stores = CatalogStores.from_url(url, migrate=True)
    store = stores.definitions
    store.apply_all(
        [
            ConnectionProfile(name="p", base_url="https://partner.example.com"),
            SavedQuery(name="q", sql="SELECT id FROM members"),
            HttpTemplate(name="t", query="q", profile="p", path="/m"),
            HttpTemplate(name="t-apac", query="q", profile="p", path="/m"),
            *(HttpTemplate(name=f"spare{turn}", query="q", profile="p", path="/m") for turn in range(100)),
            ExportDefinition(name="apac-daily", query="q", template="t-apac", business_unit="apac"),
        ]
    )
    for start in range(0, count, 1000):
        store.apply_all(
            [ExportDefinition.model_validate(_definition(i)) for i in range(start, min(start + 1000, count))]
        )
    stores.close()


def _timed(url: str, deletes: int, count: int) -> tuple[list[float], list[float]]:
    stores = CatalogStores.from_url(url)
    actor = Actor(name="bench", role=Role.ADMIN)
    refused, done = [], []
    try:
        for turn in range(deletes):
            followed, alone = f"d{2 * turn}", f"d{count - 1 - 2 * turn}"  # d(2k) is followed; the last odd one not
            began = time.perf_counter()
            try:
                delete_object(actor, ExportDefinition, followed, store=stores.definitions)
            except Conflict:
                pass
            else:
                raise AssertionError(f"{followed} is followed: its delete must be refused")
            refused.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            delete_object(actor, ExportDefinition, alone, store=stores.definitions)
            done.append((time.perf_counter() - began) * 1000)
    finally:
        stores.close()
    return refused, done


def _timed_templates(url: str, turns: int) -> tuple[list[float], list[float]]:
    """A template used by one apac definition saved, an unused template deleted, by the apac token: ``turns`` each."""
    stores = CatalogStores.from_url(url)
    saved, deleted = [], []
    try:
        store = stores.definitions
        for turn in range(turns):
            body = store.get(HttpTemplate, "t-apac").model_dump(mode="json") | {"label": f"apac {turn}"}
            began = time.perf_counter()
            replace_object(APAC, HttpTemplate, "t-apac", body, store=store, checks=CHECKS)
            saved.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            delete_object(APAC, HttpTemplate, f"spare{turn}", store=store)
            deleted.append((time.perf_counter() - began) * 1000)
    finally:
        stores.close()
    return saved, deleted


def _timed_definitions(url: str, turns: int) -> tuple[list[float], list[float]]:
    """A definition created from its label, and one following another saved (its label changed): ``turns`` each."""
    stores = CatalogStores.from_url(url)
    actor = Actor(name="bench", role=Role.ADMIN)
    created, saved = [], []
    try:
        store = stores.definitions
        for turn in range(turns):
            body = {"label": "Nightly report", "query": "q", "template": "t", "business_unit": "emea"}
            began = time.perf_counter()
            create_object(actor, ExportDefinition, body, store=store, checks=CHECKS)
            created.append((time.perf_counter() - began) * 1000)
            follower = f"d{2 * turn + 1}"  # follows d(2k)
            body = store.get(ExportDefinition, follower).model_dump(mode="json") | {"label": f"follower {turn}"}
            began = time.perf_counter()
            replace_object(actor, ExportDefinition, follower, body, store=store, checks=CHECKS)
            saved.append((time.perf_counter() - began) * 1000)
    finally:
        stores.close()
    return created, saved


def _timed_migration(url: str) -> float:
    """Seconds migration 0025 takes on the catalog (taken down to 0024 first: its references dropped)."""
    engine = make_engine(url)
    try:
        downgrade(engine, "0024")
        began = time.perf_counter()
        upgrade(engine, "0025")
        return time.perf_counter() - began
    finally:
        engine.dispose()


def _said(what: str, times: list[float]) -> str:
    return f"{what}: median {statistics.median(times):.1f} ms, first {times[0]:.1f} ms, slowest {max(times):.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--definitions", type=int, default=10_000)
    parser.add_argument("--deletes", type=int, default=5)
    parser.add_argument("--postgres", action="store_true", help="a throwaway local PostgreSQL, else SQLite")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        if args.postgres:
            import sqlalchemy as sa

            from devtools.postgres import LocalPostgres

            server = stack.enter_context(LocalPostgres())
            engine = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
            with engine.connect() as connection:
                connection.execute(sa.text('CREATE DATABASE "bench"'))
            engine.dispose()
            url = server.url("bench")
        else:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = f"sqlite:///{directory / 'catalog.db'}"
        began = time.perf_counter()
        _fill(url, args.definitions)
        print(f"{'postgresql' if args.postgres else 'sqlite'}: {args.definitions} definitions made in "
              f"{time.perf_counter() - began:.1f} s", flush=True)  # fmt: skip
        refused, done = _timed(url, args.deletes, args.definitions)
        print(_said("delete refused (followed, 409)", refused))
        print(_said("delete done (not followed)", done))
        saved, deleted = _timed_templates(url, args.deletes)
        print(_said("template saved (scoped token, 1 definition uses it)", saved))
        print(_said("template deleted (scoped token, unused)", deleted))
        created, saved = _timed_definitions(url, args.deletes)
        print(_said("definition created (name from its label)", created))
        print(_said("definition saved (follows another)", saved))
        print(f"migration 0025 (references filled): {_timed_migration(url):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
