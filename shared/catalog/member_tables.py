"""The catalog's per-member tables: refused members retried by the next runs, and the member delivery log.

A module of its own (the tables share :class:`shared.catalog.tables.Base`); ``shared.catalog`` imports it so
the metadata always holds them. Migration 0012 creates them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared.catalog.tables import Base


class MemberRetryRow(Base):
    """A member of a definition the partner refused: its last refusal and where its retries stand."""

    __tablename__ = "member_retries"
    #: Keyed by the definition's stable id (not its name: a namesake re-created later sees none of these).
    __table_args__ = (
        Index("ix_member_retries_pending", "definition_id", "state"),
        Index("ix_member_retries_updated_at", "state", "updated_at"),
    )

    definition_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    member_key: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    #: retryable or invalid (shared.domain.member_retries.RefusalKind).
    kind: Mapped[str] = mapped_column(String(16))
    failed_runs: Mapped[int] = mapped_column(Integer)
    #: pending, given_up, delivered or gone (shared.domain.member_retries.RetryState).
    state: Mapped[str] = mapped_column(String(16))
    last_run_id: Mapped[str] = mapped_column(String(36))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RunRetryRow(Base):
    """The pending retries a run took at its start (a fixed set: a resumed run takes the same)."""

    __tablename__ = "run_retries"

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    member_key: Mapped[str] = mapped_column(Text, primary_key=True)


class RunRetryClaimRow(Base):
    """That a run took its share of the pending retries (``keys`` of them, maybe none): written at its first
    start, only read after (a resumed run, and the run's end, find the same share)."""

    __tablename__ = "run_retry_claims"

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    definition_id: Mapped[str] = mapped_column(String(36))
    keys: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class DeliveryBatchRow(Base):
    """The delivery log's row of one batch outcome: its members' keys, and its refused members (key, status,
    reason, attempts), each packed (shared.domain.key_packing)."""

    __tablename__ = "delivery_batches"
    __table_args__ = (Index("ix_delivery_batches_definition_at", "definition_id", "at"),)

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    batch_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition_id: Mapped[str] = mapped_column(String(36))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    members: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    retry: Mapped[bool] = mapped_column(Boolean, default=False)
    keys: Mapped[bytes] = mapped_column(LargeBinary)
    refused: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
