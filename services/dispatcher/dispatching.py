"""Dispatch one member batch: render, authenticate, deliver, and report the outcome."""

from __future__ import annotations

import time
from typing import TypeVar

import structlog
from prometheus_client import Counter

from services.dispatcher.auth import OAuthTokenCache, auth_headers
from services.dispatcher.delivery import Deliverer, DeliveryResult
from services.dispatcher.rendering import RenderedRequest, render_request
from shared.catalog import Catalog, NotFound
from shared.domain.catalog_objects import CatalogObject, ConnectionProfile, HttpTemplate, OAuth2ClientCredentials
from shared.errors import ExportError
from shared.events import BatchOutcome, DeadLetter, MemberBatch
from shared.kafka import Outgoing
from shared.topics import Topics

log = structlog.get_logger(__name__)
T = TypeVar("T", bound=CatalogObject)

MEMBERS_DELIVERED = Counter("export_dispatcher_members_delivered_total", "Members delivered.")
MEMBERS_FAILED = Counter("export_dispatcher_members_failed_total", "Members that could not be delivered.")
DEAD_LETTERS = Counter("export_dispatcher_dead_letters_total", "Dead letters of undeliverable members.")


class CatalogCache:
    """Templates and profiles read through a short-lived cache: edits take effect within ``ttl`` seconds."""

    def __init__(self, catalog: Catalog, ttl: float) -> None:
        self.catalog = catalog
        self.ttl = ttl
        self._entries: dict[tuple[str, str], tuple[float, CatalogObject]] = {}

    def get(self, kind: type[T], name: str) -> T:
        key = (kind.__name__, name)
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or entry[0] < now:
            entry = (now + self.ttl, self.catalog.get(kind, name))
            self._entries[key] = entry
        value = entry[1]
        assert isinstance(value, kind)
        return value


class Dispatcher:
    """Handles member batches."""

    def __init__(
        self,
        *,
        objects: CatalogCache,
        deliverer: Deliverer,
        tokens: OAuthTokenCache,
        topics: Topics,
    ) -> None:
        self.objects = objects
        self.deliverer = deliverer
        self.tokens = tokens
        self.topics = topics

    def handle(self, batch: MemberBatch) -> list[Outgoing]:
        try:
            template = self.objects.get(HttpTemplate, batch.template)
            profile = self.objects.get(ConnectionProfile, template.profile)
            result = self._deliver(batch, template, profile)
        except (NotFound, ExportError) as exc:
            result = DeliveryResult(success=False, status=None, attempts=0, error=str(exc))
        return self._outcome(batch, result)

    def _deliver(self, batch: MemberBatch, template: HttpTemplate, profile: ConnectionProfile) -> DeliveryResult:
        rendered = render_request(template, profile, batch)

        def make_request() -> RenderedRequest:
            headers = rendered.headers | auth_headers(profile, self.tokens) | {"Idempotency-Key": batch.identity}
            return RenderedRequest(rendered.method, rendered.url, headers, rendered.content)

        result = self.deliverer.deliver(make_request, profile.timeout_seconds, template.success_statuses)
        if result.status == 401 and isinstance(profile.auth, OAuth2ClientCredentials):
            # A token may be revoked before its expiry: fetch a new one and try once more.
            self.tokens.forget(profile.name)
            result = self.deliverer.deliver(make_request, profile.timeout_seconds, template.success_statuses)
        return result

    def _outcome(self, batch: MemberBatch, result: DeliveryResult) -> list[Outgoing]:
        count = len(batch.members)
        run_key = str(batch.run_id)
        outcome = BatchOutcome(
            run_id=batch.run_id,
            definition=batch.definition,
            batch_index=batch.batch_index,
            delivered=count if result.success else 0,
            failed=0 if result.success else count,
            status_code=result.status,
            error=result.error,
            attempts=result.attempts,
        )
        outgoing = [Outgoing(self.topics.run_events, run_key, outcome.to_bytes())]
        if result.success:
            MEMBERS_DELIVERED.inc(count)
            return outgoing
        MEMBERS_FAILED.inc(count)
        DEAD_LETTERS.inc()
        log.warning(
            "batch failed",
            run_id=run_key,
            batch_index=batch.batch_index,
            status=result.status,
            attempts=result.attempts,
            error=result.error,
        )
        letter = DeadLetter(
            reason=result.error or "delivery failed",
            source_topic=self.topics.member_batches,
            service="dispatcher",
            run_id=batch.run_id,
            definition=batch.definition,
            batch_index=batch.batch_index,
            members=batch.members,
            last_status=result.status,
            attempts=result.attempts,
        )
        # The dead letter goes first: the outcome tells the notifier the members are accounted for.
        return [Outgoing(self.topics.dead_letters, run_key, letter.to_bytes()), *outgoing]
