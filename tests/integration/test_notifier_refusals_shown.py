"""What became of a run's emails, as a user sees it: an email some recipients refused while the others took it is
recorded and counted as not delivered to them; a given-up email is shown with its reason in the run's detail (the
admin API's ``GET /runs/{run_id}`` and the console's run page).

Before (session 48 review): a partial refusal was recorded sent, for everyone (no error kept, nothing counted), and
the admin API and the console showed nothing of a run's notifications. Real SMTP server (aiosmtpd) and the real
admin app in-process on the same catalog (SQLite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from devtools.processes import free_port
from devtools.smtp_sink import serving
from services.notifier.mailer import SmtpMailer
from services.notifier.notifying import Notifier
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ExportDefinition
from shared.events import RunFailed
from shared.outbound.backoff import Backoff
from tests.admin_app import InProcessApi, in_process_api
from tests.integration.test_console_fields import signed_in

pytestmark = pytest.mark.integration


class Picky:
    """aiosmtpd handler refusing RCPT of ``tpyo@…`` for good (550), taking the rest; keeps each message's envelope
    recipients."""

    def __init__(self) -> None:
        self.port, self.received = free_port(), list[list[str]]()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address.startswith("tpyo@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(list(envelope.rcpt_tos))
        return "250 taken"


@pytest.fixture
def picky() -> Iterator[Picky]:
    handler = Picky()
    with serving(handler, handler.port):
        yield handler


def definition(name: str, recipients: list[str]) -> ExportDefinition:
    return ExportDefinition.model_validate(
        {
            "name": name,
            "query": "q",
            "template": "t",
            "notifications": {"error": {"enabled": True, "recipients": recipients}},
        }
    )


def notifier_on(catalog: CatalogStores, port: int) -> Notifier:
    return Notifier(
        definitions=catalog.definitions,
        runs=catalog.runs,
        watermarks=catalog.extraction,
        mailer=SmtpMailer("127.0.0.1", port, timeout=5.0, max_attempts=2, max_wait=0.05),
        sender="exports@example.com",
        link_base_url=None,
        email_backoff=Backoff(initial=0.0, maximum=0.0),
    )


def refused_recipients() -> float:
    return REGISTRY.get_sample_value("member_export_notifier_email_recipients_refused_total", {"kind": "error"}) or 0.0


def run_detail(api: InProcessApi, run_id: uuid.UUID) -> dict[str, Any]:
    with api.client("viewer") as client:
        answer = client.get(f"/api/v1/runs/{run_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def test_an_email_some_recipients_refuse_is_recorded_and_counted_as_not_delivered_to_them(tmp_path: Path, picky: Picky):
    with in_process_api(tmp_path) as api:
        catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}")
        catalog.definitions.apply(definition("partly", ["oncall@example.com", "tpyo@example.com"]))
        run_id = uuid.uuid4()
        before = refused_recipients()
        notifier = notifier_on(catalog, picky.port)
        notifier.handle_all([RunFailed(run_id=run_id, definition="partly", reason="boom")])
        notifier.sweep()

        assert picky.received == [["oncall@example.com"]]  # once: the one who took it is not mailed again
        assert refused_recipients() == before + 1  # before: nothing counted
        [email] = run_detail(api, run_id)["notifications"]
    assert email["status"] == "sent"
    assert email["recipients"] == ["oncall@example.com", "tpyo@example.com"]
    # Before: no error kept, as if everyone had it.
    assert email["last_error"] == (
        "not delivered to 1 of 2 recipients (the others took it): "
        "SMTPRecipientsRefused: {'tpyo@example.com': (550, b'5.1.1 no such user')}"
    )


def test_a_given_up_email_is_shown_with_its_reason_in_the_runs_detail_and_its_page(
    tmp_path: Path, picky: Picky, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(
        "EXPORT_CONSOLE_SECURE_COOKIES", "false"
    )  # plain http in the test client, as the console's tests
    with in_process_api(tmp_path) as api:
        catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}")
        catalog.definitions.apply(definition("typo", ["tpyo@example.com"]))
        run_id = uuid.uuid4()
        notifier_on(catalog, picky.port).handle_all([RunFailed(run_id=run_id, definition="typo", reason="boom")])

        detail = run_detail(api, run_id)
        with signed_in(api, "viewer") as console:
            page = console.client.get(f"/console/runs/{run_id}")
    [email] = detail["notifications"]  # before: no notifications in the run's detail
    assert email["kind"] == "error"
    assert email["status"] == "given_up"
    assert email["attempts"] == 1
    assert email["gave_up_at"] is not None
    assert email["last_error"] == "SMTPRecipientsRefused: {'tpyo@example.com': (550, b'5.1.1 no such user')}"
    assert page.status_code == 200
    assert 'data-status="given_up"' in page.text
    assert "SMTPRecipientsRefused" in page.text
