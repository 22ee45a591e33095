"""Two notifier replicas' multi-row claims and marks of overlapping sets never deadlock on PostgreSQL: each statement
locks its rows in key order, whatever order its plan reads them in.

Before (session 53): each was one ``UPDATE ... WHERE key IN (...)``, which locks rows in the order its plan visits
them: a sequential or bitmap scan, in the table's physical order, and a row updated meanwhile (say, a renewal) moves
later in it. A replica marking a missed-runs digest's runs A, X, B (X locked by a third transaction) held A and waited
for X; another, marking A and B after A moved past B, held B and waited for A; once X was free the first waited for B:
PostgreSQL ended one of them (a deadlock, SQLSTATE 40P01) and that replica logged its mark failed. The same for a
sweep's claims, a finish's claims and record on the runs' table, and a poll's fold (its runs locked by a
``SELECT ... FOR UPDATE``, in plan order too).

Real PostgreSQL, two store calls in two threads, each step waited for on PostgreSQL's own account of who blocks whom
(``pg_blocking_pids``), never a pause. SQLite has one writer at a time: nothing to order there."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from devtools.processes import wait_until
from shared.catalog import CatalogStores
from shared.events import RunFailed

pytestmark = pytest.mark.integration

#: Longest wait for a thread or a condition (a deadline, never a pause to synchronise on).
DEADLINE = 30.0

#: Three runs, their ids in key order: A < X < B. Inserted in that order: the table's physical order too.
A, X, B = (uuid.UUID(int=n) for n in (1, 2, 3))
KIND = "missed:ops@example.com"


#: Text that makes a row long: a page of the table holds a few such rows (far under the 2 kB PostgreSQL compresses at).
LONG = "".join(uuid.UUID(int=n).hex for n in range(40))


def notifications(catalog: CatalogStores) -> None:
    """A, X and B unsent, then other notifications (sent) until the page is full."""
    insert = "INSERT INTO notifications (run_id, kind, recipients, attempts, sent_at, last_error) VALUES "
    with catalog.database.engine.begin() as connection:
        for run_id in (A, X, B):
            connection.execute(sa.text(insert + "(:r, :k, '[]', 0, NULL, NULL)"), {"r": str(run_id), "k": KIND})
        fill(connection, "notifications", lambda r: (insert + "(:r, :k, '[]', 0, now(), :long)", {"r": r, "k": KIND}))


def runs(catalog: CatalogStores) -> None:
    """A, X and B final, their finish not handled, then other runs (handled) until the page is full."""
    insert = (
        "INSERT INTO runs (run_id, definition, status, extraction_complete, extracted, batches_done, delivered, "
        "failed, error_samples, finished_at, finish_handled_at, failure_reason) "
        "VALUES (:r, 'gold', 'failed', true, 0, 0, 0, 0, '[]', now(), "
    )
    with catalog.database.engine.begin() as connection:
        for run_id in (A, X, B):
            connection.execute(sa.text(insert + "NULL, NULL)"), {"r": str(run_id)})
        fill(connection, "runs", lambda r: (insert + "now(), :long)", {"r": r}))


def fill(connection: sa.Connection, table: str, row: Callable[[str], tuple[str, dict[str, str]]]) -> None:
    """Insert long rows (``row(run_id)``: the statement and its values) until one goes to the table's second page: the
    first has no room left for a new version of A."""
    for n in range(100, 200):
        statement, values = row(str(uuid.UUID(int=n)))
        connection.execute(sa.text(statement), {**values, "long": LONG})
        page = f"SELECT (ctid::text::point)[0] FROM {table} WHERE run_id = :r"
        if connection.execute(sa.text(page), {"r": str(uuid.UUID(int=n))}).scalar_one():
            return
    raise AssertionError(f"{table}'s first page never filled")


def mark(catalog: CatalogStores, run_ids: list[uuid.UUID]) -> Any:
    return catalog.runs.mark_notifications([(run_id, KIND) for run_id in run_ids], error="451 try again later")


def claim(catalog: CatalogStores, run_ids: list[uuid.UUID]) -> Any:
    return catalog.runs.claim_unsent_notifications([(run_id, KIND) for run_id in run_ids], 60.0)


def claim_finishes(catalog: CatalogStores, run_ids: list[uuid.UUID]) -> Any:
    return catalog.runs.claim_finishes(run_ids, f"replica-{len(run_ids)}", 60.0)


def finishes_handled(catalog: CatalogStores, run_ids: list[uuid.UUID]) -> Any:
    return catalog.runs.mark_finishes_handled(run_ids)


def fold(catalog: CatalogStores, run_ids: list[uuid.UUID]) -> Any:
    """A poll's fold of a late ``run.failed`` of each run (a rebalance: two replicas folding the same runs' events)."""
    return catalog.runs.fold_run_events(
        [RunFailed(run_id=run_id, definition="gold", reason="boom") for run_id in run_ids]
    )


def marked(result: Any) -> dict[uuid.UUID, int]:
    """A mark's result: the attempts it counted, by run."""
    return {run_id: mark.attempts for (run_id, _), mark in result.items()}


