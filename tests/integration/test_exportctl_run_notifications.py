"""``exportctl runs --id`` shows a run's notifications (emails and webhooks: status, attempts, reason) in both modes,
through one view: on the catalog directly as through the admin API, which shows them in ``GET /runs/{run_id}``.

Before: neither mode's summary said a word of them, and on the catalog directly the YAML/JSON view had none (the API's
had them). The real admin app in-process (its answers routed to exportctl's API client) on a SQLite catalog."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.catalog import CatalogStores
from shared.cli.__main__ import main as exportctl
from shared.cli.api import AdminApi, ApiError
from shared.events import RunFailed
from tests.admin_app import InProcessApi, in_process_api

pytestmark = pytest.mark.integration

REFUSED = (
    "not delivered to 1 of 2 recipients (the others took it): "
    "SMTPRecipientsRefused: {'tpyo@example.com': (550, b'5.1.1 no such user')}"
)


def a_run_with_notifications(catalog: CatalogStores) -> uuid.UUID:
    """A failed run whose error email went to one of its two recipients, and whose webhook failed once."""
    run_id = uuid.uuid4()
    catalog.runs.fold_run_event(RunFailed(run_id=run_id, definition="nightly", reason="boom"))
    catalog.runs.claim_notification(run_id, "error", ["oncall@example.com", "tpyo@example.com"])
    catalog.runs.mark_notification(run_id, "error", undelivered=REFUSED)
    catalog.runs.claim_notification(run_id, "webhook:ops:failed", ["ops"])
    catalog.runs.mark_notification(run_id, "webhook:ops:failed", error="HTTP 503 from the receiver")
    return run_id


def through_the_api(api: InProcessApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """exportctl's admin API client answered by the in-process app (a viewer's token)."""

    def call(self: AdminApi, method: str, path: str, *, params: Any = None, **_: Any) -> Any:
        with api.client("viewer") as client:
            answer = client.request(method, "/api/v1" + path, params=params)
        if answer.status_code >= 400:
            raise ApiError(answer.text, answer.status_code)
        return answer.json()

    monkeypatch.setattr(AdminApi, "call", call)
    monkeypatch.setenv("EXPORT_API_URL", "http://admin.test")


def shown(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert exportctl(argv) == 0
    return capsys.readouterr().out


def test_a_runs_notifications_are_shown_by_exportctl_on_the_catalog_as_through_the_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    with in_process_api(tmp_path) as api:
        run_id = a_run_with_notifications(CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}"))
        monkeypatch.delenv("EXPORT_API_URL", raising=False)
        monkeypatch.setenv("EXPORT_CATALOG_URL", f"sqlite:///{tmp_path / 'catalog.db'}")
        direct, direct_json = (shown(["runs", "--id", str(run_id), *o], capsys) for o in ([], ["-o", "json"]))
        through_the_api(api, monkeypatch)
        via_api, api_json = (shown(["runs", "--id", str(run_id), *o], capsys) for o in ([], ["-o", "json"]))

    lines = direct.splitlines()
    assert f"  notification error to oncall@example.com, tpyo@example.com: sent: {REFUSED}" in lines
    assert "  notification webhook:ops:failed to ops: pending, 1 failed attempt: HTTP 503 from the receiver" in lines
    assert via_api == direct  # one view, both modes
    on_catalog, answered = json.loads(direct_json)["notifications"], json.loads(api_json)["notifications"]
    assert [(n["kind"], n["channel"], n["status"], n["attempts"], n["last_error"]) for n in on_catalog] == [
        ("error", None, "sent", 0, REFUSED),
        ("webhook:ops:failed", "ops", "pending", 1, "HTTP 503 from the receiver"),
    ]
    # The same fields and values (instants aside: ISO 8601 either way, "+00:00" or "Z").
    timeless = [{k: v for k, v in n.items() if not k.endswith("_at")} for n in answered]
    assert [{k: v for k, v in n.items() if not k.endswith("_at")} for n in on_catalog] == timeless
    assert [n.keys() for n in on_catalog] == [n.keys() for n in answered]
