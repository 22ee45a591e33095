"""The query store: where members live. Any SQLAlchemy URL; read page by page with keyset paging."""

from shared.querystore.reader import (
    JsonPage,
    MemberPages,
    MemberReader,
    Page,
    QueryError,
    QueryTimeout,
    StoreUnavailable,
)

__all__ = ["JsonPage", "MemberPages", "MemberReader", "Page", "QueryError", "QueryTimeout", "StoreUnavailable"]
