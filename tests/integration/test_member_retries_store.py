"""The next-run retries' store on SQLite and PostgreSQL: refusals and deliveries folded from outcomes (open members
looked up by the fold's own keys only, written by upsert), each run's fixed share of the retries (recorded even
when empty, read in chunks) and the prune of what no run needs any more."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import event, update

from shared.application.actors import local_operator
from shared.application.objects import delete_object
from shared.catalog import CatalogStores, SqlMemberRetries
from shared.catalog.database import now
from shared.catalog.member_tables import MemberRetryRow, RunRetryClaimRow
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.member_retries import MemberRetry, RetryState
from shared.events import BatchOutcome, RefusedMember
from tests.member_state_helpers import member_state_definition

pytestmark = pytest.mark.integration


def _outcome(run_id: uuid.UUID, keys: list[str], refused: dict[str, int], definition: str = "d") -> BatchOutcome:
    """A batch outcome of ``definition`` naming ``keys``, ``refused`` of them refused with their status."""
    return BatchOutcome(
        run_id=run_id,
        definition=definition,
        batch_index=0,
        delivered=len(keys) - len(refused),
        failed=len(refused),
        member_keys=keys,
        refused=[RefusedMember(key=k, status=s, reason=f"HTTP {s}", attempts=1) for k, s in refused.items()],
    )


@pytest.fixture
def d(catalog: CatalogStores) -> str:
    """Definition "d" in the catalog: its id, which keys the retries."""
    return member_state_definition(catalog, "d")


def _taken(store: SqlMemberRetries, run_id: uuid.UUID, definition: str = "d") -> list[str]:
    store.claim_retries(run_id, definition)
    return [key for chunk in store.claimed_keys(run_id) for key in chunk]


def test_refused_members_are_pending_then_resolved_by_a_later_delivery(catalog: CatalogStores, d: str):
    catalog.runs.followers.append(catalog.retries)
    first, second = uuid.uuid4(), uuid.uuid4()
    catalog.runs.fold_run_events([_outcome(first, ["1", "2", "3"], {"2": 503, "3": 422})])
    states = catalog.retries.states(d, ["1", "2", "3"])
    assert set(states) == {"2", "3"}
    assert states["2"].state is RetryState.PENDING
    assert states["3"].state is RetryState.GIVEN_UP  # invalid, and invalid_runs defaults to 0

    assert _taken(catalog.retries, second) == ["2"]
    assert _taken(catalog.retries, first) == []  # a run never takes the members it refused itself
    catalog.runs.fold_run_events([_outcome(second, ["2", "3", "4"], {})])
    states = catalog.retries.states(d, ["2", "3"])
    assert (states["2"].state, states["2"].last_run) == (RetryState.DELIVERED, str(second))
    assert (states["3"].state, states["3"].last_run) == (RetryState.DELIVERED, str(second))
    # Its share is fixed at its first start: the same after a resume, whatever became of the members.
    assert _taken(catalog.retries, second) == ["2"]


def test_an_empty_claim_is_recorded_so_a_resume_never_claims_members_refused_since(catalog: CatalogStores, d: str):
    catalog.runs.followers.append(catalog.retries)
    run = uuid.uuid4()
    assert catalog.retries.claim_retries(run, "d") == 0  # nothing pending at the run's start
    catalog.runs.fold_run_events([_outcome(uuid.uuid4(), ["5"], {"5": 503})])  # another run refuses 5 meanwhile
    assert catalog.retries.claim_retries(run, "d") == 0  # the resume (or the run's end) reads the same share
    assert catalog.retries.claimed(run) == 0
    assert list(catalog.retries.claimed_keys(run)) == []
    assert catalog.retries.claimed(uuid.uuid4()) == 0  # a run that never claimed: none


def test_a_claim_is_read_in_chunks_in_key_order(catalog: CatalogStores, d: str):
    catalog.runs.followers.append(catalog.retries)
    keys = [f"m{i:02}" for i in range(7)]
    catalog.runs.fold_run_events([_outcome(uuid.uuid4(), keys, dict.fromkeys(keys, 503))])
    run = uuid.uuid4()
    assert catalog.retries.claim_retries(run, "d") == 7
    assert list(catalog.retries.claimed_keys(run, chunk=3)) == [keys[0:3], keys[3:6], keys[6:]]


@pytest.fixture
def statements(catalog: CatalogStores) -> Iterator[list[tuple[str, list[object]]]]:
    """The SQL the catalog runs while the test goes on, each with its parameters' values."""
    seen: list[tuple[str, list[object]]] = []
    engine = catalog.database.engine

    def record(*args: object) -> None:
        parameters = args[3]
        values = list(parameters.values()) if isinstance(parameters, dict) else list(parameters or ())  # type: ignore[call-overload]
        seen.append((str(args[2]), values))

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_a_fold_looks_up_only_its_own_keys_among_the_open_members(
    catalog: CatalogStores, d: str, statements: list[tuple[str, list[object]]]
):
    catalog.runs.followers.append(catalog.retries)
    many = [str(i) for i in range(40)]
    catalog.runs.fold_run_events([_outcome(uuid.uuid4(), many, dict.fromkeys(many, 503))])
    statements.clear()
    later = uuid.uuid4()
    catalog.runs.fold_run_events([_outcome(later, ["3", "999"], {})])
    assert catalog.retries.states(d, ["3"])["3"].state is RetryState.DELIVERED
    reads = [(s, v) for s, v in statements if s.lstrip().upper().startswith("SELECT") and "member_retries" in s]
    # The 40 open members are more than the fold's 2 keys: at most 3 of them read at once (to learn that),
    # then the fold's own keys looked up; never the definition's whole open set.
    assert reads
    for sql, values in reads:
        assert "member_key IN" in sql or max(v for v in values if isinstance(v, int)) <= 3, (sql, values)


