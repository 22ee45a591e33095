"""The catalog: its stores (definitions, runs, scheduling, extraction) in SQLAlchemy over SQLite or PostgreSQL.

The change-mode snapshots (and numpy, which they need) are loaded on first use of their names: most
processes (``exportctl run``, the scheduler) never touch them.
"""

from typing import TYPE_CHECKING, Any

# The snapshots' tables, though: Base.metadata holds every model whenever the catalog is loaded (drift,
# create_all, Alembic's autogenerate compare against it).
from shared.catalog import change_tables as change_tables
from shared.catalog.database import CatalogDatabase
from shared.catalog.definitions_store import ApplyResult, SqlDefinitionsStore
from shared.catalog.delivery_log_store import SqlDeliveryLog
from shared.catalog.engine import make_engine
from shared.catalog.extraction_store import SqlExtractionStore
from shared.catalog.member_retries_store import SqlMemberRetries
from shared.catalog.runs_store import SqlRunsStore
from shared.catalog.scheduling_store import SqlSchedulingStore
from shared.catalog.stores import CatalogStores
from shared.errors import NotFound

if TYPE_CHECKING:
    from shared.catalog.change_snapshots import ChangeSnapshotFollower, SqlChangeSnapshots


def __getattr__(name: str) -> Any:
    if name in ("ChangeSnapshotFollower", "SqlChangeSnapshots"):
        from shared.catalog import change_snapshots

        return getattr(change_snapshots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ApplyResult",
    "CatalogDatabase",
    "CatalogStores",
    "ChangeSnapshotFollower",
    "NotFound",
    "SqlChangeSnapshots",
    "SqlDefinitionsStore",
    "SqlDeliveryLog",
    "SqlExtractionStore",
    "SqlMemberRetries",
    "SqlRunsStore",
    "SqlSchedulingStore",
    "make_engine",
]
