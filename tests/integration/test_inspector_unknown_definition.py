"""The attempt inspector keeps a batch whose definition the catalog does not have (a made-up or stale name from the
topic, up to the topic's size) under ``(unknown)``, as the metrics count it: never the name as it came, which no one
saved. Before, the name was kept whole: on SQLite a 20,000-character row no reader selects; on PostgreSQL (a column of
100 characters) the flush failed and the attempts of every definition in it were lost, a real one's with them. The
real dispatcher, inspector and catalog (SQLite and PostgreSQL), a real HTTP partner."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from devtools.http_receiver import HttpReceiver
from services.dispatcher.delivery import RetryBudget
from services.dispatcher.inspector import AttemptInspector
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import MemberBatch
from shared.topics import Topics
from tests.dispatcher_helpers import blocking_dispatcher, http_on_loop

pytestmark = pytest.mark.integration

QUICK = RetryBudget(max_attempts=1, max_seconds=5, initial_backoff=0.01, max_backoff=0.02)
MADE_UP = "forged-" + "x" * 20_000


def test_a_batch_of_a_definition_the_catalog_does_not_have_is_inspected_as_unknown(
    database_url: str, migrated_catalog: Callable[[str], CatalogStores]
):
    catalog = migrated_catalog(database_url)
    try:
        with HttpReceiver() as partner, http_on_loop() as http:
            for obj in (
                SavedQuery(name="q", sql="select 1 as id"),
                ConnectionProfile(name="p", base_url=partner.url),
                HttpTemplate(name="t", query="q", profile="p", path="/members"),
                ExportDefinition(name="d", query="q", template="t"),
            ):
                catalog.definitions.apply(obj)
            inspector = AttemptInspector(catalog.attempts, success_sample=1.0)
            dispatcher = blocking_dispatcher(catalog, http, QUICK, Topics("x."), inspector=inspector)
            for definition in ("d", MADE_UP):
                dispatcher.handle(
                    MemberBatch(
                        run_id=uuid.uuid4(), definition=definition, template="t", batch_index=0, members=[{"id": 1}]
                    )
                )
            assert len(partner.state.receipts) == 2  # both sent: the inspector only shows them
            assert inspector.flush() == 2
        definition_id, _, _ = catalog.definitions.get_versioned(ExportDefinition, "d")
        [attempt] = catalog.attempts.attempts(definition_id)  # the real definition's attempt, kept
        assert attempt.definition == "d"
        with catalog.definitions.database.engine.connect() as connection:
            kept = sorted(connection.execute(sa.text("SELECT definition FROM attempts")).scalars())
        assert kept == ["(unknown)", "d"]
    finally:
        catalog.close()
