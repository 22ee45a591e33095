"""The catalog: profiles, templates, queries, definitions and runs, in SQLAlchemy (SQLite or PostgreSQL)."""

from shared.catalog.engine import make_engine
from shared.catalog.repository import Catalog, NotFound

__all__ = ["Catalog", "NotFound", "make_engine"]
