"""The pure pieces of webhook notifications: ledger kinds, webhook ids, bodies, backoff."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.notifier.webhook_messages import digest_message, ledger_kind, message_id, parse_kind, run_message
from shared.domain.catalog_objects import ExportDefinition, WebhookChannel
from shared.domain.runs import RunRecord, RunStatus
from shared.outbound.backoff import Backoff

NOW = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
DEFINITION = ExportDefinition.model_validate({"name": "nightly", "query": "q", "template": "t"})
RUN = RunRecord(run_id=uuid.uuid4(), definition="nightly", failure_reason="boom", error_samples=("HTTP 400",))


def test_a_ledger_kind_names_its_channel_and_event_and_an_email_kind_is_none():
    assert parse_kind(ledger_kind("ops-chat", "completed_with_errors")) == ("ops-chat", "completed_with_errors")
    assert parse_kind("error") is None
    assert parse_kind("recovered") is None


def test_the_webhook_id_is_stable_per_run_channel_and_event():
    ids = {message_id([RUN.run_id], channel, event) for channel in ("a", "b") for event in ("failed", "missed")}
    assert len(ids) == 4
    assert message_id([RUN.run_id], "a", "failed") == message_id([RUN.run_id], "a", "failed")
    other = uuid.uuid4()
    assert message_id([RUN.run_id, other], "a", "x") == message_id([other, RUN.run_id], "a", "x")


def test_a_standard_event_carries_the_run():
    channel = WebhookChannel(url="https://hooks.example.com/x")
    message = run_message(
        definition=DEFINITION, channel_name="ops", channel=channel, event="failed", record=RUN, now=NOW
    )
    body = json.loads(message.body)
    assert body["type"] == "member_export.run.failed"
    assert body["timestamp"] == NOW.isoformat()
    assert body["data"]["run_id"] == str(RUN.run_id)
    assert body["data"]["errors"] == ["HTTP 400"]
    assert message.id == message_id([RUN.run_id], "ops", "failed")


def test_a_digest_lists_every_missed_run():
    records = [RunRecord(run_id=uuid.uuid4(), definition="nightly", terminal_status=RunStatus.MISSED) for _ in range(5)]
    channel = WebhookChannel(url="https://hooks.example.com/x", format="slack")
    body = json.loads(
        digest_message(definition=DEFINITION, channel_name="ops", channel=channel, records=records, now=NOW).body
    )
    assert body["text"] == "[member export] nightly: 5 scheduled runs missed"
    assert [block["type"] for block in body["blocks"]] == ["header", "section"]


def test_a_channel_url_may_not_hold_credentials_nor_subscribe_to_nothing():
    with pytest.raises(ValidationError, match="must not hold credentials"):
        WebhookChannel(url="https://user:pw@hooks.example.com/x")
    with pytest.raises(ValidationError):
        WebhookChannel(url="https://hooks.example.com/x", events=[])
    with pytest.raises(ValidationError):
        WebhookChannel(url="https://hooks.example.com/x", events=["exploded"])


def test_a_signing_secret_is_a_reference_never_the_secret_itself():
    with pytest.raises(ValidationError, match="give an env:NAME or file:PATH reference") as refused:
        WebhookChannel(url="https://hooks.example.com/x", signing_secret="whsec_c2VjcmV0c2VjcmV0")
    assert "c2VjcmV0c2VjcmV0" not in str(refused.value)
    channel = WebhookChannel(url="https://hooks.example.com/x", signing_secret="env:PARTNER_HOOKS")
    assert channel.signing_secret == "env:PARTNER_HOOKS"


def test_backoff_grows_within_its_maximum_and_honours_retry_after_up_to_a_cap():
    backoff = Backoff(initial=1, maximum=8, retry_after_cap=60)
    widest = lambda low, high: high  # noqa: E731 - the upper end of the jitter
    assert [backoff.delay(n, draw=widest) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 8]
    assert backoff.delay(1, retry_after=30, draw=widest) == 30
    assert backoff.delay(1, retry_after=3600, draw=widest) == 60
    assert 0 <= backoff.delay(3) <= 4


@given(st.floats(0, 1e7, allow_nan=False))
def test_an_outages_wait_grows_with_the_time_already_waited_between_its_floor_and_its_cap(elapsed):
    """Failures not counted as attempts (an SMTP outage's) wait up to the time already waited, at least ``initial``
    and at most ``maximum``: a blip right after a run's finish is tried again within 30 s, an hour's outage every 15
    minutes at most."""
    backoff = Backoff(initial=30.0, maximum=900.0)
    assert backoff.delay_after(elapsed, draw=lambda low, high: high) == min(900.0, max(30.0, elapsed))
    assert backoff.delay_after(elapsed, draw=lambda low, high: low) == 0.0


def _slack_section(record: RunRecord) -> str:
    channel = WebhookChannel(url="https://hooks.slack.com/services/T000/B000/XXXX", format="slack")
    message = run_message(
        definition=DEFINITION, channel_name="ops", channel=channel, event="failed", record=record, now=NOW
    )
    body = json.loads(message.body)
    return body["blocks"][1]["text"]["text"]


def test_a_slack_message_shows_a_partners_answer_as_text_never_as_a_mention_or_a_disguised_link():
    """Slack reads ``<!channel>`` and ``<url|text>`` in mrkdwn as a mention and a link; escaped (``&``, ``<``,
    ``>``, as Slack's formatting reference asks), the channel sees the partner's words, nobody is pinged. The
    standard webhook's JSON keeps the error as it is."""
    reason = 'HTTP 400: {"error": "<!channel> log in at <https://evil.example/login|https://partner.example> & retry"}'
    record = RunRecord(
        run_id=uuid.uuid4(), definition="nightly", terminal_status=RunStatus.FAILED, error_samples=(reason,)
    )
    section = _slack_section(record)
    assert not {"<", ">"} & set(section)
    assert (
        'error: HTTP 400: {"error": "&lt;!channel&gt; log in at '
        '&lt;https://evil.example/login|https://partner.example&gt; &amp; retry"}'
    ) in section
    standard = run_message(
        definition=DEFINITION,
        channel_name="ops",
        channel=WebhookChannel(url="https://hooks.example.com/x"),
        event="failed",
        record=record,
        now=NOW,
    )
    assert json.loads(standard.body)["data"]["errors"] == [reason]


@given(st.lists(st.text(alphabet="<>&;a!", max_size=1500), min_size=1, max_size=3))
def test_a_slack_section_is_escaped_and_cut_within_slacks_limit_without_half_an_entity(errors):
    section = _slack_section(RunRecord(run_id=uuid.uuid4(), definition="nightly", error_samples=tuple(errors)))
    assert len(section) <= 3000
    assert not {"<", ">"} & set(section)
    # Every & starts a whole entity: read back, the section is the facts' text (up to where it was cut).
    assert all(section[i:].startswith(("&amp;", "&lt;", "&gt;")) for i, c in enumerate(section) if c == "&")
    shown = section.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert "\n".join(f"error: {error}" for error in errors).startswith(shown.partition("\n")[2])
