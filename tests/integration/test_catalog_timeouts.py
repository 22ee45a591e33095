"""A timeout an operator set on the catalog's PostgreSQL database (``lock_timeout``, ``statement_timeout``) ending a
write that waits behind another is a 503 saying the catalog timed out, nothing written (before: a 500 "unexpected
error"), through the real admin app over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.admin_app import in_process_api, seed
from tests.integration.test_if_match import QUERY

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("setting", ["lock_timeout", "statement_timeout"])
def test_a_write_waiting_past_the_catalogs_timeout_is_a_503_naming_the_timeout_and_writes_nothing(
    tmp_path: Path, postgres_database_factory: Callable[[], str], setting: str
):
    url = postgres_database_factory()
    other = create_engine(url)
    with other.connect() as connection:
        database = connection.execute(text("SELECT current_database()")).scalar_one()
        connection.execute(text(f"ALTER DATABASE \"{database}\" SET {setting} = '300ms'"))
        connection.commit()
    try:
        with in_process_api(tmp_path, catalog_url=url) as api, api.client() as client:
            seed(client)
            body = client.get(QUERY).json()
            with other.connect() as holder:  # another writer's open transaction holds the row
                holder.execute(text("SET lock_timeout = 0; SET statement_timeout = 0"))
                holder.execute(
                    text("SELECT id FROM catalog_objects WHERE kind = 'SavedQuery' AND name = 'gold' FOR UPDATE")
                )
                answer = client.put(QUERY, json=body | {"label": "waits"})
                holder.rollback()
            assert answer.status_code == 503, answer.text
            assert answer.json()["type"].endswith("/catalog-timed-out")
            assert "SavedQuery 'gold': the catalog database timed out" in answer.json()["detail"]
            assert client.get(QUERY).json().get("label") != "waits"
    finally:
        other.dispose()


def test_exportctl_on_the_catalog_directly_exits_5_with_the_reason_when_the_catalog_timed_out(tmp_path: Path):
    from shared.catalog import CatalogStores
    from shared.cli.common import CliSettings
    from shared.cli.direct import Direct, on_catalog
    from shared.cli.exits import UNREACHABLE, CliError
    from shared.errors import CatalogTimedOut

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    CatalogStores.from_url(url, migrate=True).close()

    def timed_out(_: Direct) -> int:
        raise CatalogTimedOut("SavedQuery", "gold", "55P03")

    with pytest.raises(CliError) as refused:
        on_catalog(CliSettings(catalog_url=url), timed_out)
    assert refused.value.code == UNREACHABLE
    assert "SavedQuery 'gold': the catalog database timed out (SQLSTATE 55P03" in str(refused.value)
