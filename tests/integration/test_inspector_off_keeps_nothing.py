"""EXPORT_INSPECTOR_ENABLED=false keeps no attempt: those recorded while it was on (member data in their bodies)
are deleted by the dispatcher, not left for ``exportctl attempts`` and the API to serve forever (the retention was
applied only by the inspector's own flush, which does not run when it is off).

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


def test_the_purge_deletes_every_recorded_attempt_and_goes_on_deleting(catalog: CatalogStores):
    _record(catalog)
    purge = attempts_upkeep(
        inspector_of(DispatcherSettings(inspector_enabled=False), catalog.attempts), catalog.attempts
    )
    assert isinstance(purge, AttemptsPurge)
    purge.every_seconds = 0.05  # a replica still capturing (a rolling change) writes more: deleted next turn
    purge.start()
    try:
        wait_until(lambda: not _shown(catalog), timeout=10, what="the attempts deleted")
        catalog.attempts.add([attempt(4)], keep=50)
        wait_until(lambda: not _shown(catalog), timeout=10, what="the new attempt deleted")
    finally:
        purge.close()


def test_with_the_inspector_on_attempts_stay_for_the_retention(catalog: CatalogStores):
    _record(catalog)
    inspector = inspector_of(DispatcherSettings(inspector_enabled=True), catalog.attempts)
    assert isinstance(attempts_upkeep(inspector, catalog.attempts), AttemptInspector)
    assert inspector is not None
    inspector.flush()  # writes nothing, applies the 72 h retention
    assert sorted(_shown(catalog)) == [1, 2, 3]
