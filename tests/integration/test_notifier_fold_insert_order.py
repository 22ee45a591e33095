"""Two notifier replicas folding the same new runs' events at once, in different orders, both succeed on PostgreSQL.

A run the scheduler fires has no row until the notifier folds its events, and after a rebalance two replicas may fold
the same records, each poll interleaving the runs' partitions in its own order. Their rows are new: no run's lock
orders the two folds (the fold's ``SELECT ... FOR UPDATE`` finds nothing), but each insert of a key another
transaction inserted and has not committed waits for that transaction (PostgreSQL's unique index).

Before (session 53): the batch-outcome ledger's insert took the poll's outcomes in event order, so a replica folding
A, X, B (X's key held by a third transaction) held A and waited for X; another, folding B, A, held B and waited for A;
once X was free the first waited for B: PostgreSQL ended one of them (a deadlock, SQLSTATE 40P01), whose poll was
folded again one event at a time. Had the two waited for each other in one order, the second would still have failed
at the end, inserting a run the first had just created (a unique violation). Now the ledger's rows, the new runs and
the notifications a fold claims are inserted in key order, and a fold whose new run another created meanwhile is
done again once (on the runs as they now are: its outcomes already counted are not counted twice).

Real PostgreSQL, two store calls in two threads, each step waited for on PostgreSQL's own account of who blocks whom
(``pg_blocking_pids``), never a pause. SQLite has one writer at a time: nothing to order there."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from devtools.processes import wait_until
from shared.catalog import CatalogStores
from shared.events import BatchOutcome
from tests.integration.test_notifier_lock_order import DEADLINE, Call, blocked_by

pytestmark = pytest.mark.integration

#: Three new runs, their ids in key order: A < X < B.
A, X, B = (uuid.UUID(int=n) for n in (1, 2, 3))


def fold(catalog: CatalogStores, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[int, int]]:
    """A poll's fold of each run's first batch outcome (10 members delivered), in this order; per run, its batches
    done and members delivered after it."""
    events = [BatchOutcome(run_id=r, definition="gold", batch_index=0, delivered=10, failed=0) for r in run_ids]
    folded = catalog.runs.fold_run_events(events)
    return {run_id: (after.batches_done, after.delivered) for run_id, (_, after) in folded.items()}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_replicas_folding_the_same_new_runs_in_different_orders_both_succeed(catalog: CatalogStores):
    """Replica 1 folds new runs A, X, B's outcomes while another transaction has inserted X's and not committed;
    replica 2 then folds B's and A's. Both folds return; each run's outcome is counted once."""
    with catalog.database.engine.connect() as holder:
        holder_pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        holder.execute(
            sa.text("INSERT INTO batch_outcomes (run_id, batch_index, delivered, failed) VALUES (:r, 0, 10, 0)"),
            {"r": str(X)},
        )
        first = Call(lambda: fold(catalog, [A, X, B]), name="replica 1")
        first.start()
        wait_until(lambda: bool(blocked_by(catalog, holder_pid)), timeout=DEADLINE, what="replica 1 waiting for X")
        [first_pid] = blocked_by(catalog, holder_pid)
        second = Call(lambda: fold(catalog, [B, A]), name="replica 2")
        second.start()
        wait_until(lambda: bool(blocked_by(catalog, first_pid)), timeout=DEADLINE, what="replica 2 waiting")
        holder.rollback()  # X's outcome was never counted: replica 1 counts it
        first.join(DEADLINE)
        second.join(DEADLINE)

    assert not first.is_alive()
    assert not second.is_alive()
    assert (first.error, second.error) == (None, None)
    assert first.result == {A: (1, 10), X: (1, 10), B: (1, 10)}
    assert second.result == {B: (1, 10), A: (1, 10)}
    runs = {run_id: catalog.runs.get_run(run_id) for run_id in (A, X, B)}
    assert {run_id: (run.batches_done, run.delivered) for run_id, run in runs.items() if run} == first.result
