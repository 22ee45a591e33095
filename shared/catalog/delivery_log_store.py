"""The member delivery log: for a definition and a member key, the last outcome of its delivery.

Written in the notifier's fold (an outcome follower), so it costs the pipeline one row per batch outcome,
its members' keys and its refused members packed (:mod:`shared.domain.key_packing`); a lookup
scans the definition's batch rows newest first and stops at the first that holds the key (or after ``MAX_SCAN``
rows: a key it does not hold is not searched through the whole retention). Rows older
than the retention are pruned by the notifier's sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, select, tuple_
from sqlalchemy.orm import Session

from shared.catalog.database import CatalogDatabase, as_utc, aware, now
from shared.catalog.definition_ids import outcome_definition_ids
from shared.catalog.driver_inserts import DriverInsert
from shared.catalog.member_tables import DeliveryBatchRow
from shared.domain.key_packing import holds_key, pack_keys, pack_refused, refusal_of
from shared.domain.member_deliveries import MemberDelivery
from shared.events import BatchOutcome

_INSERT = DriverInsert(
    cast(Table, DeliveryBatchRow.__table__),
    ["run_id", "batch_index", "definition_id", "at", "members", "attempts", "status_code", "retry", "keys", "refused"],
)
#: Batch rows read at a time while looking a key up (newest first).
SCAN_CHUNK = 256
#: Batch rows one lookup reads at most (newest first): a key the log does not hold must not scan the whole
#: retention inside an API request. 20,000 rows are 10M member deliveries at 500 members a batch; a member
#: last delivered before them is answered as not found.
MAX_SCAN = 20_000
#: Rows one delete of the prune takes at most (each its own transaction: never one long lock).
PRUNE_BATCH = 5_000


class SqlDeliveryLog:
    """The ``delivery_batches`` and ``delivery_refusals`` tables."""

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    def follow(self, session: Session, outcomes: Sequence[BatchOutcome]) -> None:
        """One row per outcome that names its members (one executemany INSERT for them all), under its
        definition's id (an outcome of a definition gone since is not kept)."""
        ids = outcome_definition_ids(session, [o for o in outcomes if o.member_keys is not None])
        batches = [
            {
                "run_id": str(outcome.run_id),
                "batch_index": outcome.batch_index,
                "definition_id": ids[str(outcome.run_id)],
                "at": as_utc(outcome.at),
                "members": len(outcome.member_keys),
                "attempts": outcome.attempts,
                "status_code": outcome.status_code,
                "retry": outcome.retry,
                "keys": pack_keys(outcome.member_keys),
                "refused": pack_refused([(m.key, m.status, m.reason, m.attempts) for m in outcome.refused]),
            }
            for outcome in outcomes
            if outcome.member_keys is not None and str(outcome.run_id) in ids
        ]
        _INSERT.execute(session, batches)

    def last_delivery(self, definition: str, key: str) -> MemberDelivery | None:
        """The member's last delivery within the retention (None when the log holds none), by the definition's
        id (never its name: a namesake re-created later sees nothing of the old one's)."""
        with self.database.transaction("MemberDelivery") as session:
            row = self._newest_batch_with(session, definition, key)
        if row is None:
            return None
        at = aware(row.at) or row.at
        refusal = refusal_of(row.refused, key)
        if refusal is None:
            return MemberDelivery(
                definition, key, True, row.run_id, row.batch_index, at, row.attempts, None, None, row.retry
            )
        status, reason, attempts = refusal
        return MemberDelivery(
            definition, key, False, row.run_id, row.batch_index, at, attempts, status, reason, row.retry
        )

    @staticmethod
    def _newest_batch_with(session: Session, definition: str, key: str) -> Any:
        """The definition's newest batch row holding ``key``: read newest first, a chunk at a time."""
        columns = (
            DeliveryBatchRow.run_id,
            DeliveryBatchRow.batch_index,
            DeliveryBatchRow.at,
            DeliveryBatchRow.attempts,
            DeliveryBatchRow.retry,
            DeliveryBatchRow.keys,
            DeliveryBatchRow.refused,
        )
        ordering = (DeliveryBatchRow.at.desc(), DeliveryBatchRow.run_id, DeliveryBatchRow.batch_index.desc())
        after: tuple[datetime, str, int] | None = None
        scanned = 0
        while scanned < MAX_SCAN:
            query = select(*columns).where(DeliveryBatchRow.definition_id == definition)
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
            rows = session.execute(query.order_by(*ordering).limit(min(SCAN_CHUNK, MAX_SCAN - scanned))).all()
            scanned += len(rows)
            for row in rows:
                if holds_key(row.keys, key):
                    return row
            if len(rows) < SCAN_CHUNK:
                return None
            last = rows[-1]
            after = (last.at, last.run_id, last.batch_index)
        return None

    def prune(self, retention_days: float, *, batch: int = PRUNE_BATCH) -> int:
        """Drop the rows older than ``retention_days``, ``batch`` rows a delete (each its own transaction);
        how many went."""
        cutoff = now() - timedelta(days=retention_days)
        pk = tuple_(DeliveryBatchRow.run_id, DeliveryBatchRow.batch_index)
        old = select(DeliveryBatchRow.run_id, DeliveryBatchRow.batch_index).where(DeliveryBatchRow.at < cutoff)
        gone = 0
        while True:
            with self.database.transaction("MemberDelivery") as session:
                result = session.execute(delete(DeliveryBatchRow).where(pk.in_(old.limit(batch))))
                went = int(getattr(result, "rowcount", 0) or 0)
            gone += went
            if went < batch:
                return gone
