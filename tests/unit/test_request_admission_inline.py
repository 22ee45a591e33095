"""A request with nothing to wait for is admitted without a coroutine (issue 18, the one-member path).

The dispatcher's admission of an attempt (the round's end, the fleet's share, the circuit breaker, the rate, the
body's render) hands the deliverer an awaitable only when it must wait: for a probe of the breaker, a token of the
rate, or a render thread. A plain request (no breaker, no rate limit, a template known to render quickly) is admitted
at once, and its request is sent whole, with its own body and key.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from services.dispatcher.delivery import Deliverer, DeliveryResult, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.events import MemberBatch
from shared.topics import Topics
from tests.unit.test_batch_request_headers import Catalog, Recording, no_wait

MEMBERS = 6


class Watching(Deliverer):
    """A deliverer noting, for each attempt, whether the dispatcher's admission handed it something to await."""

    def __init__(self, partner: Recording) -> None:
        super().__init__(partner, RetryBudget(max_attempts=1), sleep=no_wait)
        self.awaited: list[bool] = []

    async def deliver(self, make_request: Any, timeout: float, *args: Any, **kwargs: Any) -> DeliveryResult:
        admit: Callable[[], Awaitable[None] | None] = kwargs["before_attempt"]

        def watched() -> Awaitable[None] | None:
            admitting = admit()
            self.awaited.append(admitting is not None)
            return admitting

        kwargs["before_attempt"] = watched
        return await super().deliver(make_request, timeout, *args, **kwargs)


def delivered(profile: ConnectionProfile, batches: int = 2) -> tuple[list[MemberBatch], Watching, Recording]:
    template = HttpTemplate(
        name="t", query="q", profile="p", method="POST", path="/m", batch_size=1, json_body={"id": "{{ member.id }}"}
    )
    catalog = Catalog(template, profile)
    partner = Recording()
    deliverer = Watching(partner)
    dispatcher = Dispatcher(
        objects=CatalogCache(catalog, catalog, ttl=60),  # type: ignore[arg-type]
        deliverer=deliverer,
        tokens=OAuthTokenCache(None),  # type: ignore[arg-type]
        topics=Topics(),
        concurrency=1,
    )
    sent = [
        MemberBatch(
            run_id=uuid.uuid4(),
            definition="d",
            template="t",
            batch_index=index,
            members=[{"id": index * MEMBERS + n} for n in range(MEMBERS)],
            key_column="id",
        )
        for index in range(batches)
    ]

    async def run() -> None:
        for batch in sent:  # one after the other: the first batch's first render measures the template
            (outcome,) = await dispatcher.handle(batch)
            assert json.loads(outcome.value)["delivered"] == MEMBERS

    try:
        asyncio.run(run())
    finally:
        dispatcher.renderer.close()
    return sent, deliverer, partner


def test_a_plain_request_is_admitted_without_anything_to_await_once_its_template_renders_quickly():
    batches, deliverer, partner = delivered(ConnectionProfile(name="p", base_url="http://partner.test"))
    # The template's first render goes to a render thread (its cost unknown): awaited; every later one inline.
    assert deliverer.awaited == [True] + [False] * (2 * MEMBERS - 1)
    bodies = [json.loads(body) for _, body in partner.requests]
    assert bodies == [{"id": n} for n in range(2 * MEMBERS)]
    keys = [dict(headers)["Idempotency-Key"] for headers, _ in partner.requests]
    assert keys == [f"{batch.identity}:{n}-{n + 1}" for batch in batches for n in range(MEMBERS)]


def test_a_request_that_waits_for_its_token_is_admitted_by_an_awaitable_and_sent_once_admitted():
    profile = ConnectionProfile(
        name="p", base_url="http://partner.test", rate_limit={"requests_per_second": 1000, "burst": 1}
    )
    _, deliverer, partner = delivered(profile)
    assert len(partner.requests) == 2 * MEMBERS
    assert any(deliverer.awaited[1:])  # a burst of 1: the requests after the first wait for their tokens
