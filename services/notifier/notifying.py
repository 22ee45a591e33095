"""Fold run events into run records and send each finished run's emails once."""

from __future__ import annotations

import smtplib

import structlog
from prometheus_client import Counter, Histogram

from services.notifier.emails import compose, kinds_due, recipients_for
from services.notifier.mailer import SmtpMailer
from shared.catalog import Catalog, NotFound
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.runs import RunRecord
from shared.events import AnyRunEvent
from shared.kafka import Outgoing

log = structlog.get_logger(__name__)

RUNS_FINISHED = Counter("export_runs_finished_total", "Runs finished, by final status.", ["status"])
RUN_SECONDS = Histogram(
    "export_run_duration_seconds", "Duration of finished runs.", buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600)
)
EMAILS_SENT = Counter("export_notifier_emails_sent_total", "Notification emails sent, by kind.", ["kind"])
EMAIL_FAILURES = Counter("export_notifier_email_failures_total", "Emails that could not be sent, by kind.", ["kind"])


class Notifier:
    """Handles run events."""

    def __init__(self, *, catalog: Catalog, mailer: SmtpMailer, sender: str, link_base_url: str | None) -> None:
        self.catalog = catalog
        self.mailer = mailer
        self.sender = sender
        self.link_base_url = link_base_url

    def handle(self, event: AnyRunEvent) -> list[Outgoing]:
        before, after = self.catalog.fold_run_event(event)
        if not after.status.is_final:
            return []
        if before is None or not before.status.is_final:
            RUNS_FINISHED.labels(status=after.status.value).inc()
            if after.duration_seconds is not None:
                RUN_SECONDS.observe(after.duration_seconds)
            log.info(
                "run finished",
                run_id=str(after.run_id),
                definition=after.definition,
                status=after.status.value,
                extracted=after.extracted,
                delivered=after.delivered,
                failed=after.failed,
            )
        # Checked on every event of a final run, not only on the one that finished it, so an email
        # whose sending was interrupted (crash, SMTP down) goes out when the next event comes.
        self._send_due_emails(after)
        return []

    def _send_due_emails(self, record: RunRecord) -> None:
        kinds = kinds_due(record.status)
        if not kinds:
            return
        try:
            definition = self.catalog.get(ExportDefinition, record.definition)
        except NotFound:
            log.warning(
                "run of an unknown definition: no one to notify",
                run_id=str(record.run_id),
                definition=record.definition,
            )
            return
        for kind in kinds:
            recipients = recipients_for(definition, kind)
            if not recipients or not self.catalog.claim_notification(record.run_id, kind, recipients):
                continue
            message = compose(
                definition=definition,
                record=record,
                kind=kind,
                sender=self.sender,
                recipients=recipients,
                link_base_url=self.link_base_url,
            )
            try:
                self.mailer.send(message)
            except (OSError, smtplib.SMTPException) as exc:
                EMAIL_FAILURES.labels(kind=kind).inc()
                self.catalog.mark_notification(record.run_id, kind, error=f"{type(exc).__name__}: {exc}")
                log.error("email could not be sent", run_id=str(record.run_id), kind=kind, error=type(exc).__name__)
                continue
            self.catalog.mark_notification(record.run_id, kind)
            EMAILS_SENT.labels(kind=kind).inc()
            log.info("email sent", run_id=str(record.run_id), kind=kind, recipients=len(recipients))
