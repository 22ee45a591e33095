"""The headers of a one-member batch's requests, built once a batch where they are shared (issue 18).

A batch's one-member requests share their headers but the Idempotency-Key when the template's headers are constant,
the credentials static and nothing signs or traces each request: the dispatcher then copies the batch's headers and
sets each request's key, rather than merging them anew. What each request carries (names, values, their order) is
what the merge gives; a request whose headers differ (a header with an expression, a signature) is merged itself.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from standardwebhooks.webhooks import Webhook

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from shared.domain.catalog_objects import CatalogObject, ConnectionProfile, HttpTemplate
from shared.domain.http_fields import merged_headers
from shared.domain.rendering import RenderedRequest
from shared.events import MemberBatch
from shared.outbound.partner_http import PartnerAnswer
from shared.topics import Topics

SECRET = "whsec_c2lnbmluZy1zZWNyZXQ="
MEMBERS = 5
#: The batch's record's trace context: its requests carry its traceparent, after every other header.
SPAN = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True, trace_flags=TraceFlags(1))
TRACEPARENT = ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")


class Catalog:
    def __init__(self, *objects: CatalogObject) -> None:
        self.objects = {(type(obj), obj.name): obj for obj in objects}

    def get(self, kind: type[CatalogObject], name: str) -> CatalogObject:
        return self.objects[(kind, name)]

    def get_run(self, run_id: uuid.UUID) -> None:
        return None


class Recording:
    """A partner answering 200, keeping each request's headers in order; it takes a header out of each request it
    is sent (a client may change the dict it is handed): the next requests carry it still."""

    def __init__(self) -> None:
        self.requests: list[tuple[list[tuple[str, str]], bytes]] = []

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        self.requests.append((list(request.headers.items()), request.content))
        request.headers.pop("X-Source", None)
        return PartnerAnswer(200, None, b"")

    async def aclose(self) -> None:
        return None


class BusyAtFirst(Recording):
    """:class:`Recording`, answering 503 to each request's first attempt (by its Idempotency-Key), 200 to its retry."""

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        first = all(
            dict(headers)["Idempotency-Key"] != request.headers["Idempotency-Key"] for headers, _ in self.requests
        )
        await super().send(request, timeout, network)
        return PartnerAnswer(503 if first else 200, None, b"")


async def no_wait(seconds: float) -> None:
    return None


def sent(
    template: HttpTemplate, profile: ConnectionProfile, partner: Recording | None = None, attempts: int = 1
) -> tuple[MemberBatch, Recording]:
    partner = partner or Recording()
    catalog = Catalog(template, profile)
    dispatcher = Dispatcher(
        objects=CatalogCache(catalog, catalog, ttl=60),  # type: ignore[arg-type]
        deliverer=Deliverer(partner, RetryBudget(max_attempts=attempts), sleep=no_wait),
        tokens=OAuthTokenCache(None),  # type: ignore[arg-type]
        topics=Topics(),
        concurrency=1,  # sent in the batch's order
    )
    batch = MemberBatch(
        run_id=uuid.uuid4(),
        definition="d",
        template=template.name,
        batch_index=3,
        members=[{"id": n} for n in range(MEMBERS)],
        key_column="id",
    )
    try:
        with trace.use_span(NonRecordingSpan(SPAN)):
            outgoing = asyncio.run(dispatcher.handle(batch))
    finally:
        dispatcher.renderer.close()
    (outcome,) = outgoing
    assert json.loads(outcome.value)["delivered"] == MEMBERS
    return batch, partner


def template(**fields: Any) -> HttpTemplate:
    return HttpTemplate(name="t", query="q", profile="p", method="POST", path="/members", batch_size=1, **fields)


def keys(batch: MemberBatch) -> list[str]:
    return [f"{batch.identity}:{n}-{n + 1}" for n in range(MEMBERS)]


def test_a_batchs_requests_share_its_headers_in_the_merges_order_each_with_its_own_key():
    profile = ConnectionProfile(name="p", base_url="http://partner.test", auth={"type": "bearer", "token": "tok"})
    # A template saved before the rule that refuses it may carry its own idempotency-key: replaced, as merged.
    legacy = template().model_copy(
        update={"headers": {"X-Source": "loyalty", "idempotency-key": "fixed", "X-Tier": "all"}}
    )
    batch, partner = sent(legacy, profile)
    rendered = {"X-Source": "loyalty", "idempotency-key": "fixed", "X-Tier": "all", "Content-Type": "application/json"}
    expected = [
        list(
            merged_headers(
                rendered, {"Authorization": "Bearer tok"}, {"Idempotency-Key": key}, {}, dict([TRACEPARENT])
            ).items()
        )
        for key in keys(batch)
    ]
    assert [headers for headers, _ in partner.requests] == expected
    assert expected[0] == [
        ("X-Source", "loyalty"),
        ("X-Tier", "all"),
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer tok"),
        ("Idempotency-Key", keys(batch)[0]),
        TRACEPARENT,
    ]


def test_a_header_with_an_expression_is_each_requests_own():
    profile = ConnectionProfile(name="p", base_url="http://partner.test")
    batch, partner = sent(template(headers={"X-Source": "loyalty", "X-Member": "m-{{ member.id }}"}), profile)
    assert [headers for headers, _ in partner.requests] == [
        [
            ("X-Source", "loyalty"),
            ("X-Member", f"m-{n}"),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", key),
            TRACEPARENT,
        ]
        for n, key in enumerate(keys(batch))
    ]


def test_a_signed_batchs_requests_each_carry_the_signature_of_their_own_body():
    profile = ConnectionProfile(name="p", base_url="http://partner.test", signing_secret=SECRET)
    batch, partner = sent(template(json_body={"id": "{{ member.id }}"}), profile)
    assert len(partner.requests) == MEMBERS
    for (items, body), key in zip(partner.requests, keys(batch), strict=True):
        headers = dict(items)
        assert headers["Idempotency-Key"] == headers["webhook-id"] == key
        Webhook(SECRET).verify(body, headers)  # raises unless the signature is this body's


def test_a_retry_carries_the_headers_of_its_first_attempt_whatever_the_partner_did_with_them():
    # The first attempt sends the request its render made whole (this request's headers in it); a retry copies the
    # batch's headers again: the header the partner took out of the first attempt's dict is there again.
    profile = ConnectionProfile(name="p", base_url="http://partner.test", auth={"type": "bearer", "token": "tok"})
    batch, partner = sent(template(headers={"X-Source": "loyalty"}), profile, BusyAtFirst(), attempts=2)
    expected = [
        [
            ("X-Source", "loyalty"),
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer tok"),
            ("Idempotency-Key", key),
            TRACEPARENT,
        ]
        for key in keys(batch)
    ]
    by_key: dict[str, list[list[tuple[str, str]]]] = {}
    for headers, _ in partner.requests:
        by_key.setdefault(dict(headers)["Idempotency-Key"], []).append(headers)
    assert [by_key[key] for key in keys(batch)] == [[headers, headers] for headers in expected]
