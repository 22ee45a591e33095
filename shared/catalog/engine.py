"""Engines for the catalog and the query store: SQLite made safe for several processes, or any URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from shared.domain.credential_patterns import mask_credential_shapes
from shared.domain.masking import MASK


def shown_url(url: str) -> str:
    """A database URL as it may be printed or logged: its password hidden, whether in the user information
    (``postgresql://app:***@db/catalog``) or in the query as libpq takes it (``?password=***``, ``sslpassword``,
    any parameter named like a credential); an unparseable URL is not shown at all."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable database URL)"
    return mask_credential_shapes(shown, MASK)


#: Every engine's errors leave out the statement's bound values: SQLAlchemy's text of a failed statement quotes them
#: (``[parameters: (...)]``), and they may hold a profile's secrets, a webhook URL, a member's values or an SMTP
#: password, while that text reaches logs, a run's failure reason, an email and a 500 answer. The statement itself
#: and the database's own words are kept (``[SQL parameters hidden due to hide_parameters=True]``).
HIDE_PARAMETERS = True


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine whose errors never quote the statement's values (:data:`HIDE_PARAMETERS`); for SQLite,
    create the file's directory and enable WAL with a busy timeout, since the services share one catalog file from
    separate processes."""
    kwargs.setdefault("hide_parameters", HIDE_PARAMETERS)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine
