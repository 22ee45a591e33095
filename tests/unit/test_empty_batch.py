"""A member batch of no members (``members: []``, which the model accepts): the dispatcher sends nothing to the
partner (no request of an empty list, no empty body) and records the batch's outcome, 0 members delivered and none
failed, so that the run's accounting, which waits for every batch's outcome, completes."""

from __future__ import annotations

import asyncio
import uuid

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from shared.domain.catalog_objects import CatalogObject, ConnectionProfile, HttpTemplate
from shared.domain.rendering import RenderedRequest
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, ChangeKind, MemberBatch
from shared.outbound.partner_http import PartnerAnswer
from shared.topics import Topics


class Partner:
    def __init__(self) -> None:
        self.requests: list[RenderedRequest] = []

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        self.requests.append(request)
        return PartnerAnswer(200, None, b"")

    async def aclose(self) -> None:
        return None


class Catalog:
    def __init__(self, batch_size: int) -> None:
        self.objects: dict[tuple[type[CatalogObject], str], CatalogObject] = {
            (ConnectionProfile, "p"): ConnectionProfile(name="p", base_url="https://partner.example"),
            (HttpTemplate, "t"): HttpTemplate(name="t", query="q", profile="p", path="/m", batch_size=batch_size),
        }

    def get(self, kind: type[CatalogObject], name: str) -> CatalogObject:
        return self.objects[(kind, name)]

    def get_run(self, run_id: uuid.UUID) -> None:
        return None


def test_an_empty_batch_sends_nothing_and_is_recorded_delivered_with_no_member():
    for batch_size in (1, 500):  # the one-member path and the batch path
        partner = Partner()
        catalog = Catalog(batch_size)
        dispatcher = Dispatcher(
            objects=CatalogCache(catalog, catalog, ttl=60),  # type: ignore[arg-type]
            deliverer=Deliverer(partner, RetryBudget(max_attempts=1)),
            tokens=OAuthTokenCache(None),  # type: ignore[arg-type]
            topics=Topics(),
        )
        empty = MemberBatch(
            run_id=uuid.uuid4(),
            definition="d",
            template="t",
            batch_index=3,
            members=[],
            key_column="id",
            change=ChangeKind.ADDED,
        )
        [result] = asyncio.run(dispatcher.handle_all([empty]))
        assert partner.requests == []  # nothing sent
        assert isinstance(result, list)
        assert len(result) == 1  # the outcome alone: no dead letter
        outcome = RUN_EVENT_ADAPTER.validate_json(result[0].value)
        assert isinstance(outcome, BatchOutcome)
        assert (outcome.run_id, outcome.batch_index) == (empty.run_id, 3)
        assert (outcome.delivered, outcome.failed, outcome.attempts, outcome.error) == (0, 0, 0, None)
        assert outcome.member_keys == []
        assert outcome.refused == []
        assert outcome.change is ChangeKind.ADDED
