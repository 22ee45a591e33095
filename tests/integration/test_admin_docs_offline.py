"""The admin API as a real server process: its Swagger UI and ReDoc pages load nothing from outside the API
(an air-gapped cluster sees them whole), and its liveness does not depend on the catalog (a database outage
makes the pods unready, never restarts them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import sqlalchemy as sa

from devtools.processes import wait_until
from tests.admin_server import AdminServer, admin_server

pytestmark = pytest.mark.integration

#: Every URL a page names: src/href attributes, Swagger UI's `url:` and ReDoc's `spec-url`.
URL_IN_PAGE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.fixture(scope="module")
def catalog_url(postgres_database_factory: Callable[[], str]) -> str:
    return postgres_database_factory()


@pytest.fixture(scope="module")
def server(kafka_bootstrap: str, catalog_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminServer]:
    with admin_server(tmp_path_factory.mktemp("admin-docs"), catalog_url, kafka_bootstrap) as running:
        yield running


def _urls(page: str) -> list[str]:
    return [a or b for a, b in URL_IN_PAGE.findall(page)]


@pytest.mark.parametrize(("page", "must_load"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_the_docs_pages_load_only_assets_the_api_serves_itself(server: AdminServer, page: str, must_load: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:  # no token: the docs are public like the spec
        answer = anonymous.get(page)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/html")
        urls = _urls(answer.text)
        assert any(url.endswith(must_load) for url in urls), urls
        assert "/openapi.json" in urls
        for url in urls:
            parts = urlsplit(url)
            assert not parts.scheme, f"{page} loads {url} from outside the API"
            assert not parts.netloc, f"{page} loads {url} from outside the API"
            fetched = anonymous.get(urljoin(server.url + page, url))
            assert fetched.status_code == 200, url
            expected = CONTENT_TYPES[Path(parts.path).suffix]
            assert fetched.headers["content-type"].startswith(expected), (url, fetched.headers["content-type"])
            assert len(fetched.content) > 1000, url  # the real bundle, not an empty answer
        # Nothing on the page points at a CDN or a font service, even outside src/href.
        assert "cdn." not in answer.text
        assert "fonts.googleapis" not in answer.text


def test_an_unknown_asset_is_a_404_and_the_package_is_not_browsable(server: AdminServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        assert anonymous.get("/docs/assets/core.py").status_code == 404
        assert anonymous.get("/docs/assets/..%2F__init__.py").status_code == 404


def test_liveness_answers_through_a_catalog_outage_and_readiness_does_not(
    server: AdminServer, catalog_url: str
) -> None:
    """The chart's probes: liveness /livez, readiness /healthz. The catalog refuses connections (its database
    closed to them, the open ones ended): the pod must go unready, not be restarted; then come back."""
    url = sa.make_url(catalog_url)
    database = url.database
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def outage(on: bool) -> None:
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"false" if on else "true"}'))
            if on:
                connection.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                    {"name": database},
                )

    def status(path: str) -> int:
        return httpx.get(f"{server.url}{path}", timeout=10).status_code

    try:
        assert (status("/livez"), status("/healthz")) == (200, 200)
        outage(True)
        wait_until(lambda: status("/healthz") != 200, timeout=30, what="readiness to fail during the outage")
        assert status("/livez") == 200
        outage(False)
        wait_until(lambda: status("/healthz") == 200, timeout=30, what="readiness back after the outage")
    finally:
        outage(False)
        admin.dispose()
