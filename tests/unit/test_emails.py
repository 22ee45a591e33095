import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.notifier.emails import ERROR, SUCCESS, compose, kinds_due, recipients_for
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.runs import RunRecord, RunStatus

DEFINITION = ExportDefinition.model_validate(
    {
        "name": "nightly-gold",
        "query": "q",
        "template": "t",
        "schedule": {"timezone": "Europe/Paris"},
        "notifications": {
            "success": {"enabled": True, "recipients": ["ops@example.com"]},
            "error": {"enabled": True, "recipients": ["oncall@example.com", "lead@example.com"]},
        },
    }
)
RECORD = RunRecord(
    run_id=uuid.UUID("22222222-2222-2222-2222-222222222222"),
    definition="nightly-gold",
    trigger="schedule",
    started_at=datetime(2026, 7, 1, 0, 0, 0, tzinfo=UTC),
    finished_at=datetime(2026, 7, 1, 0, 1, 30, tzinfo=UTC),
    extraction_complete=True,
    extracted=1000,
    batches_expected=2,
    batches_done=2,
    delivered=500,
    failed=500,
    error_samples=("HTTP 400: member 17 rejected",),
)


def test_each_final_status_calls_for_the_right_kind():
    assert kinds_due(RunStatus.SUCCEEDED) == [SUCCESS]
    assert kinds_due(RunStatus.FAILED) == [ERROR]
    assert kinds_due(RunStatus.COMPLETED_WITH_ERRORS) == [ERROR]
    assert kinds_due(RunStatus.MISSED) == [ERROR]
    assert kinds_due(RunStatus.SKIPPED) == []
    assert kinds_due(RunStatus.DISPATCHING) == []


def test_recipients_follow_the_toggles():
    assert recipients_for(DEFINITION, ERROR) == ["oncall@example.com", "lead@example.com"]
    silent = DEFINITION.model_copy(
        update={
            "notifications": DEFINITION.notifications.model_copy(
                update={"success": DEFINITION.notifications.success.model_copy(update={"enabled": False})}
            )
        }
    )
    assert recipients_for(silent, SUCCESS) == []


def test_the_email_carries_counts_times_in_the_definitions_zone_and_errors():
    message = compose(
        definition=DEFINITION,
        record=RECORD,
        kind=ERROR,
        sender="exports@example.com",
        recipients=recipients_for(DEFINITION, ERROR),
        link_base_url="https://exports.example.com/",
    )
    assert message["Subject"] == "[member export] nightly-gold: completed with errors"
    assert message["To"] == "oncall@example.com, lead@example.com"
    text = message.get_body(("plain",)).get_content()
    assert "Started: 2026-07-01 02:00:00 Europe/Paris" in text
    assert "Duration: 90.0 s" in text
    assert "Delivered: 500" in text
    assert "Failed: 500" in text
    assert "- HTTP 400: member 17 rejected" in text
    assert "https://exports.example.com/runs/22222222-2222-2222-2222-222222222222" in text
    html = message.get_body(("html",)).get_content()
    assert "<th align='left'>Failed</th><td>500</td>" in html


def test_a_run_allowed_a_mass_removal_says_so_and_who_asked():
    def text(record: RunRecord) -> str:
        message = compose(definition=DEFINITION, record=record, kind=ERROR, sender="e@example.com", recipients=["o"])
        return message.get_body(("plain",)).get_content()

    allowed = replace(RECORD, requested_by="alice", mass_removal_allowed=True, removed=900)
    assert "Mass removal: allowed by the run's request: sync.max_removed did not apply (requested by alice)" in text(
        allowed
    )
    assert "Mass removal" not in text(RECORD)


@pytest.mark.parametrize(
    "recipient",
    [
        "d<e@x.io",
        "j:k@x.io",
        "f,g@x.io",
        "(c@x.io",
        'a"b@x.io',
        "h;i@x.io",
        "x@y.io)",
        "\u00aab\u0016@[\u00b1\u00edyk\u0083.\u00aa",  # the parser raised AttributeError (a 500 by fuzzing)
    ],
)
def test_a_recipient_that_mail_parsers_read_as_another_address_or_none_is_refused_at_save_naming_the_field(
    recipient: str,
):
    with pytest.raises(ValidationError) as refused:
        ExportDefinition.model_validate(
            {
                "name": "n",
                "query": "q",
                "template": "t",
                "notifications": {"error": {"enabled": True, "recipients": [recipient]}},
            }
        )
    [error] = refused.value.errors()
    assert error["loc"] == ("notifications", "error", "recipients", 0)
    assert "is not one email address" in error["msg"]


@pytest.mark.parametrize("recipient", ["oncall@example.com", "first.last+exports@mail.example.co.uk", "o'brien@x.io"])
def test_an_ordinary_recipient_is_still_taken(recipient: str):
    saved = ExportDefinition.model_validate(
        {
            "name": "n",
            "query": "q",
            "template": "t",
            "notifications": {"error": {"enabled": True, "recipients": [recipient]}},
        }
    )
    assert saved.notifications.error.recipients == [recipient]


def test_the_runs_and_the_breaker_emails_split_stored_recipients_with_one_filter():
    """Session 48 review: the runs' emails and the circuit breaker emails each had their own filter of the recipients an
    older release saved that are not one address; one function now, called by both."""
    from shared.domain.email_retries import mailable

    split = mailable(["oncall@example.com", "d<e@x.io", "josé@example.com", "lead@example.com"])
    assert (split.mailed, split.odd) == (["oncall@example.com", "lead@example.com"], ["d<e@x.io", "josé@example.com"])
    assert split.none_left_reason is None
    assert mailable(["d<e@x.io"]).none_left_reason == (
        "recipient 'd<e@x.io' is not one email address: correct the definition's recipients"
    )
    assert mailable([]).none_left_reason is None
