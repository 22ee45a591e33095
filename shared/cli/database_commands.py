"""``exportctl db upgrade``, ``db current`` and ``db downgrade``: the catalog's schema version.

A release that changes the catalog's tables ships a migration; the services refuse to start until
``exportctl db upgrade`` (on Kubernetes, the migration Job) has brought the catalog to their revision.
"""

from __future__ import annotations

import argparse
import sys
from typing import Protocol

from shared.cli.exits import fail as _fail


class CatalogSettings(Protocol):
    """What these commands need of the settings: where the catalog is."""

    @property
    def catalog_url(self) -> str: ...


def _print_catalog(url: str) -> None:
    """Which catalog (password hidden): the default URL is a local SQLite file, easy to upgrade by mistake."""
    from shared.catalog.engine import shown_url  # loaded when used: exportctl's other commands start faster

    print(f"catalog: {shown_url(url)}")


def cmd_upgrade(settings: CatalogSettings, args: argparse.Namespace) -> int:
    """Upgrade the catalog to ``--revision`` (default: this release's head)."""
    from alembic.util import CommandError

    from shared.catalog.engine import make_engine
    from shared.catalog.schema import SchemaOutdated, schema_state, upgrade

    _print_catalog(settings.catalog_url)
    engine = make_engine(settings.catalog_url)
    try:
        before = schema_state(engine)
        try:
            upgrade(engine, args.revision)
        except (SchemaOutdated, CommandError) as exc:
            return _fail(str(exc))
        after = schema_state(engine)
    finally:
        engine.dispose()
    if after == before:
        print(f"catalog at {after.label}: already up to date")
    else:
        print(f"catalog upgraded from {before.label} to {after.label}")
    return 0


def cmd_current(settings: CatalogSettings, args: argparse.Namespace) -> int:
    """Print the catalog's revision and whether it is this release's head; exit 1 when it is not."""
    from shared.catalog.engine import make_engine
    from shared.catalog.schema import HEAD, outdated_message, schema_state

    _print_catalog(settings.catalog_url)
    engine = make_engine(settings.catalog_url)
    try:
        state = schema_state(engine)
    finally:
        engine.dispose()
    message = outdated_message(state)
    if message is None:
        print(f"catalog at {state.label} (head)")
        return 0
    print(f"catalog at {state.label}: not at head ({HEAD})")
    print(f"exportctl: {message}", file=sys.stderr)
    return 1


def cmd_downgrade(settings: CatalogSettings, args: argparse.Namespace) -> int:
    """Take the catalog back to ``revision`` (rolling back a release)."""
    from alembic.util import CommandError

    from shared.catalog.engine import make_engine
    from shared.catalog.schema import downgrade, schema_state

    _print_catalog(settings.catalog_url)
    engine = make_engine(settings.catalog_url)
    try:
        before = schema_state(engine)
        try:
            downgrade(engine, args.revision)
        except CommandError as exc:
            return _fail(str(exc))
        after = schema_state(engine)
    finally:
        engine.dispose()
    if after == before:
        print(f"catalog at {after.label}: nothing to downgrade")
    else:
        print(f"catalog downgraded from {before.label} to {after.label}")
    return 0


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser] | None = None
) -> None:
    """Register ``db upgrade``, ``db current`` and ``db downgrade`` (on the catalog directly, in every mode)."""
    parser = commands.add_parser(
        "db", help="(catalog) the catalog's schema: upgrade it, or see its revision", parents=parents or []
    )
    parser.set_defaults(api=None, catalog="needs", local=None)
    sub = parser.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    upgrading = sub.add_parser("upgrade", help="migrate the catalog to this release's schema (creates it if new)")
    upgrading.add_argument("--revision", default="head", help="the revision to upgrade to (default: head)")
    upgrading.set_defaults(func=cmd_upgrade, catalog="creates")
    current = sub.add_parser("current", help="the catalog's revision; exit status 1 when it is not head")
    current.set_defaults(func=cmd_current)
    downgrading = sub.add_parser(
        "downgrade", help="take the catalog back to an older revision (what the new revisions added is lost)"
    )
    downgrading.add_argument("revision", help="the revision to go back to")
    downgrading.set_defaults(func=cmd_downgrade)
