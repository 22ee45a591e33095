"""An attempt whose answer came is counted in the request metrics even when judging the answer fails, and an
answer's unreadable ``Retry-After`` (``²``: a digit to ``str.isdigit``, not to ``float``) is retried as if it had
none."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY

import services.dispatcher.delivery as delivery
from services.dispatcher.delivery import Deliverer, RetryBudget
from shared.domain.rendering import RenderedRequest
from shared.outbound.partner_http import PartnerAnswer

REQUEST = RenderedRequest(method="POST", url="https://partner.example/m", headers={}, content=b"{}")


class Answers:
    """Answers each request with the next of ``answers`` (a 200 once they run out)."""

    def __init__(self, answers: list[PartnerAnswer]) -> None:
        self.answers = answers
        self.sent = 0

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        self.sent += 1
        return self.answers.pop(0) if self.answers else PartnerAnswer(200, None, b"")

    async def aclose(self) -> None:
        return None


def counted(labels: tuple[str, str], status_class: str) -> float:
    definition, profile = labels
    found = REGISTRY.get_sample_value(
        "member_export_dispatcher_requests_total",
        {"definition": definition, "profile": profile, "status_class": status_class},
    )
    return found or 0.0


def observed(labels: tuple[str, str]) -> float:
    definition, profile = labels
    found = REGISTRY.get_sample_value(
        "member_export_dispatcher_request_duration_seconds_count", {"definition": definition, "profile": profile}
    )
    return found or 0.0


def fresh_labels() -> tuple[str, str]:
    return (f"attempts-{uuid.uuid4().hex[:12]}", "p")


def deliverer(partner: Answers) -> Deliverer:
    return Deliverer(partner, RetryBudget(initial_backoff=0.0, max_backoff=0.0))


def test_an_attempt_is_counted_even_when_judging_its_answer_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuses(answer: PartnerAnswer, success_statuses: list[int] | None) -> None:
        raise ValueError("judging failed")

    monkeypatch.setattr(delivery, "_judged", refuses)
    labels = fresh_labels()
    partner = Answers([PartnerAnswer(503, "soon", b"busy")])
    with pytest.raises(ValueError, match="judging failed"):
        asyncio.run(deliverer(partner).attempt(REQUEST, 5.0, None, labels))
    assert (counted(labels, "5xx"), observed(labels)) == (1, 1)


@pytest.mark.parametrize("retry_after", ["\u00b2", "\u0663", "  \u00b9\u00b2 ", "99999999999999999999999 GMT"])
def test_a_retryable_answer_with_an_unreadable_retry_after_is_retried_as_without_one(retry_after: str) -> None:
    labels = fresh_labels()
    partner = Answers([PartnerAnswer(503, retry_after, b"busy")])
    result = asyncio.run(deliverer(partner).deliver(lambda: _request(), 5.0, labels=labels))
    assert (result.success, result.attempts, partner.sent) == (True, 2, 2)
    assert (counted(labels, "5xx"), counted(labels, "2xx"), observed(labels)) == (1, 1, 2)


async def _request() -> RenderedRequest:
    return REQUEST
