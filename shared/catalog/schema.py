"""The catalog's schema version (Alembic): upgrade it, refuse to run on the wrong one, compare it with the models.

The migrations live in ``shared/catalog/migrations`` and ship in the package; no ``alembic.ini`` is
needed, the Alembic configuration is built here and the connection passed in. ``exportctl db upgrade``
(on Kubernetes, the migration Job) calls :func:`upgrade`; every service calls
:func:`check_catalog_schema` at start and exits when the catalog is not at :data:`HEAD`.

Catalogs from before migrations (made by ``Base.metadata.create_all``, no ``alembic_version`` table)
are *assumed to have the baseline schema* (revision ``0001``, the last release without migrations,
whose upgrade notes required recreating older catalogs): :func:`upgrade` stamps them at the baseline,
then runs the later revisions. One made by ``create_all`` of *this* release's models (nothing to
migrate: :func:`drift` is empty) is stamped at head instead.

Checking a catalog's revision loads no Alembic: this release's revisions are read from the migration
scripts' ``revision`` and ``down_revision`` assignments (:func:`_revisions`, held equal to Alembic's reading
by a test), and Alembic is imported by the functions that migrate or compare. Every service and ``exportctl``
command checks the revision at start; only ``exportctl db`` migrates.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog
from sqlalchemy import Connection, Engine, column, func, inspect, select, table

from shared.catalog.engine import make_engine, shown_url
from shared.catalog.tables import Base

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")

#: The revision a catalog from before migrations is taken to be at.
BASELINE: Final = "0001"

#: The tables of the baseline schema: all of them exist in a catalog from before migrations.
BASELINE_TABLES: Final = frozenset(
    {
        "catalog_objects",
        "runs",
        "batch_outcomes",
        "extraction_checkpoints",
        "watermarks",
        "notifications",
        "schedules",
        "leases",
        "idempotency_keys",
    }
)

VERSION_TABLE: Final = "alembic_version"

#: What an operator runs to bring the catalog to this release's schema.
UPGRADE_HINT: Final = "run `exportctl db upgrade` (on Kubernetes: the migration Job, see README 'Upgrading')"

# Serialises concurrent upgrades on PostgreSQL (two migration Jobs, or a Job and an operator).
_ADVISORY_LOCK_KEY: Final = 0x6D656D6265725F78  # "member_x"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the catalog: the packaged script directory, and ``connection`` to migrate."""
    from alembic.config import Config

    config = Config()
    # ConfigParser interpolates '%': a path containing one must not be read as a reference.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


#: The identifiers that link the revisions: the only assignments :func:`_assigned` keeps.
_LINKS: Final = frozenset({"revision", "down_revision"})


def _assigned(script: Path) -> dict[str, Any]:
    """The literal values a migration script assigns to ``revision`` and ``down_revision`` at its top level."""
    values: dict[str, Any] = {}
    for node in ast.parse(script.read_text(encoding="utf-8"), str(script)).body:
        target: ast.expr
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in _LINKS:
            try:
                values[target.id] = ast.literal_eval(value)
            except ValueError:
                continue  # not a literal: not one of the identifiers
    return values


def _revisions() -> tuple[str, frozenset[str]]:
    """This release's head revision and all its revisions, read from the scripts as Alembic links them (each
    ``down_revision`` names its parent or parents), without importing Alembic or the scripts."""
    parents: dict[str, tuple[str, ...]] = {}
    for script in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        values = _assigned(script)
        if isinstance(values.get("revision"), str):
            down = values.get("down_revision")
            parents[values["revision"]] = (down,) if isinstance(down, str) else tuple(down or ())
    heads = set(parents) - {parent for linked in parents.values() for parent in linked}
    if len(heads) != 1:  # pragma: no cover - the package always ships one line of revisions
        raise RuntimeError(f"expected one head among the catalog migrations in {MIGRATIONS_DIR}, found {sorted(heads)}")
    return heads.pop(), frozenset(parents)


