"""Composition root of the notifier: ``python -m services.notifier`` or ``export-notifier``."""

from __future__ import annotations

from shared.process_start import begin_service_process

# First, before the imports (a second and more on a busy node): SIGUSR1 blocked before an import starts a thread,
# and SIGTERM or SIGINT ends the process with status 0 from here on, not 143 (shared.process_start).
begin_service_process()

from datetime import UTC, datetime

from services.notifier.breaker_notices import BreakerMails, decode, with_breaker_mails
from services.notifier.delivery_log_sweep import outcome_followers, with_log_retention
from services.notifier.mailer import SmtpMailer
from services.notifier.notifying import Notifier
from services.notifier.send_round import SendRound
from services.notifier.settings import NotifierSettings
from services.notifier.webhook_delivery import WebhookNotifications
from services.notifier.webhook_sender import WebhookSender
from shared.catalog import CatalogStores
from shared.catalog.breaker_mail_store import SqlBreakerMailStore
from shared.catalog.change_snapshots import ChangeSnapshotFollower
from shared.database_probe import database_outage_probe
from shared.domain.destinations import DestinationPolicy
from shared.kafka import Outgoing, value_decoder
from shared.outbound.backoff import Backoff
from shared.runtime import build_loop, start_service

SERVICE = "notifier"


def main() -> None:
    settings = NotifierSettings()
    health = start_service(settings, SERVICE)
    stores = CatalogStores.from_url(settings.catalog_url)
    stores.runs.followers.append(ChangeSnapshotFollower())  # change-mode snapshots move with delivered batches
    stores.runs.followers.extend(outcome_followers(stores, settings.notifier_delivery_log_days))
    webhooks = WebhookNotifications(
        stores.runs,
        WebhookSender(DestinationPolicy.parse(settings.allowed_destinations)),
        backoff=Backoff(
            initial=settings.notifier_webhook_backoff_initial_seconds,
            maximum=settings.notifier_webhook_backoff_max_seconds,
            retry_after_cap=settings.notifier_webhook_backoff_max_seconds,
        ),
        max_attempts=settings.notifier_webhook_max_attempts,
        link_base_url=settings.run_link_base_url,
        clock=lambda: datetime.now(UTC),
    )
    # A poll's handling and a sweep (breaker emails included) each send within one budget (send_round).
    send_round = SendRound(settings.notifier_send_budget_seconds)
    notifier = Notifier(
        definitions=stores.definitions,
        runs=stores.runs,
        watermarks=stores.extraction,
        mailer=SmtpMailer(
            settings.smtp_host,
            settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout=settings.smtp_timeout_seconds,
            max_attempts=settings.smtp_max_attempts,
            ca_file=settings.smtp_ca_file,
        ),
        sender=settings.smtp_sender,
        link_base_url=settings.run_link_base_url,
        topics=settings.topics,
        stuck_after_seconds=settings.notifier_stuck_after_seconds,
        webhooks=webhooks,
        missed_digest_threshold=settings.notifier_missed_digest_threshold,
        chain_runs=stores.runs,
        replica_id=settings.notifier_replica_id,
        finish_lease_seconds=settings.notifier_finish_lease_seconds,
        send_round=send_round,
    )
    mails = BreakerMails(
        stores.definitions,
        SqlBreakerMailStore(stores.database),
        notifier.mailer,
        notifier.sender,
        lease_seconds=settings.notifier_finish_lease_seconds,
        send_round=send_round,
    )
    sweep = with_log_retention(notifier.sweep, stores, settings.notifier_delivery_log_days)

    def periodic() -> list[Outgoing]:
        with send_round.open("a sweep"):
            return [*sweep(), *mails.retry_unsent()]

    # One handling at a time (build_loop's default rounds_in_flight=1; the sweeps run on the loop's thread), and it
    # must stay so: a run's finish claim is taken back by this replica's id whenever it asks (claim_finishes), so two
    # rounds in flight here could both do one run's finish. The ledger's notification claims would still hold (this
    # process takes back only its id's claims made before it started), but not the finish's other work.
    loop = build_loop(
        settings,
        service=SERVICE,
        health=health,
        topic=settings.topics.run_events,
        decode=value_decoder(decode),  # run events, and circuit breakers' changes (breaker_notices)
        # A poll's events are folded in one transaction (one commit per poll, not per event).
        handle_round=with_breaker_mails(notifier.handle_all, mails, send_round),
        periodic=periodic,
        periodic_seconds=settings.notifier_sweep_seconds,
        outage_probe=database_outage_probe([stores.database.engine]),  # a wait on the catalog ends once it answers
    )
    loop.install_signal_handlers()
    loop.run()


if __name__ == "__main__":
    main()
