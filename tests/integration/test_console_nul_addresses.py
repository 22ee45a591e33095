"""A NUL character (%00) in a console address is refused with a page saying why, never a 500: the console sits
outside the API's request limits, and PostgreSQL's text cannot hold one (looked up, it was a 500 there)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.admin_app import InProcessApi, in_process_api, seed
from tests.integration.test_console_fields import signed_in

pytestmark = pytest.mark.integration


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[InProcessApi]:
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http in the test client
    with in_process_api(tmp_path, catalog_url=database_url) as made:
        with made.client() as client:
            seed(client)
        yield made


@pytest.mark.parametrize(
    "path",
    [
        "/exports/a%00b",
        "/queries/a%00b",
        "/templates/a%00b",
        "/profiles/a%00b",
        "/runs?definition=a%00b",
        "/exports/a%00b/delete",
        "/queries/a%00b/copy",
    ],
)
def test_a_nul_in_a_console_address_is_refused_with_a_reason(api: InProcessApi, path: str) -> None:
    with signed_in(api, "admin") as console:
        answer = console.client.get(f"/console{path}")
        named = console.client.get("/console/queries/gold")
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert "a NUL character (%00) is not allowed" in answer.text
    assert named.status_code == 200  # the same pages, named without one, are served