def test_two_folds_refusing_the_same_new_member_both_succeed(
    catalog: CatalogStores, d: str, monkeypatch: pytest.MonkeyPatch, database_url: str
):
    """A fold that read no row for a member another fold has written since (replicas, overlapping runs): no unique
    violation, and both refusals counted (PostgreSQL: the fold is done again, reading the rows)."""
    catalog.runs.followers.append(catalog.retries)
    catalog.runs.fold_run_events([_outcome(uuid.uuid4(), ["k", "a"], {"k": 503, "a": 503})])
    reads: Iterator[Callable[..., dict[str, MemberRetry]]] = iter([lambda session, definition, keys: {}])
    current = SqlMemberRetries._current
    monkeypatch.setattr(SqlMemberRetries, "_current", staticmethod(lambda *args: next(reads, current)(*args)))
    second = uuid.uuid4()
    catalog.runs.fold_run_events([_outcome(second, ["a", "k"], {"k": 500, "a": 502})])  # no unique violation
    states = catalog.retries.states(d, ["k", "a"])
    assert (states["k"].status, states["k"].last_run) == (500, str(second))
    assert (states["a"].status, states["a"].last_run) == (502, str(second))
    assert (states["k"].failed_runs, states["a"].failed_runs) == (2, 2) or "sqlite" in database_url


def test_the_prune_drops_resolved_members_and_old_claims_in_bounded_batches(catalog: CatalogStores, d: str):
    catalog.runs.followers.append(catalog.retries)
    keys = [str(i) for i in range(5)]
    catalog.runs.fold_run_events([_outcome(uuid.uuid4(), keys, dict.fromkeys(keys, 503))])
    old_run, new_run = uuid.uuid4(), uuid.uuid4()
    assert catalog.retries.claim_retries(old_run, "d") == 5
    catalog.runs.fold_run_events([_outcome(old_run, ["0", "1", "2"], {})])  # delivered: resolved
    assert catalog.retries.claim_retries(new_run, "d") == 2
    aged = now() - timedelta(days=8)
    with catalog.database.transaction() as session:
        session.execute(update(MemberRetryRow).values(updated_at=aged))
        session.execute(update(RunRetryClaimRow).where(RunRetryClaimRow.run_id == str(old_run)).values(claimed_at=aged))
    # 3 resolved members (2 deletes of 2), the old run's 5 keys and its claim (3 deletes of 2): pending ones stay.
    assert catalog.retries.prune(7, batch=2) == 3 + 5 + 1
    assert set(catalog.retries.states(d, keys)) == {"3", "4"}
    assert catalog.retries.claimed(old_run) == 0
    assert list(catalog.retries.claimed_keys(old_run)) == []
    assert catalog.retries.claimed(new_run) == 2  # recent: kept
    assert catalog.retries.prune(7, batch=2) == 0


def test_a_namesake_re_created_sees_nothing_of_the_deleted_definitions_members(catalog: CatalogStores, d: str):
    catalog.runs.followers.extend([catalog.retries, catalog.deliveries])
    catalog.runs.fold_run_events([_outcome(uuid.uuid4(), ["1", "2"], {"2": 503})])
    assert catalog.deliveries.last_delivery(d, "1") is not None
    delete_object(local_operator("ops"), ExportDefinition, "d", store=catalog.definitions)
    again = member_state_definition(catalog, "d")  # another partner's, say, under the same name
    assert again != d
    assert catalog.retries.states(again, ["2"]) == {}
    assert catalog.deliveries.last_delivery(again, "1") is None
    assert catalog.retries.claim_retries(uuid.uuid4(), "d") == 0  # the old one's pending member is not its
    # The old one's retries are orphans: the sweep's prune drops them, pending or not.
    assert catalog.retries.prune() == 1
    assert catalog.retries.states(d, ["2"]) == {}