def claimed(result: Any) -> set[uuid.UUID]:
    """A claim's result: the runs claimed."""
    return {run_id for run_id, _ in result}


#: (the rows' table, how the rows are made, the call two replicas make at once, what each call's result says, what
#: replica 1's and replica 2's said)
CASES: dict[str, tuple[str, Callable[..., None], Callable[..., Any], Callable[[Any], Any], tuple[Any, Any]]] = {
    # Replica 2's mark counts its attempt after replica 1's.
    "digest-mark": ("notifications", notifications, mark, marked, ({A: 1, X: 1, B: 1}, {A: 2, B: 2})),
    # Replica 1 claimed them all; replica 2 none (they are replica 1's).
    "sweep-claim": ("notifications", notifications, claim, claimed, ({A, X, B}, set())),
    # Claimed by replica 1; replica 2 is told replica 1 holds A and B.
    "finish-claim": ("runs", runs, claim_finishes, lambda result: result, (({A, X, B}, set()), (set(), {A, B}))),
    # Recorded by replica 1; nothing left to record for replica 2.
    "finish-handled": ("runs", runs, finishes_handled, lambda result: result, ({A, X, B}, set())),
    # Each poll's runs folded (their rows locked for the fold's transaction).
    "fold": ("runs", runs, fold, set, ({A, X, B}, {A, B})),
}


def blocked_by(catalog: CatalogStores, pid: int) -> list[int]:
    """The sessions PostgreSQL says wait for ``pid``'s locks now."""
    with catalog.database.engine.connect() as connection:
        query = "SELECT pid FROM pg_stat_activity WHERE CAST(:pid AS integer) = ANY(pg_blocking_pids(pid))"
        return list(connection.execute(sa.text(query), {"pid": pid}).scalars())


class Call(threading.Thread):
    """A store call in a thread of its own: what it returned, or what it raised."""

    def __init__(self, call: Callable[[], Any], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.call, self.result, self.error = call, None, None  # type: Any, Any, BaseException | None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:  # noqa: BLE001 - said by the test
            self.error = exc


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_replicas_claiming_or_marking_overlapping_runs_at_once_both_succeed(
    catalog: CatalogStores, database_url: str, case: str
):
    """Replica 1 claims or marks runs A, X and B while another transaction has just updated A (not committed) and
    another holds X; replica 2 then claims or marks A and B. Both calls return; none is ended by PostgreSQL."""
    table, make_rows, call, said, expected = CASES[case]
    make_rows(catalog)
    engine = catalog.database.engine
    with engine.connect() as mover, engine.connect() as holder:
        mover_pid = mover.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        holder_pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        # An update of A (another's mark, a fold): its new version goes to the second page, after B.
        column = "last_error" if table == "notifications" else "failure_reason"
        mover.execute(sa.text(f"UPDATE {table} SET {column} = :long WHERE run_id = :r"), {"r": str(A), "long": LONG})
        holder.execute(sa.text(f"SELECT run_id FROM {table} WHERE run_id = :r FOR UPDATE"), {"r": str(X)})

        first = Call(lambda: call(catalog, [A, X, B]), name="replica 1")
        first.start()
        wait_until(lambda: bool(blocked_by(catalog, mover_pid)), timeout=DEADLINE, what="replica 1 waiting for A")
        mover.commit()
        wait_until(lambda: bool(blocked_by(catalog, holder_pid)), timeout=DEADLINE, what="replica 1 waiting for X")
        [first_pid] = blocked_by(catalog, holder_pid)
        second = Call(lambda: call(catalog, [A, B]), name="replica 2")
        second.start()
        wait_until(lambda: bool(blocked_by(catalog, first_pid)), timeout=DEADLINE, what="replica 2 waiting")
        holder.commit()
        first.join(DEADLINE)
        second.join(DEADLINE)

    assert not first.is_alive()
    assert not second.is_alive()
    assert (first.error, second.error) == (None, None)
    assert (said(first.result), said(second.result)) == expected
