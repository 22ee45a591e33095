"""One view of a member's delivery for the admin API and exportctl: the API's model takes exactly the shape
exportctl prints in catalog mode, and writes it back unchanged."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.admin.deliveries_routes import MemberDeliveryView
from shared.application.member_deliveries import MemberDeliveryAnswer, delivery_view
from shared.domain.member_deliveries import MemberDelivery
from shared.domain.member_retries import MemberRetry, RefusalKind, RetryState

AT = datetime(2026, 11, 1, 12, 30, tzinfo=UTC)
REFUSED = MemberDelivery("d", "1042", False, "r-1", 3, AT, 2, 422, "bad email", True)
RETRY = MemberRetry("1042", 422, "bad email", RefusalKind.INVALID, 1, RetryState.GIVEN_UP, "r-1")


@pytest.mark.parametrize(
    "answer",
    [
        MemberDeliveryAnswer("d", "1042", REFUSED, RETRY),
        MemberDeliveryAnswer("d", "1042", None, RETRY),
        MemberDeliveryAnswer("d", "1042", MemberDelivery("d", "1042", True, "r-2", 0, AT, 1, None, None, False), None),
    ],
    ids=["refused", "pruned", "delivered"],
)
def test_the_api_answers_the_view_exportctl_prints(answer: MemberDeliveryAnswer):
    view = delivery_view(answer)
    assert MemberDeliveryView.model_validate(view).model_dump(mode="json") == view


def test_the_view_names_the_refusal_and_the_retry_state():
    view = delivery_view(MemberDeliveryAnswer("d", "1042", REFUSED, RETRY))
    assert view["last"] == {
        "outcome": "failed",
        "run_id": "r-1",
        "batch_index": 3,
        "at": "2026-11-01T12:30:00Z",
        "attempts": 2,
        "status": 422,
        "reason": "bad email",
        "retry": True,
    }
    assert view["retry"] == {
        "state": "given_up",
        "kind": "invalid",
        "failed_runs": 1,
        "last_run_id": "r-1",
        "status": 422,
        "reason": "bad email",
    }
