"""The definition page's business-unit suggestions name only the units the signed-in token sees (as the Exports list
does): before, a token scoped to one unit was told every unit's name. The real app, in process."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.admin_app import InProcessApi, in_process_api, seed


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessApi]:
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http in the test client
    with in_process_api(tmp_path) as api, api.client() as client:
        seed(client)  # a definition of unit emea
        other = {"name": "apacdef", "business_unit": "apac", "query": "gold", "template": "upsert"}
        assert client.post("/api/v1/export-definitions", json=other).status_code == 201
        yield api


def suggested_units(api: InProcessApi, who: str) -> list[str]:
    with api.client(None) as browser:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/console/sign-in").text)
        assert csrf is not None
        signed = browser.post(
            "/console/sign-in", data={"csrf_token": csrf.group(1), "token": api.tokens[who]}, follow_redirects=False
        )
        assert signed.status_code == 303, signed.text
        page = browser.get("/console/exports/new")
        assert page.status_code == 200, page.text
        listed = re.search(r'<datalist id="business-units">(.*?)</datalist>', page.text)
        assert listed is not None
        return re.findall(r'<option value="([^"]*)">', listed.group(1))


def test_a_scoped_token_is_suggested_its_own_units_only_and_an_unscoped_one_every_unit(api: InProcessApi):
    assert suggested_units(api, "emea-admin") == ["emea"]
    assert suggested_units(api, "admin") == ["apac", "emea"]
