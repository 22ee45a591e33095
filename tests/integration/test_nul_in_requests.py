"""A NUL character in a path segment or a query value is refused (422, problem details naming the parameter) before
any store reads it: PostgreSQL refuses NUL in text, so each of these was a 500 there (and a 404 or 200 on SQLite).
The real app, in process, over SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.admin_app import InProcessApi, in_process_api, seed


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[InProcessApi]:
    with in_process_api(tmp_path, catalog_url=database_url) as api, api.client() as client:
        seed(client)  # "nightly" exists: its attempts and members are looked up
        yield api


@pytest.mark.parametrize(
    ("method", "url", "named"),
    [
        ("GET", "/api/v1/export-definitions/a%00b", "path"),
        ("GET", "/api/v1/saved-queries/a%00b", "path"),
        ("GET", "/api/v1/export-definitions/nightly/members/a%00b/deliveries", "path"),
        ("GET", "/api/v1/audit?object=a%00b", "query parameter 'object'"),
        ("GET", "/api/v1/audit?actor=a%00b", "query parameter 'actor'"),
        ("GET", "/api/v1/runs?definition=a%00b", "query parameter 'definition'"),
        ("GET", "/api/v1/export-definitions/nightly/attempts?profile=a%00b", "query parameter 'profile'"),
        ("POST", "/api/v1/export-definitions/a%00b/copy", "path"),
        ("DELETE", "/api/v1/export-definitions/a%00b", "path"),
    ],
)
def test_a_nul_in_a_path_or_query_value_is_refused_naming_it(api: InProcessApi, method: str, url: str, named: str):
    with api.client() as client:
        answer = client.request(method, url)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"].startswith(f"{named}: a NUL character (%00) is not allowed")
