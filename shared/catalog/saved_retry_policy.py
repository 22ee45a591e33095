"""A definition's ``retry_rejected`` as saved in the catalog, read inside an outcome fold."""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.catalog.tables import CatalogObjectRow
from shared.domain.member_retries import RetryRejected


def saved_retry_policy(session: Session, definition: str) -> RetryRejected:
    """The definition's ``retry_rejected`` (the defaults when it is gone or holds none or another release's)."""
    spec = session.scalar(
        select(CatalogObjectRow.spec).where(
            CatalogObjectRow.kind == "ExportDefinition", CatalogObjectRow.name == definition
        )
    )
    try:
        return RetryRejected.model_validate((spec or {}).get("retry_rejected") or {})
    except ValidationError:  # never a fold that cannot go on
        return RetryRejected()
