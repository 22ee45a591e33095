"""The integration tests' own infrastructure beside the session's (``tests/conftest.py``): a broker they freeze."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.kafka_broker import LocalKafka
from shared.catalog import CatalogStores
from tests.admin_app import InProcessApi, seeded_api
from tests.kafka_helpers import produce

#: The topic a frozen broker's health is proven on between tests.
_HEALTH_TOPIC = "freezable-broker-health"


@pytest.fixture(scope="package")
def _freezable_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    with LocalKafka(tmp_path_factory.mktemp("freezable-kafka")) as broker:
        yield broker
        broker.kill()  # its data is thrown away: no controlled shutdown


@pytest.fixture
def freezable_broker(_freezable_broker: LocalKafka) -> Iterator[LocalKafka]:
    """A broker of the integration tests' own, not the session's, for a test that freezes it (``pause()``: SIGSTOP,
    it holds its connections and answers nothing). One for all of them (a broker's start is ~3.5 s of each test):
    resumed after each test and proven to acknowledge a record again before the next one gets it. Tests isolate
    themselves on it as on the session's broker, by a topic prefix of their own."""
    broker = _freezable_broker
    # Healthy: a record acknowledged (within 30 s, else the helper raises and the test errors in its setup).
    produce(broker.bootstrap_servers, _HEALTH_TOPIC, [("k", uuid.uuid4().bytes)])
    try:
        yield broker
    finally:
        broker.resume()  # a test's failure between its pause() and its resume() leaves it frozen otherwise


@pytest.fixture
def seeded_admin_api(
    tmp_path: Path,
    database_url: str,
    migrated_catalog: Callable[[str], CatalogStores],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[InProcessApi]:
    """The in-process admin API on ``database_url`` (SQLite and PostgreSQL) holding the seed's objects
    (:func:`tests.admin_app.seeded_api`), its console's cookies without Secure (plain http in the test client)."""
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")
    with seeded_api(tmp_path, database_url, migrated_catalog) as api:
        yield api
