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

The same for the paths of a fold that claims the ``started`` notifications of the new runs it starts (before: a
deadlock on the runs' key), that writes member retries of two definitions (before: a deadlock on member_retries;
then, until s53-notify3, a refusal overwritten: each fold read the member's row unlocked and upserted the state it
computed from it), and for a single event's fold, as a poll's events are folded after the poll's fold failed (before:
a unique violation, and so a dead letter, when another fold created its run meanwhile).

Real PostgreSQL, two store calls in two threads, each step waited for on PostgreSQL's own account of who blocks whom
(``pg_blocking_pids``), never a pause. SQLite has one writer at a time: nothing to order there."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from devtools.processes import wait_until
from shared.catalog import CatalogStores
from shared.catalog.runs_store import SqlRunsStore
from shared.domain.runs import StartClaims
from shared.events import BatchOutcome, RunStarted, Trigger
from tests.integration.test_member_retries_store import _outcome
from tests.integration.test_notifier_lock_order import DEADLINE, Call, blocked_by
from tests.member_state_helpers import member_state_definition

pytestmark = pytest.mark.integration

#: Three new runs, their ids in key order: A < X < B.
A, X, B = (uuid.UUID(int=n) for n in (1, 2, 3))


def fold(catalog: CatalogStores, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[int, int]]:
    """A poll's fold of each run's first batch outcome (10 members delivered), in this order; per run, its batches
    done and members delivered after it."""
    events = [BatchOutcome(run_id=r, definition="gold", batch_index=0, delivered=10, failed=0) for r in run_ids]
    folded = catalog.runs.fold_run_events(events)
    return {run_id: (after.batches_done, after.delivered) for run_id, (_, after) in folded.items()}


def race(catalog: CatalogStores, holder: sa.Connection, first: Callable[[], Any], second: Callable[[], Any]) -> Any:
    """Replica 1's call started while ``holder``'s transaction holds a key it needs; replica 2's once replica 1 waits
    for it; once replica 2 waits for replica 1, the holder's transaction rolled back. Both calls, joined."""
    holder_pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    one = Call(first, name="replica 1")
    one.start()
    wait_until(lambda: bool(blocked_by(catalog, holder_pid)), timeout=DEADLINE, what="replica 1 waiting for X")
    [one_pid] = blocked_by(catalog, holder_pid)
    two = Call(second, name="replica 2")
    two.start()
    wait_until(lambda: bool(blocked_by(catalog, one_pid)), timeout=DEADLINE, what="replica 2 waiting")
    holder.rollback()
    one.join(DEADLINE)
    two.join(DEADLINE)
    assert not one.is_alive()
    assert not two.is_alive()
    assert (one.error, two.error) == (None, None)
    return one, two


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_replicas_folding_the_same_new_runs_in_different_orders_both_succeed(catalog: CatalogStores):
    """Replica 1 folds new runs A, X, B's outcomes while another transaction has inserted X's and not committed;
    replica 2 then folds B's and A's. Both folds return; each run's outcome is counted once."""
    with catalog.database.engine.connect() as holder:
        holder.execute(
            sa.text("INSERT INTO batch_outcomes (run_id, batch_index, delivered, failed) VALUES (:r, 0, 10, 0)"),
            {"r": str(X)},
        )  # X's outcome is never counted by it (rolled back): replica 1 counts it
        first, second = race(catalog, holder, lambda: fold(catalog, [A, X, B]), lambda: fold(catalog, [B, A]))

    assert first.result == {A: (1, 10), X: (1, 10), B: (1, 10)}
    assert second.result == {B: (1, 10), A: (1, 10)}
    runs = {run_id: catalog.runs.get_run(run_id) for run_id in (A, X, B)}
    assert {run_id: (run.batches_done, run.delivered) for run_id, run in runs.items() if run} == first.result


#: The ``started`` notifications of definition "gold", not in key order.
STARTED = [("started:ops@example.com", ["ops@example.com"]), ("started:audit@example.com", ["audit@example.com"])]


