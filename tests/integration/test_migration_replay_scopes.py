"""Migration 0018 (replay runs in the scope of the run they replay) on SQLite and PostgreSQL, on a catalog with data:
a replay run recorded without a business unit and definition id (as ``replay_dead_letters`` recorded them before)
gets the replayed run's, a replay of such a replay too, however long the chain (27 deep here; before: 20 links on
PostgreSQL, on SQLite depending on the column); a run that is no replay, or a replay of a run with no scope, keeps
none; every other row is as it was; a downgrade keeps them."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from shared.catalog.schema import BASELINE, current_revision, downgrade, upgrade
from tests.integration.test_migrations import (
    EXPECTED_SCOPES,
    NIGHTLY_ID,
    RUN_NIGHTLY,
    RUN_OF_DELETED,
    T0,
    _run,
    _tables,
    engine,
    fill_baseline,
    run_scopes,
    snapshot,
)

pytestmark = pytest.mark.integration

__all__ = ["engine"]  # the migrations' tests' fixture: an engine on the (empty) database

REPLAY, REPLAY_OF_REPLAY, REPLAY_OF_UNSCOPED = (str(uuid.uuid4()) for _ in range(3))
#: Replays of replays of ``REPLAY_OF_REPLAY``, each of the one before: deeper than the 20 passes 0018 once made.
CHAIN = [str(uuid.uuid4()) for _ in range(25)]


def _replay(run_id: str, of: str) -> dict[str, object]:
    """A replay run as 0017's code recorded it: queued, no business unit, no definition id."""
    return _run(
        run_id,
        "nightly",
        trigger="replay",
        replay_of=of,
        status="queued",
        started_at=None,
        extraction_complete=False,
        finished_at=None,
        terminal_status=None,
        last_event_at=T0 + timedelta(hours=1),
    )


def test_0018_gives_replay_runs_the_scope_of_the_run_they_replay(engine: Engine) -> None:
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine, "0017")
    runs = _tables(engine).tables["runs"]
    with engine.begin() as connection:
        connection.execute(
            sa.insert(runs),
            [
                _replay(REPLAY, RUN_NIGHTLY),
                _replay(REPLAY_OF_REPLAY, REPLAY),
                _replay(REPLAY_OF_UNSCOPED, RUN_OF_DELETED),
                # Deepest first: a statement that sees the rows it has updated (SQLite) fills one link a pass too.
                *(
                    _replay(run_id, of)
                    for run_id, of in reversed(list(zip(CHAIN, [REPLAY_OF_REPLAY, *CHAIN[:-1]], strict=True)))
                ),
            ],
        )
    before, scopes = snapshot(engine), run_scopes(engine)
    assert scopes[REPLAY] == scopes[REPLAY_OF_REPLAY] == (None, None)  # what a scoped token could not see

    upgrade(engine, "0018")

    assert snapshot(engine) == before
    assert run_scopes(engine) == EXPECTED_SCOPES | {
        REPLAY: (NIGHTLY_ID, "france"),
        REPLAY_OF_REPLAY: (NIGHTLY_ID, "france"),
        REPLAY_OF_UNSCOPED: (None, None),
    } | dict.fromkeys(CHAIN, (NIGHTLY_ID, "france"))  # before: links 19-25 (PostgreSQL) or 20-25 left without
    upgrade(engine)  # up to date: nothing more

    downgrade(engine, "0017")
    assert current_revision(engine) == "0017"
    assert snapshot(engine) == before
    assert run_scopes(engine)[REPLAY] == (NIGHTLY_ID, "france")
    upgrade(engine)
    assert current_revision(engine) != "0017"
