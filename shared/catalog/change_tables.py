"""The change-mode snapshot's tables (migration 0009): one snapshot a definition, one row a member."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from shared.catalog.tables import Base


class ChangeSnapshotRow(Base):
    """A change-mode definition's snapshot (by the definition's id: a definition deleted and created again under
    the same name starts from none; a renamed one keeps its own), and its runs' serial numbers."""

    __tablename__ = "change_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    definition_id: Mapped[str] = mapped_column(String(36), unique=True)
    #: The serial number of the snapshot's last run (members name the run that staged them by it: 4 bytes,
    #: not a 36-character run id on each of millions of rows).
    last_serial: Mapped[int] = mapped_column(Integer, default=0)


class ChangeRunRow(Base):
    """A change-mode run: its snapshot and serial (the outcome follower finds the staged members by them)."""

    __tablename__ = "change_runs"

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(Integer, index=True)
    serial: Mapped[int] = mapped_column(Integer)


class ChangeMemberRow(Base):
    """One member of a snapshot: its last delivered values' fingerprint and JSON, and what a run staged.

    ``fingerprint`` is null until the member's first delivery (and after its removal was delivered, until the
    next run forgets it). ``run_serial``/``batch_index``/``kind`` stay after the outcome (a resumed run gives
    the member the same kind again); ``awaiting`` marks the staging whose outcome is not folded yet, with the
    ``staged_*`` values that replace the delivered ones when it succeeds.
    """

    __tablename__ = "change_members"
    __table_args__ = (
        # Only the stagings waiting for their outcome: the follower's lookups, nearly empty between runs.
        Index(
            "ix_change_members_awaiting",
            "snapshot_id",
            "run_serial",
            "batch_index",
            postgresql_where=text("awaiting"),
            sqlite_where=text("awaiting = 1"),
        ),
    )

    snapshot_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[int | None] = mapped_column(BigInteger)
    member_values: Mapped[str | None] = mapped_column(Text)
    run_serial: Mapped[int | None] = mapped_column(Integer)
    batch_index: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str | None] = mapped_column(String(8))
    awaiting: Mapped[bool] = mapped_column(Boolean, default=False)
    staged_fingerprint: Mapped[int | None] = mapped_column(BigInteger)
    staged_values: Mapped[str | None] = mapped_column(Text)
    #: Change runs in a row that sent the member and were refused (``retry_rejected`` gives it up past its
    #: budget: its staged values are then taken as delivered, so it is sent again only when they change).
    refused_runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