def start(catalog: CatalogStores, run_ids: list[uuid.UUID]) -> tuple[set[uuid.UUID], set[tuple[uuid.UUID, str]]]:
    """A poll's fold of each run's ``run.started``, in this order, claiming its ``started`` notifications: the runs
    it started (none started before it) and the notifications it claimed."""
    starts = StartClaims(kinds={"gold": STARTED}, held_until=datetime.now(UTC) + timedelta(minutes=1), earlier={})
    events = [RunStarted(run_id=r, definition="gold", trigger=Trigger.SCHEDULE) for r in run_ids]
    folded = catalog.runs.fold_run_events(events, starts)
    started = {run_id for run_id, (before, after) in folded.items() if after.started_at and not before}
    return started, set(starts.earlier or {})


def create_run(connection: sa.Connection, run_id: uuid.UUID) -> None:
    """Run ``run_id`` of "gold" queued, not committed: another replica's fold creating it."""
    connection.execute(
        sa.text(
            "INSERT INTO runs (run_id, definition, status, extraction_complete, extracted, batches_done, "
            "delivered, failed, error_samples) VALUES (:r, 'gold', 'queued', false, 0, 0, 0, 0, '[]')"
        ),
        {"r": str(run_id)},
    )


def started_notifications(catalog: CatalogStores) -> list[tuple[uuid.UUID, str]]:
    with catalog.database.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT run_id, kind FROM notifications ORDER BY run_id, kind"))
        return [(uuid.UUID(run_id), kind) for run_id, kind in rows]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_replicas_starting_the_same_new_runs_in_different_orders_claim_each_notification_once(
    catalog: CatalogStores,
):
    """Replica 1 folds new runs A, X, B's ``run.started`` while another transaction has created X and not committed;
    replica 2 then folds B's and A's. Both folds return; replica 1 started the three runs and claimed their six
    ``started`` notifications, replica 2 found them started and claimed none."""
    with catalog.database.engine.connect() as holder:
        create_run(holder, X)  # rolled back: X is created and started by replica 1
        first, second = race(catalog, holder, lambda: start(catalog, [A, X, B]), lambda: start(catalog, [B, A]))

    everyone = {(run_id, kind) for run_id in (A, X, B) for kind, _ in STARTED}
    assert first.result == ({A, X, B}, everyone)
    assert second.result == (set(), set())
    assert sorted(started_notifications(catalog)) == sorted(everyone)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_replicas_folding_refusals_of_the_same_member_by_two_definitions_in_different_orders_both_succeed(
    catalog: CatalogStores,
):
    """Definitions P and Q (their ids in key order). Replica 1 folds a run of P refusing members m and n, then a run
    of Q refusing m, while another transaction has written P's n and not committed; replica 2 then folds a run of Q,
    then one of P, each refusing m. Both folds return; each member's refusals are all counted."""
    catalog.runs.followers.append(catalog.retries)
    name = {member_state_definition(catalog, name): name for name in ("d1", "d2")}
    p, q = sorted(name)

    def refusing(definition: str, keys: list[str]) -> BatchOutcome:
        return _outcome(uuid.uuid4(), keys, dict.fromkeys(keys, 503), definition=name[definition])

    with catalog.database.engine.connect() as holder:
        holder.execute(  # another fold refusing n (rolled back: never counted)
            sa.text(
                "INSERT INTO member_retries (definition_id, member_key, status, reason, kind, failed_runs, state, "
                "last_run_id, updated_at) VALUES (:p, 'n', 503, 'HTTP 503', 'retryable', 1, 'pending', :r, now())"
            ),
            {"p": p, "r": str(uuid.uuid4())},
        )
        race(
            catalog,
            holder,
            lambda: catalog.runs.fold_run_events([refusing(p, ["m", "n"]), refusing(q, ["m"])]),
            lambda: catalog.runs.fold_run_events([refusing(q, ["m"]), refusing(p, ["m"])]),
        )

    refusals = {
        (definition, key): state.failed_runs
        for definition in (p, q)
        for key, state in catalog.retries.states(definition, ["m", "n"]).items()
    }
    assert refusals == {(p, "m"): 2, (p, "n"): 1, (q, "m"): 2}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_single_events_fold_of_a_run_created_meanwhile_succeeds(catalog: CatalogStores):
    """A poll's fold failed and its events are folded one by one (each failure dead-letters its event): X's
    ``run.started`` is folded while another replica's fold has created X (queued) and not committed, then commits.
    The fold returns: X started, its ``started`` notifications claimed once."""
    with catalog.database.engine.connect() as other:
        other_pid = other.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        create_run(other, X)
        starts = StartClaims(kinds={"gold": STARTED}, held_until=datetime.now(UTC) + timedelta(minutes=1), earlier={})
        event = RunStarted(run_id=X, definition="gold", trigger=Trigger.SCHEDULE)
        alone = Call(lambda: catalog.runs.fold_run_event(event, starts), name="replica 1")
        alone.start()
        wait_until(lambda: bool(blocked_by(catalog, other_pid)), timeout=DEADLINE, what="the fold waiting for X")
        other.commit()
        alone.join(DEADLINE)

    assert not alone.is_alive()
    assert alone.error is None
    before, after = alone.result
    assert (before.started_at, after.started_at is not None) == (None, True)
    assert started_notifications(catalog) == sorted((X, kind) for kind, _ in STARTED)
    assert set(starts.earlier or {}) == {(X, kind) for kind, _ in STARTED}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_replicas_folding_refusals_of_a_member_refused_before_count_both(catalog: CatalogStores):
    """Member m of definitions P and Q refused once before. Replica 1 folds a run of P, then one of Q, refusing m
    while another transaction holds Q's m; replica 2 then folds another run of P refusing m. Both folds return; P's
    m counts three refusals (replica 2 read it as replica 1 left it, not as it was before both)."""
    catalog.runs.followers.append(catalog.retries)
    name = {member_state_definition(catalog, name): name for name in ("d1", "d2")}
    p, q = sorted(name)

    def refusing(definition: str) -> BatchOutcome:
        return _outcome(uuid.uuid4(), ["m"], {"m": 503}, definition=name[definition])

    catalog.runs.fold_run_events([refusing(p), refusing(q)])
    with catalog.database.engine.connect() as holder:
        holder.execute(
            sa.text("SELECT 1 FROM member_retries WHERE definition_id = :q AND member_key = 'm' FOR UPDATE"), {"q": q}
        )
        race(
            catalog,
            holder,
            lambda: catalog.runs.fold_run_events([refusing(p), refusing(q)]),
            lambda: catalog.runs.fold_run_events([refusing(p)]),
        )

    assert {definition: catalog.retries.states(definition, ["m"])["m"].failed_runs for definition in (p, q)} == {
        p: 3,
        q: 2,
    }


