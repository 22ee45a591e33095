"""Issue 17 through the admin API: a profile's client key and proxy password are answered masked and kept when
the masked answer is sent back; TLS and proxy settings and non-JSON templates are refused naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile
from tests.admin_server import AdminServer, admin_server
from tests.partner_tls import TlsMaterial, partner_tls_material

pytestmark = pytest.mark.integration
PROXY_PASSWORD = "adm1n-pr0xy-s3cret"


@pytest.fixture
def admin(tmp_path: Path, kafka_bootstrap: str) -> Iterator[AdminServer]:
    with admin_server(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}", kafka_bootstrap) as server:
        yield server


@pytest.fixture
def material(tmp_path: Path) -> TlsMaterial:
    return partner_tls_material(tmp_path / "tls")


def test_the_client_key_and_proxy_password_are_masked_and_kept_when_the_answer_is_sent_back(admin, material):
    key = material.client.key.read_text()
    spec: dict[str, Any] = {
        "base_url": "https://partner.example.com/v2",
        "tls": {
            "ca_bundle": material.ca.read_text(),
            "client_certificate": material.client.certificate.read_text(),
            "client_key": key,
            "min_version": "TLS1.3",
        },
        "proxy": {"url": "http://127.0.0.1:3128", "username": "exporter", "password": PROXY_PASSWORD},
    }
    with admin.client() as api:
        created = api.post("/api/v1/connection-profiles", json={"label": "Mutual TLS partner", **spec})
        assert created.status_code == 201, created.text
        name = created.json()["name"]
        read = api.get(f"/api/v1/connection-profiles/{name}")
        answered = read.json()
        assert answered["tls"]["client_key"] == "**********"
        assert answered["proxy"]["password"] == "**********"
        assert answered["tls"]["client_certificate"] == spec["tls"]["client_certificate"]
        updated = api.put(f"/api/v1/connection-profiles/{name}", json={**answered, "timeout_seconds": 5})
        assert updated.status_code == 200, updated.text
        texts = [created.text, read.text, updated.text, admin.log()]
    for text in texts:
        assert PROXY_PASSWORD not in text
        assert key.splitlines()[1] not in text
    catalog = CatalogStores.from_url(admin.catalog_url)
    stored = catalog.definitions.get(ConnectionProfile, name)
    catalog.close()
    assert stored.tls is not None
    assert stored.proxy is not None
    assert stored.tls.client_key is not None
    assert stored.proxy.password is not None
    assert stored.tls.client_key.get_secret_value() == key
    assert stored.proxy.password.get_secret_value() == PROXY_PASSWORD
    assert stored.timeout_seconds == 5


def test_a_loopback_proxy_not_allowed_and_an_unreadable_ca_are_refused_naming_the_fields(tmp_path, kafka_bootstrap):
    broken_ca = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with admin_server(tmp_path, catalog_url, kafka_bootstrap, allowed_destinations="") as admin, admin.client() as api:
        refused = api.post(
            "/api/v1/connection-profiles",
            json={
                "label": "Behind a proxy",
                "base_url": "https://partner.example.com/v2",
                "tls": {"ca_bundle": broken_ca},
                "proxy": {"url": "http://127.0.0.1:3128"},
            },
        )
    assert refused.status_code == 422, refused.text
    problems = str(refused.json())
    assert "field 'proxy.url': destination 127.0.0.1 (127.0.0.1) is a loopback address" in problems
    assert "EXPORT_ALLOWED_PROXIES" in problems
    assert "field 'tls.ca_bundle': not PEM certificate(s) that can be read" in problems
