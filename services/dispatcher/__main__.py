"""Composition root of the dispatcher: ``python -m services.dispatcher`` or ``export-dispatcher``."""

from __future__ import annotations

from shared.process_start import begin_service_process

# First, before the imports (a second and more on a busy node): SIGUSR1 blocked before an import starts a thread,
# and SIGTERM or SIGINT ends the process with status 0 from here on, not 143 (shared.process_start).
begin_service_process()

import uuid

import structlog
from anyio.from_thread import start_blocking_portal

from services.dispatcher.breaker_notices import BreakerNotices
from services.dispatcher.breakers import ProfileBreakers
from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher, decode_batch, warn_of_slow_batch_decoding
from services.dispatcher.event_loop import portal_options, running_loop_name
from services.dispatcher.fleet_limits import FleetLimits
from services.dispatcher.inspector import attempts_upkeep, inspector_of
from services.dispatcher.partner_auth import OAuthTokenCache
from services.dispatcher.settings import DispatcherSettings
from shared.catalog import CatalogStores
from shared.catalog.fleet_store import SqlFleetStore
from shared.database_probe import database_outage_probe
from shared.domain.destinations import DestinationPolicy
from shared.domain.proxy_policy import allowed_proxies_setting, proxy_policy
from shared.kafka import value_decoder
from shared.outbound.guard import guarded_client
from shared.outbound.partner_http import AiohttpPartnerHttp
from shared.outbound.reqwest_partner_http import ReqwestPartnerHttp
from shared.runtime import build_loop, freeze_startup_objects, start_service

SERVICE = "dispatcher"
log = structlog.get_logger(__name__)


def main() -> None:
    settings = DispatcherSettings()
    health = start_service(settings, SERVICE)
    destinations = DestinationPolicy.parse(settings.allowed_destinations)
    # A profile's proxy must be allowed like a destination, or listed in EXPORT_ALLOWED_PROXIES.
    proxies = proxy_policy(destinations, allowed_proxies_setting())
    partner_http = ReqwestPartnerHttp if settings.dispatcher_http_client == "reqwest" else AiohttpPartnerHttp
    partners = partner_http(destinations, max_connections=max(100, settings.dispatcher_concurrency), proxies=proxies)
    client = guarded_client(destinations)  # token requests of profiles without tls/proxy settings
    stores = CatalogStores.from_url(settings.catalog_url, cipher=settings.secret_cipher())
    fleet_store = SqlFleetStore(stores.database)
    replica_id = uuid.uuid4().hex
    notices = BreakerNotices(  # breakers opening and closing across the replicas, announced once
        fleet_store, settings.topics.run_events, replica_id, ttl_seconds=settings.dispatcher_replica_ttl_seconds
    )
    policy = RetryBudget(
        max_attempts=settings.dispatcher_max_attempts,
        max_seconds=settings.dispatcher_max_retry_seconds,
        initial_backoff=settings.dispatcher_backoff_initial_seconds,
        max_backoff=settings.dispatcher_backoff_max_seconds,
    )
    inspector = inspector_of(settings, stores.attempts)
    attempts = attempts_upkeep(settings, inspector, stores.attempts)  # off: those recorded before go
    dispatcher = Dispatcher(
        objects=CatalogCache(stores.definitions, stores.runs, settings.dispatcher_catalog_cache_seconds),
        deliverer=Deliverer(partners, policy),
        tokens=OAuthTokenCache(client, clients=partners.token_client),
        topics=settings.topics,
        split_budget=settings.dispatcher_split_budget,
        concurrency=settings.dispatcher_concurrency,
        round_requests=settings.dispatcher_round_requests,
        max_round_records=settings.dispatcher_poll_records,
        round_seconds=settings.dispatcher_round_seconds,
        round_end_seconds=settings.round_end_seconds,
        render_limits=settings.render_limits,
        inspector=inspector,
        breakers=ProfileBreakers(on_change=notices.on_change),
        fleet=FleetLimits(
            fleet_store if settings.dispatcher_share_limits else None,
            heartbeat_seconds=settings.dispatcher_heartbeat_seconds,
            ttl_seconds=settings.dispatcher_replica_ttl_seconds,
            replica_id=replica_id,
        ),
    )
    # The HTTP requests run on one asyncio event loop on its own thread (anyio's blocking portal); the
    # consumer loop hands it each poll's batches (from its round threads) and waits for their outcomes.
    with start_blocking_portal(backend_options=portal_options(settings.dispatcher_event_loop)) as portal:
        heartbeats = portal.start_task_soon(dispatcher.fleet.run)  # this replica's share of the profiles' limits
        announcements = portal.start_task_soon(notices.run)  # its open breakers reported, the fleet's announced
        loop = build_loop(
            settings,
            service=SERVICE,
            health=health,
            topic=settings.topics.member_batch_topics(),
            priority_topics=settings.topics.member_batch_topics(),
            decode=value_decoder(decode_batch),  # MemberBatch.model_validate_json's batches, faster
            handle_round=lambda batches: portal.call(dispatcher.handle_all, batches),
            # One poll is one round of deliveries, up to `rounds_in_flight` rounds delivered at once: the next poll
            # waits for the oldest round's outcomes (backpressure). A round begins batches for `round_seconds` (the
            # rest go to the next round); the poll interval allows the requests begun by then their retry budget.
            rounds_in_flight=settings.dispatcher_rounds_in_flight,
            max_poll_records=settings.dispatcher_poll_records,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            outage_probe=database_outage_probe([stores.database.engine]),  # a wait on the catalog ends once it answers
        )
        loop.poll_records = dispatcher.next_poll_records
        notices.publish = loop.send_all
        dispatcher.stopping = loop.stopping  # SIGTERM abandons the round in progress (its batches handed back)
        loop.install_signal_handlers()
        attempts.start()
        warn_of_slow_batch_decoding()
        log.info(
            "dispatcher event loop",
            event_loop=portal.call(running_loop_name),
            http_client=settings.dispatcher_http_client,
        )
        freeze_startup_objects()  # full collections skip the start-up heap (issue 18: 36 us a request)
        try:
            loop.run()
        finally:
            attempts.close()  # what the inspector captured last is written before the process ends
            heartbeats.cancel()
            announcements.cancel()
            dispatcher.fleet.leave()  # after any beat in progress (it waits for it), never before
            notices.leave()
            portal.call(partners.aclose)
            portal.call(client.aclose)
            dispatcher.renderer.close()


if __name__ == "__main__":
    main()
