"""The catalog: its stores (definitions, runs, scheduling, extraction) in SQLAlchemy over SQLite or PostgreSQL."""

from shared.catalog.change_snapshots import ChangeSnapshotFollower, SqlChangeSnapshots
from shared.catalog.database import CatalogDatabase
from shared.catalog.definitions_store import ApplyResult, SqlDefinitionsStore
from shared.catalog.engine import make_engine
from shared.catalog.extraction_store import SqlExtractionStore
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
    "SqlExtractionStore",
    "SqlRunsStore",
    "SqlSchedulingStore",
    "make_engine",
]
