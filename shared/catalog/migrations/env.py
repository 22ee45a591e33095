"""Alembic's environment for the catalog: online migrations only, on a connection passed in or on
``EXPORT_CATALOG_URL``.

:mod:`shared.catalog.schema` passes its connection in ``config.attributes["connection"]`` (one
transaction for the stamp and the upgrade). The ``alembic`` command line (for writing revisions, see
``__init__``) has none, and connects to ``-x url=...`` when given, else to the catalog the settings
name (``EXPORT_CATALOG_URL``). SQLite gets batch mode, since it can alter a table only by copying it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from shared.catalog.engine import make_engine
from shared.catalog.tables import Base
from shared.settings import CommonSettings

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate on the connection given, or on one of our own."""
    connection: Connection | None = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or CommonSettings().catalog_url
    engine = make_engine(url)
    try:
        with engine.connect() as own_connection:
            _run(own_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError(
        "offline (--sql) catalog migrations are not supported: revision 0002 reads the rows it backfills; "
        "run `exportctl db upgrade` against the database instead"
    )
run_migrations_online()
