"""The RETRY column of ``exportctl dead-letters list``: read through the application layer (the actor's scope,
a definition gone said as no cell), from the member keys alone."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.application.actors import Actor, Role
from shared.application.dead_letter_listing import member_keys
from shared.application.dead_letter_retries import dead_letter_key_column, dead_letter_retries
from shared.application.errors import Forbidden, Missing
from shared.catalog import CatalogStores
from shared.cli.dead_letter_retries import RetryLookup
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import BatchOutcome, RefusedMember


@pytest.fixture
def catalog_url(tmp_path: Path, migrated_catalog: Callable[[str], CatalogStores]) -> str:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    stores = migrated_catalog(url)
    stores.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    stores.definitions.apply(SavedQuery(name="q", sql="SELECT code FROM priced", key_column="code"))
    stores.definitions.apply(HttpTemplate(name="t", query="q", profile="p"))
    stores.definitions.apply(ExportDefinition(name="d", query="q", template="t", business_unit="north"))
    refused = [RefusedMember(key="1042", status=503, reason="HTTP 503", attempts=1)]
    outcome = BatchOutcome(
        run_id=uuid.uuid4(), definition="d", batch_index=0, delivered=1, failed=1, member_keys=["1042", "7"]
    )
    with stores.database.transaction() as session:
        stores.retries.follow(session, [outcome.model_copy(update={"refused": refused})])
    stores.close()
    return url


def test_the_retry_cells_come_from_the_member_keys_through_the_application_layer(catalog_url: str):
    lookup = RetryLookup(catalog_url)
    try:
        cells = lookup.cells
        assert cells is not None
        column = cells.key_column("d")
        assert column == "code"
        keys = member_keys([{"code": 1042, "name": "x"}, {"code": 7.5}], column)  # as the letters' JSON holds them
        assert keys == ["1042", "7.5"]
        assert cells.key_column("deleted-since") is None  # a definition gone: no cell, never an error
        group = (None, None, "d", "HTTP 503")
        assert cells.cells("deleted-since", {group: ["1"]}) == {}
        assert cells.cells("d", {group: keys}) == {group: "1 no retry, 1 pending retry"}
    finally:
        lookup.close()


def test_a_scoped_actor_reads_only_its_own_business_units_retries(catalog_url: str):
    stores = CatalogStores.from_url(catalog_url)
    south = Actor(name="s", role=Role.VIEWER, business_units=frozenset({"south"}))
    north = Actor(name="n", role=Role.VIEWER, business_units=frozenset({"north"}))
    try:
        with pytest.raises(Forbidden):
            dead_letter_retries(south, "d", ["1042"], store=stores.definitions, retries=stores.retries)
        with pytest.raises(Forbidden):
            dead_letter_key_column(south, "d", store=stores.definitions)
        with pytest.raises(Missing):
            dead_letter_key_column(north, "nope", store=stores.definitions)
        assert set(dead_letter_retries(north, "d", ["1042"], store=stores.definitions, retries=stores.retries)) == {
            "1042"
        }
    finally:
        stores.close()
