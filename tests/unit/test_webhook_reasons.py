"""A webhook's failure reason, as the notifier's ledger and log get it: the receiver's status and message, with
the channel's URL token, its signing secret and the signatures sent masked, bounded as the dispatcher's are."""

from __future__ import annotations

import base64

import pytest

from services.notifier.webhook_masking import channel_masking
from shared.domain.catalog_objects import WebhookChannel
from shared.domain.masking import MASK
from shared.outbound.failure_reasons import REASON_CHARS, masked_reason
from shared.outbound.partner_http import PartnerAnswer

#: An incoming webhook's URL: its path is the token (as Slack's is).
SLACK = WebhookChannel(url="https://hooks.example.com/services/T0A1B2C3/B4D5E6F7/q9XrT2vLw8ZkP3mN", format="slack")
SECRET = "whsec_" + base64.b64encode(b"another signing key, 32 bytes!!").decode()
HEADERS = {"webhook-id": "msg_1", "webhook-signature": "v1,c2lnbmF0dXJlLW9mLXRoZS1ib2R5LTEyMzQ1Ng=="}


def refusal(channel: WebhookChannel, body: str, status: int = 404, headers: dict[str, str] = HEADERS) -> str:
    answer = PartnerAnswer(status, None, body.encode(), {})
    return masked_reason(lambda: channel_masking(channel, headers), answer, None)


def test_an_incoming_webhooks_token_across_the_bound_leaves_no_start_behind():
    # The bound falls inside the quoted path: its start alone is the token's start.
    before = "x" * (REASON_CHARS - 20)
    reason = refusal(SLACK, f"{before}no hook at /services/T0A1B2C3/B4D5E6F7/q9XrT2vLw8ZkP3mN, sorry")
    assert reason == f"HTTP 404: {f'{before}no hook at {MASK}, sorry'[:REASON_CHARS]}…"


def test_the_signing_secret_its_key_and_the_signature_sent_are_masked_however_quoted(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("PARTNER_HOOK_SECRET", SECRET)
    channel = WebhookChannel(url="https://hooks.example.com/in", signing_secret="env:PARTNER_HOOK_SECRET")
    key = SECRET.removeprefix("whsec_")
    signature = HEADERS["webhook-signature"].removeprefix("v1,")
    body = f"bad signature {signature.lower()} for key {key} ({SECRET.upper()})"
    assert refusal(channel, body, 401) == f"HTTP 401: bad signature {MASK} for key {MASK} ({MASK})"


def test_a_signing_secret_that_does_not_resolve_still_masks_the_rest():
    channel = WebhookChannel(url="https://hooks.example.com/in", signing_secret="env:PARTNER_UNSET_HOOK_SECRET")
    body = f"signature {HEADERS['webhook-signature']} refused; api_key=k-123456"
    assert refusal(channel, body, 400) == f"HTTP 400: signature {MASK} refused; api_key={MASK}"


def test_a_reason_without_an_answer_is_masked_and_bounded_too():
    reason = masked_reason(lambda: channel_masking(SLACK, HEADERS), None, f"InvalidURL: {SLACK.url}" + "y" * 400)
    assert reason == f"InvalidURL: {MASK}" + "y" * (REASON_CHARS - len(f"InvalidURL: {MASK}")) + "…"