@pytest.mark.parametrize("before", ["new", "delivered before"])
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_delivery_folded_while_a_refusal_of_the_member_is_uncommitted_resolves_it(
    catalog: CatalogStores, before: str
):
    """Run R1 refuses member m (new, or delivered before: not open) and run R2 delivers it, folded by two replicas:
    replica 1's fold of R1 has written m's refusal and waits (another transaction holds R1's key), replica 2 folds
    R2 meanwhile (it waits too, for R2's key, or for replica 1); replica 1 commits first, then replica 2. m is
    delivered by R2, its refusal by R1 kept, as when the two folds come one after the other. Before (session 53):
    replica 2 read m's row as it was before replica 1's refusal (not open: nothing to resolve), and m stayed pending,
    to be sent again by the next run."""
    catalog.runs.followers.append(catalog.retries)
    d = member_state_definition(catalog, "d")
    if before == "delivered before":
        catalog.runs.fold_run_events([_outcome(uuid.uuid4(), ["m"], {"m": 503})])
        catalog.runs.fold_run_events([_outcome(uuid.uuid4(), ["m"], {})])
        assert catalog.retries.states(d, ["m"])["m"].state.value == "delivered"
    refused_by, delivered_by = uuid.uuid4(), uuid.uuid4()
    engine = catalog.database.engine
    with engine.connect() as holds_r1, engine.connect() as holds_r2:
        r1_holder = holds_r1.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        r2_holder = holds_r2.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        create_run(holds_r1, refused_by)  # rolled back: each run is created by its replica's fold
        create_run(holds_r2, delivered_by)
        one = Call(lambda: catalog.runs.fold_run_events([_outcome(refused_by, ["m"], {"m": 503})]), "replica 1")
        one.start()
        wait_until(lambda: bool(blocked_by(catalog, r1_holder)), timeout=DEADLINE, what="replica 1 waiting for R1")
        [one_pid] = blocked_by(catalog, r1_holder)
        two = Call(lambda: catalog.runs.fold_run_events([_outcome(delivered_by, ["m"], {})]), "replica 2")
        two.start()
        wait_until(
            lambda: bool(blocked_by(catalog, r2_holder) or blocked_by(catalog, one_pid)),
            timeout=DEADLINE,
            what="replica 2 waiting",
        )
        holds_r1.rollback()
        one.join(DEADLINE)
        assert (one.is_alive(), one.error) == (False, None)
        holds_r2.rollback()
        two.join(DEADLINE)
        assert (two.is_alive(), two.error) == (False, None)

    state = catalog.retries.states(d, ["m"])["m"]
    assert (state.state.value, state.last_run, state.status, state.failed_runs) == (
        "delivered",
        str(delivered_by),
        503,
        1,
    )
    assert catalog.retries.claim_retries(uuid.uuid4(), "d") == 0  # the next run sends m no more


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_replicas_refusing_the_same_new_member_take_one_transaction_each(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """Runs R1 and R2 refuse new member m, folded by two replicas: replica 1's fold has written m's refusal and
    waits (another transaction holds R1's key); replica 2's fold starts meanwhile and waits for replica 1. Each fold
    takes one transaction (none of the poll's FOLD_ATTEMPTS spent on the other's row: those are left to runs created
    meanwhile) and both refusals count. Before: replica 2 read no row of m, its upsert met replica 1's once
    committed (MemberCreatedMeanwhile), and it folded again: a second transaction, one of three, for a fold that
    may also meet runs created meanwhile."""
    catalog.runs.followers.append(catalog.retries)
    d = member_state_definition(catalog, "d")
    transactions: dict[str, int] = {}
    once = SqlRunsStore._fold_run_events

    def counted(self: SqlRunsStore, *args: Any) -> Any:
        name = threading.current_thread().name
        transactions[name] = transactions.get(name, 0) + 1
        return once(self, *args)

    monkeypatch.setattr(SqlRunsStore, "_fold_run_events", counted)
    first, second = uuid.uuid4(), uuid.uuid4()
    with catalog.database.engine.connect() as holder:
        holder_pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        create_run(holder, first)  # rolled back: replica 1 creates R1
        one = Call(lambda: catalog.runs.fold_run_events([_outcome(first, ["m"], {"m": 503})]), "replica 1")
        one.start()
        wait_until(lambda: bool(blocked_by(catalog, holder_pid)), timeout=DEADLINE, what="replica 1 waiting for R1")
        [one_pid] = blocked_by(catalog, holder_pid)
        two = Call(lambda: catalog.runs.fold_run_events([_outcome(second, ["m"], {"m": 503})]), "replica 2")
        two.start()
        wait_until(lambda: bool(blocked_by(catalog, one_pid)), timeout=DEADLINE, what="replica 2 waiting")
        holder.rollback()
        for call in (one, two):
            call.join(DEADLINE)
            assert (call.is_alive(), call.error) == (False, None)

    state = catalog.retries.states(d, ["m"])["m"]
    assert (state.failed_runs, state.last_run) == (2, str(second))
    assert transactions == {"replica 1": 1, "replica 2": 1}