#: The revision this release's code needs the catalog at; and every revision this release knows (a
#: catalog at another one was migrated by a newer release).
HEAD, _KNOWN = _revisions()


class SchemaOutdated(RuntimeError):
    """The catalog is not at the schema this release needs (older, empty, or newer); the message says what to do."""


@dataclass(frozen=True)
class SchemaState:
    """Where a catalog's schema stands."""

    #: The revision stamped in ``alembic_version``; None when there is none.
    revision: str | None
    #: The catalog tables present (of :data:`BASELINE_TABLES`), whatever the revision.
    tables: frozenset[str]

    @property
    def is_head(self) -> bool:
        return self.revision == HEAD

    @property
    def predates_migrations(self) -> bool:
        """Catalog tables without a revision: made by a release from before migrations."""
        return self.revision is None and bool(self.tables)

    @property
    def is_newer(self) -> bool:
        """At a revision this release does not know: a newer release migrated it."""
        return self.revision is not None and self.revision not in _KNOWN

    @property
    def label(self) -> str:
        """The revision, or what stands for it: ``(empty)``, ``(predates migrations)``."""
        if self.revision is not None:
            return self.revision
        return "(predates migrations)" if self.tables else "(empty)"


_version_table = table(VERSION_TABLE, column("version_num"))


def _state(connection: Connection) -> SchemaState:
    names = set(inspect(connection).get_table_names())
    revision = None
    if VERSION_TABLE in names:
        # Read directly: Alembic's MigrationContext would log two lines at every service start.
        # Several rows (branches) never come from this release: the joined ids count as a newer revision.
        revisions = sorted(connection.execute(select(_version_table.c.version_num)).scalars())
        revision = "+".join(revisions) or None
    return SchemaState(revision=revision, tables=frozenset(names & BASELINE_TABLES))


def schema_state(engine: Engine) -> SchemaState:
    """The catalog's revision and which catalog tables it has."""
    with engine.connect() as connection:
        return _state(connection)


def current_revision(engine: Engine) -> str | None:
    """The revision the catalog is stamped at; None for an empty catalog or one from before migrations."""
    return schema_state(engine).revision


def _newer_message(revision: str) -> str:
    return (
        f"the catalog schema is at revision {revision}, newer than this release (which knows up to {HEAD}): "
        f"roll forward to the release that migrated it, or downgrade the catalog with that release's "
        f"`exportctl db downgrade {HEAD}`"
    )


def outdated_message(state: SchemaState) -> str | None:
    """What is wrong with a catalog at ``state`` for this release, and what to do; None when it is at head."""
    if state.is_head:
        return None
    if state.is_newer:
        assert state.revision is not None
        return _newer_message(state.revision)
    if state.revision is not None:
        where = f"the catalog schema is at revision {state.revision}"
    elif state.tables:
        where = "the catalog schema predates migrations (tables without a revision)"
    else:
        where = "the catalog has no schema yet"
    return f"{where}, this release needs {HEAD}: {UPGRADE_HINT}"


def require_current(engine: Engine) -> None:
    """Return when the catalog is at :data:`HEAD`; else raise :class:`SchemaOutdated` saying what to do."""
    message = outdated_message(schema_state(engine))
    if message is not None:
        raise SchemaOutdated(message)


