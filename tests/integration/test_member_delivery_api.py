"""GET /export-definitions/{name}/members/{key}/deliveries in process: the answer's shape, a key with a slash,
and the refusals (an unknown definition or key, an overlong key, no token)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.catalog import CatalogStores
from shared.events import BatchOutcome, RefusedMember
from tests.admin_app import InProcessApi, in_process_api, seed

pytestmark = pytest.mark.integration

URL = "/api/v1/export-definitions/nightly/members/{key}/deliveries"
RUN = uuid.uuid4()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApi]:
    directory: Path = tmp_path_factory.mktemp("deliveries")
    with in_process_api(directory) as in_process, in_process.client() as client:
        seed(client)
        catalog = CatalogStores.from_url(f"sqlite:///{directory / 'catalog.db'}")
        catalog.runs.followers.extend([catalog.retries, catalog.deliveries])
        refused = RefusedMember(key="a/2", status=503, reason="HTTP 503: try later", attempts=4)
        catalog.runs.fold_run_events(
            [
                BatchOutcome(
                    run_id=RUN,
                    definition="nightly",
                    batch_index=3,
                    delivered=1,
                    failed=1,
                    attempts=2,
                    member_keys=["a/1", "a/2"],
                    refused=[refused],
                )
            ]
        )
        catalog.close()
        yield in_process


def test_a_members_last_delivery_and_retry_state(api: InProcessApi):
    with api.client("viewer") as viewer:
        failed = viewer.get(URL.format(key="a/2"))
        delivered = viewer.get(URL.format(key="a%2F1"))
    assert failed.status_code == 200, failed.text
    body = failed.json()
    assert body["definition"] == "nightly"
    assert body["key"] == "a/2"
    assert body["last"] | {"at": None} == {
        "outcome": "failed",
        "run_id": str(RUN),
        "batch_index": 3,
        "at": None,
        "attempts": 4,
        "status": 503,
        "reason": "HTTP 503: try later",
        "retry": False,
    }
    assert body["retry"]["state"] == "pending"
    assert body["retry"]["kind"] == "retryable"
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["last"]["outcome"] == "delivered"
    assert delivered.json()["last"]["attempts"] == 2
    assert delivered.json()["retry"] is None


def test_refusals_name_what_is_wrong(api: InProcessApi):
    with api.client("viewer") as viewer, api.client(None) as anonymous:
        unknown_key = viewer.get(URL.format(key="nobody"))
        unknown_definition = viewer.get("/api/v1/export-definitions/nope/members/1/deliveries")
        overlong = viewer.get(URL.format(key="k" * 501))
        no_token = anonymous.get(URL.format(key="a/1"))
    assert unknown_key.status_code == 404
    assert "holds no delivery of member 'nobody'" in unknown_key.json()["detail"]
    assert unknown_definition.status_code == 404
    assert overlong.status_code == 422
    assert "key" in overlong.json()["detail"]
    assert no_token.status_code == 401
