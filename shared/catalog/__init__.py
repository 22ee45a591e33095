"""The catalog: its stores (definitions, runs, scheduling, extraction) in SQLAlchemy over SQLite or PostgreSQL."""

from shared.catalog.change_snapshots import ChangeSnapshotFollower, SqlChangeSnapshots
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
