"""A recipient the SMTP server refuses for now (a 4xx answer to RCPT TO, e.g. greylisting) while it takes the email
for the others is mailed again, alone, by the email's retries: never again those who took it, until it takes it or
the email's attempts are spent (then recorded and counted as not delivered to it, as one refused for good).

Before: such a recipient was treated as one refused for good, never mailed again (the email recorded sent). Real SMTP
server (aiosmtpd) on 127.0.0.1, the real admin app in-process on the same catalog (SQLite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from devtools.smtp_sink import serving
from shared.catalog import CatalogStores
from shared.domain.email_retries import EMAIL_MAX_ATTEMPTS
from shared.events import RunFailed
from tests.admin_app import in_process_api
from tests.integration.test_notifier_refusals_shown import (
    Picky,
    definition,
    notifier_on,
    refused_recipients,
    run_detail,
)

pytestmark = pytest.mark.integration


class Greylisting(Picky):
    """As :class:`Picky` (``tpyo@…`` refused for good, 550), and ``later@…`` refused for now (451) its first
    ``refusals`` times; counts each address's RCPT."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals, self.asked = refusals, dict[str, int]()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.asked[address] = self.asked.get(address, 0) + 1
        if address.startswith("later@") and self.asked[address] <= self.refusals:
            return "451 4.7.1 greylisted, try again later"
        return await super().handle_RCPT(server, session, envelope, address, options)


@pytest.fixture
def greylisting(request: pytest.FixtureRequest) -> Iterator[Greylisting]:
    handler = Greylisting(request.param)
    with serving(handler, handler.port):
        yield handler


def deferred_recipients() -> float:
    sample = REGISTRY.get_sample_value("member_export_notifier_email_recipients_deferred_total", {"kind": "error"})
    return sample or 0.0


RECIPIENTS = ["oncall@example.com", "later@example.com", "tpyo@example.com"]


@pytest.mark.parametrize("greylisting", [1], indirect=True)
def test_a_recipient_refused_for_now_is_mailed_again_alone_and_one_refused_for_good_is_not(
    tmp_path: Path, greylisting: Greylisting
):
    with in_process_api(tmp_path) as api:
        catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}")
        catalog.definitions.apply(definition("greylisted", RECIPIENTS))
        run_id = uuid.uuid4()
        refused, deferred = refused_recipients(), deferred_recipients()
        notifier = notifier_on(catalog, greylisting.port)
        notifier.handle_all([RunFailed(run_id=run_id, definition="greylisted", reason="boom")])

        [pending] = run_detail(api, run_id)["notifications"]
        notifier.sweep()  # the email's backoff is 0 here: due at once
        [email] = run_detail(api, run_id)["notifications"]

    # Before: [["oncall@example.com"]], later@ never mailed again.
    assert greylisting.received == [["oncall@example.com"], ["later@example.com"]]
    assert greylisting.asked == {"oncall@example.com": 1, "later@example.com": 2, "tpyo@example.com": 1}
    assert pending["status"] == "pending"
    assert pending["attempts"] == 1
    assert pending["last_error"].startswith(
        "not delivered yet to 2 of 3 recipients (the others took it; 1 refused for now, mailed again alone): "
    )
    assert email["status"] == "sent"
    assert email["recipients"] == RECIPIENTS
    assert email["last_error"] == (
        "not delivered to 1 of 3 recipients (the others took it): "
        "SMTPRecipientsRefused: {'tpyo@example.com': (550, b'5.1.1 no such user')}"
    )
    assert refused_recipients() == refused + 1
    assert deferred_recipients() == deferred + 1


@pytest.mark.parametrize("greylisting", [EMAIL_MAX_ATTEMPTS + 5], indirect=True)
def test_a_recipient_refused_for_now_at_every_attempt_is_given_up_with_the_emails_attempts(
    tmp_path: Path, greylisting: Greylisting
):
    with in_process_api(tmp_path) as api:
        catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}")
        catalog.definitions.apply(definition("greylisted", RECIPIENTS[:2]))
        run_id = uuid.uuid4()
        refused, deferred = refused_recipients(), deferred_recipients()
        notifier = notifier_on(catalog, greylisting.port)
        notifier.handle_all([RunFailed(run_id=run_id, definition="greylisted", reason="boom")])
        for _ in range(EMAIL_MAX_ATTEMPTS + 2):  # two sweeps more than it takes: nothing more is sent
            notifier.sweep()
        [email] = run_detail(api, run_id)["notifications"]

    assert greylisting.received == [["oncall@example.com"]]
    # Its first send and each retry of the email asked later@ alone, EMAIL_MAX_ATTEMPTS in all; oncall@ once.
    assert greylisting.asked == {"oncall@example.com": 1, "later@example.com": EMAIL_MAX_ATTEMPTS}
    assert email["status"] == "sent"
    assert email["last_error"] == (
        "not delivered to 1 of 2 recipients (the others took it): "
        "SMTPRecipientsRefused: {'later@example.com': (451, b'4.7.1 greylisted, try again later')}"
    )
    assert refused_recipients() == refused + 1
    assert deferred_recipients() == deferred + EMAIL_MAX_ATTEMPTS - 1
