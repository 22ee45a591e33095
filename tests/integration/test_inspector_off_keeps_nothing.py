"""EXPORT_INSPECTOR_ENABLED=false keeps no attempt: those recorded while it was on (member data in their bodies)
are deleted by the dispatcher, not left for ``exportctl attempts`` and the API to serve forever (the retention was
applied only by the inspector's own flush, which does not run when it is off). A replica still off during a rolling
change that turns the inspector on does not delete what the new replicas record.

A real dispatcher process on real Kafka (SQLite catalog), and the purge itself on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devtools.pipeline import LocalPipeline
from devtools.processes import wait_until
from services.dispatcher.inspector import AttemptInspector, AttemptsPurge, attempts_upkeep, inspector_of
from services.dispatcher.settings import DispatcherSettings
from shared.application.actors import Actor, Role
from shared.application.attempts import read_attempts
from shared.catalog import CatalogStores
from tests.integration.test_attempts_store import attempt, define
from tests.kafka_helpers import service_env

pytestmark = pytest.mark.integration

OPERATOR = Actor(name="operator", role=Role.OPERATOR)


def _shown(catalog: CatalogStores, definition: str = "d") -> list[int]:
    """The batch indexes of the attempts ``exportctl attempts`` and the API would show."""
    found = read_attempts(OPERATOR, definition, store=catalog.definitions, attempts=catalog.attempts)
    return [a.batch_index for a in found]


def _record(catalog: CatalogStores) -> None:
    define(catalog, "d")
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)  # well within the 72 h retention
    catalog.attempts.add([attempt(1, at=an_hour_ago), attempt(2, status=503, at=an_hour_ago), attempt(3)], keep=50)
    assert sorted(_shown(catalog)) == [1, 2, 3]


def test_a_dispatcher_started_with_the_inspector_off_deletes_the_attempts_recorded_before(
    kafka_bootstrap: str, tmp_path: Path, migrated_catalog: Callable[[str], CatalogStores]
):
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = migrated_catalog(catalog_url)
    try:
        _record(catalog)
        env = service_env(kafka_bootstrap, f"s{uuid.uuid4().hex[:10]}.", catalog_url, f"sqlite:///{tmp_path / 'm.db'}")
        env["EXPORT_INSPECTOR_ENABLED"] = "false"
        pipeline = LocalPipeline(env=env, log_dir=tmp_path, services=("dispatcher",))
        pipeline.start()
        try:
            wait_until(lambda: bool(pipeline.dead()) or not _shown(catalog), timeout=60, what="the attempts deleted")
            assert not pipeline.dead(), pipeline.log("dispatcher")[-3000:]
        finally:
            codes = pipeline.stop()
        assert codes == {"dispatcher": 0}
        assert _shown(catalog) == []
    finally:
        catalog.close()


def _purge(catalog: CatalogStores, retention_hours: float = 72.0) -> AttemptsPurge:
    """The upkeep a dispatcher with the inspector off starts (now: its start)."""
    off = DispatcherSettings(inspector_enabled=False, inspector_retention_hours=retention_hours)
    purge = attempts_upkeep(off, inspector_of(off, catalog.attempts), catalog.attempts)
    assert isinstance(purge, AttemptsPurge)
    return purge


def test_the_purge_deletes_the_attempts_recorded_before_and_goes_on_deleting_late_writes(catalog: CatalogStores):
    _record(catalog)
    purge = _purge(catalog)
    purge.every_seconds = 0.05
    purge.start()
    try:
        wait_until(lambda: not _shown(catalog), timeout=10, what="the attempts deleted")
        # An old replica's last flush during a change that turns the inspector off: captured before this replica
        # started, written after. Beside it, an attempt captured now by a replica that is on.
        before_start = purge.started - timedelta(seconds=1)
        catalog.attempts.add([attempt(4, at=before_start), attempt(5)], keep=50)
        wait_until(lambda: _shown(catalog) == [5], timeout=10, what="the late attempt deleted")
    finally:
        purge.close()


def test_a_replica_still_off_keeps_what_a_replica_turned_on_records_after_it_started(catalog: CatalogStores):
    """A rolling change turning the inspector on: the old replicas (off) run beside the new ones until they are
    replaced. Before, each deleted every attempt at each turn, the new replicas' too (attempt 4 went)."""
    _record(catalog)
    purge = _purge(catalog)
    assert purge.purge() == 3
    catalog.attempts.add([attempt(4), attempt(5, status=503)], keep=50)  # the new replicas capture them now
    assert purge.purge() == 0
    assert sorted(_shown(catalog)) == [4, 5]


def test_a_replica_off_for_longer_than_the_retention_deletes_attempts_older_than_it(catalog: CatalogStores):
    """What old replicas captured after the last new one started (a change turning the inspector off) goes with the
    retention, as it would have with the inspector on, and not later (nothing else prunes with it off)."""
    define(catalog, "d")
    now = datetime.now(UTC)
    purge = _purge(catalog, retention_hours=2)
    purge.started = now - timedelta(hours=5)  # a replica off for 5 h
    catalog.attempts.add([attempt(1, at=now - timedelta(hours=3)), attempt(2, at=now - timedelta(hours=1))], keep=50)
    assert purge.purge() == 1
    assert _shown(catalog) == [2]


def test_with_the_inspector_on_attempts_stay_for_the_retention(catalog: CatalogStores):
    _record(catalog)
    on = DispatcherSettings(inspector_enabled=True)
    inspector = inspector_of(on, catalog.attempts)
    assert isinstance(attempts_upkeep(on, inspector, catalog.attempts), AttemptInspector)
    assert inspector is not None
    inspector.flush()  # writes nothing, applies the 72 h retention
    assert sorted(_shown(catalog)) == [1, 2, 3]