def _begin_migration(connection: Connection) -> None:
    """Make the migration one transaction that one migrator at a time runs.

    PostgreSQL: an advisory lock held until the transaction ends. SQLite: the driver (pysqlite) opens
    no transaction before DDL, so each schema change would commit on its own and a failed migration
    leave a half-altered catalog behind; ``BEGIN IMMEDIATE`` opens one for writing (SQLite's DDL is
    transactional), which also makes a second migrator wait.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the catalog to ``revision`` (by default this release's head), in one transaction: a failed
    upgrade leaves the catalog as it was.

    An empty catalog gets the whole schema; one from before migrations is first stamped at
    :data:`BASELINE` (it is assumed to have that schema: all its tables must be there), or at head when
    it already matches this release's models; one at ``revision`` already is left alone. Raises
    :class:`SchemaOutdated` for a catalog newer than this release, or one from before migrations that
    lacks baseline tables; ``alembic.util.CommandError`` for an unknown ``revision``.
    """
    from alembic import command

    with engine.begin() as connection:
        _begin_migration(connection)
        config = alembic_config(connection)
        state = _state(connection)
        if state.is_newer:
            assert state.revision is not None
            raise SchemaOutdated(_newer_message(state.revision))
        if state.predates_migrations:
            if not _drift(connection, only_models=True):
                command.stamp(config, "head")
            elif missing := sorted(BASELINE_TABLES - state.tables):
                raise SchemaOutdated(
                    "the catalog predates migrations but lacks table(s) "
                    f"{', '.join(missing)} of the baseline schema ({BASELINE}): it is from a release "
                    "older than the baseline, and must be recreated (or its missing tables created) first"
                )
            else:
                command.stamp(config, BASELINE)
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the catalog back to ``revision`` (an older one), running the revisions' downgrades.

    For rolling back a release: the older release then finds the schema it knows. Data in what the
    newer revisions added (columns, tables) is lost.
    """
    from alembic import command

    with engine.begin() as connection:
        _begin_migration(connection)
        command.downgrade(alembic_config(connection), revision)


def _describe(diff: Any) -> str:
    """One of ``compare_metadata``'s differences as a line an operator can read."""
    op = diff[0]
    if op in ("add_table", "remove_table"):
        where = "is missing from the database" if op == "add_table" else "is in the database but not in the models"
        return f"table {diff[1].name} {where}"
    if op in ("add_column", "remove_column"):
        _, _schema, table, column = diff
        where = "is missing from the database" if op == "add_column" else "is in the database but not in the models"
        return f"column {table}.{column.name} ({column.type}) {where}"
    if op in ("add_index", "remove_index", "add_constraint", "remove_constraint"):
        item = diff[1]
        kind = "index" if op.endswith("index") else type(item).__name__
        columns = ", ".join(column.name for column in item.columns)
        where = "is missing from the database" if op.startswith("add") else "is in the database but not in the models"
        return f"{kind} {item.name or '(unnamed)'} on {item.table.name}({columns}) {where}"
    if op.startswith("modify_"):
        _, _schema, table, column, _existing, database, models = diff
        what = op.removeprefix("modify_")
        return f"column {table}.{column}: {what} is {database!r} in the database, {models!r} in the models"
    return f"{op}: {diff[1:]!r}"


def _ours(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Compare only the models' tables: the catalog's database may hold other applications' tables."""
    return type_ != "table" or name in Base.metadata.tables


def _drift(connection: Connection, *, only_models: bool = False) -> list[str]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    opts: dict[str, Any] = {"compare_type": True}
    if only_models:
        opts["include_name"] = _ours
    context = MigrationContext.configure(connection, opts=opts)
    lines = []
    for diff in compare_metadata(context, Base.metadata):
        # Changes to one column come grouped in a list.
        for single in diff if isinstance(diff, list) else [diff]:
            lines.append(_describe(single))
    return lines


def drift(engine: Engine) -> list[str]:
    """How the database differs from the models (Alembic's autogenerate comparison), one line per
    difference; empty when they agree. Our ``alembic check``: at head it must be empty, else a model
    changed without a revision (or a revision does not do what the model says). Tables of other
    applications in the same database count as differences (``remove_table``): check a catalog of its own."""
    with engine.connect() as connection:
        return _drift(connection)


def check_catalog_schema(url: str) -> None:
    """A service's start-up check: return when the catalog at ``url`` is at :data:`HEAD`; else log why
    and exit (``SystemExit`` with the message, so it ends on stderr and the exit status is 1)."""
    engine = make_engine(url)
    try:
        require_current(engine)
    except SchemaOutdated as exc:
        structlog.get_logger(__name__).error("catalog schema not current", error=str(exc), catalog=shown_url(url))
        raise SystemExit(str(exc)) from None
    finally:
        engine.dispose()
