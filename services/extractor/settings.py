"""The extractor's settings (``EXPORT_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class ExtractorSettings(CommonSettings):
    """Settings of the extractor service."""

    query_store_url: str = Field(
        default="sqlite:///.local/members.db", description="SQLAlchemy URL of the member store the queries read."
    )
    extractor_page_size: int = Field(
        default=5_000, ge=1, description="Members read per query page (rounded up to whole batches)."
    )
    extractor_max_record_bytes: int = Field(
        default=900_000,
        ge=10_000,
        description="Largest member-batch record, in bytes; bigger batches are split (keep under the "
        "broker's message.max.bytes, 1 MiB by default).",
    )
    metrics_port: int = Field(default=9402, ge=0, le=65535, description="Port of /metrics; 0 turns it off.")
