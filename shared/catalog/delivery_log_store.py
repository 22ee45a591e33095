"""The member delivery log: for a definition and a member key, the last outcome of its delivery.

Written in the notifier's fold (an outcome follower), so it costs the pipeline one row per batch outcome,
its members' keys packed (:mod:`shared.domain.key_packing`), plus one row per refused member; a lookup
scans the definition's batch rows newest first and stops at the first that holds the key. Rows older
than the retention are pruned by the notifier's sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from shared.catalog.database import CatalogDatabase, as_utc, aware, now
from shared.catalog.member_tables import DeliveryBatchRow, DeliveryRefusalRow
from shared.domain.key_packing import holds_key, pack_keys
from shared.domain.member_deliveries import MemberDelivery
from shared.events import BatchOutcome

#: Batch rows read at a time while looking a key up (newest first).
SCAN_CHUNK = 256


class SqlDeliveryLog:
    """The ``delivery_batches`` and ``delivery_refusals`` tables."""

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    def follow(self, session: Session, outcomes: Sequence[BatchOutcome]) -> None:
        """One row per outcome that names its members, one per refused member (bulk inserts)."""
        batches, refusals = [], []
        for outcome in outcomes:
            if outcome.member_keys is None:
                continue
            run_id, at = str(outcome.run_id), as_utc(outcome.at)
            batches.append(
                {
                    "run_id": run_id,
                    "batch_index": outcome.batch_index,
                    "definition": outcome.definition,
                    "at": at,
                    "members": len(outcome.member_keys),
                    "attempts": outcome.attempts,
                    "status_code": outcome.status_code,
                    "retry": outcome.retry,
                    "keys": pack_keys(outcome.member_keys),
                }
            )
            seen: set[str] = set()
            for member in outcome.refused:
                if member.key in seen:  # two members with one key: the log keeps one
                    continue
                seen.add(member.key)
                refusals.append(
                    {
                        "run_id": run_id,
                        "batch_index": outcome.batch_index,
                        "member_key": member.key,
                        "definition": outcome.definition,
                        "status": member.status,
                        "reason": member.reason,
                        "attempts": member.attempts,
                        "at": at,
                    }
                )
        if batches:
            session.execute(insert(DeliveryBatchRow), batches)
        if refusals:
            session.execute(insert(DeliveryRefusalRow), refusals)

    def last_delivery(self, definition: str, key: str) -> MemberDelivery | None:
        """The member's last delivery within the retention (None when the log holds none)."""
        with self.database.transaction() as session:
            found = self._newest_batch_with(session, definition, key)
            if found is None:
                return None
            run_id, batch_index, at, attempts, retry = found
            refusal = session.get(DeliveryRefusalRow, (run_id, batch_index, key))
            at = aware(at) or at
            if refusal is None:
                return MemberDelivery(definition, key, True, run_id, batch_index, at, attempts, None, None, retry)
            return MemberDelivery(
                definition,
                key,
                False,
                run_id,
                batch_index,
                at,
                refusal.attempts,
                refusal.status,
                refusal.reason,
                retry,
            )

    @staticmethod
    def _newest_batch_with(session: Session, definition: str, key: str) -> tuple[str, int, datetime, int, bool] | None:
        columns = (
            DeliveryBatchRow.run_id,
            DeliveryBatchRow.batch_index,
            DeliveryBatchRow.at,
            DeliveryBatchRow.attempts,
            DeliveryBatchRow.retry,
            DeliveryBatchRow.keys,
        )
        ordering = (DeliveryBatchRow.at.desc(), DeliveryBatchRow.run_id, DeliveryBatchRow.batch_index.desc())
        after: tuple[datetime, str, int] | None = None
        while True:
            query = select(*columns).where(DeliveryBatchRow.definition == definition)
            if after is not None:
                # Keyset over (at desc, run_id, batch_index desc): the next chunk starts where this one ended.
                at, run_id, index = after
                query = query.where(
                    (DeliveryBatchRow.at < at)
                    | ((DeliveryBatchRow.at == at) & (DeliveryBatchRow.run_id > run_id))
                    | (
                        (DeliveryBatchRow.at == at)
                        & (DeliveryBatchRow.run_id == run_id)
                        & (DeliveryBatchRow.batch_index < index)
                    )
                )
            rows = session.execute(query.order_by(*ordering).limit(SCAN_CHUNK)).all()
            for row in rows:
                if holds_key(row.keys, key):
                    return row.run_id, row.batch_index, row.at, row.attempts, row.retry
            if len(rows) < SCAN_CHUNK:
                return None
            last = rows[-1]
            after = (last.at, last.run_id, last.batch_index)

    def prune(self, retention_days: float) -> int:
        """Drop the rows older than ``retention_days``; how many batch rows went."""
        cutoff = now() - timedelta(days=retention_days)
        with self.database.transaction() as session:
            session.execute(delete(DeliveryRefusalRow).where(DeliveryRefusalRow.at < cutoff))
            result = session.execute(delete(DeliveryBatchRow).where(DeliveryBatchRow.at < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)
