"""Fold run events into run records and send each finished run's emails once."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from prometheus_client import Counter, Gauge, Histogram

from services.notifier.emails import ERROR, SUCCESS, compose, kinds_due, recipients_for
from services.notifier.mailer import SmtpMailer
from services.notifier.ports import NotifierRuns
from shared.application.ports import DefinitionsStore, WatermarkStore
from shared.application.run_events import record_run_event, record_run_events
from shared.application.schedules import pause_schedule
from shared.domain.catalog_objects import ExportDefinition
from shared.domain.runs import (
    RunRecord,
    RunStatus,
    consecutive_failures,
    failure_threshold_reason,
    stuck_reason,
)
from shared.errors import StoredObjectInvalid
from shared.events import AnyRunEvent, RunFailed
from shared.kafka import Outgoing
from shared.metrics import UNKNOWN_DEFINITION
from shared.topics import Topics

log = structlog.get_logger(__name__)

RUNS_FINISHED = Counter(
    "member_export_runs_finished_total", "Runs finished, by definition and final status.", ["definition", "status"]
)
RUN_SECONDS = Histogram(
    "member_export_run_duration_seconds",
    "Duration of finished runs, by definition.",
    ["definition"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
)
EMAILS_SENT = Counter("member_export_notifier_emails_sent_total", "Notification emails sent, by kind.", ["kind"])
EMAIL_FAILURES = Counter(
    "member_export_notifier_emails_failed_total", "Emails that could not be sent, by kind.", ["kind"]
)
ACTIVE_RUNS = Gauge("member_export_runs_active", "Runs started and not finished (as of the last sweep).")
STUCK_RUNS = Gauge(
    "member_export_runs_stuck",
    "Unfinished runs the last sweep found with no event for longer than EXPORT_NOTIFIER_STUCK_AFTER_SECONDS "
    "(it fails them: a value that stays above 0 means their failure is not being recorded).",
)
SCHEDULES_PAUSED = Counter(
    "member_export_notifier_schedules_paused_total",
    "Schedules paused after consecutive failed runs, by definition.",
    ["definition"],
)


class Notifier:
    """Handles run events; ``sweep`` (now and then) fails stuck runs and retries unsent emails."""

    def __init__(
        self,
        *,
        definitions: DefinitionsStore,
        runs: NotifierRuns,
        watermarks: WatermarkStore,
        mailer: SmtpMailer,
        sender: str,
        link_base_url: str | None,
        topics: Topics | None = None,
        stuck_after_seconds: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.definitions, self.runs, self.watermarks = definitions, runs, watermarks
        self.mailer = mailer
        self.sender = sender
        self.link_base_url = link_base_url
        self.topics = topics or Topics()
        self.stuck_after_seconds = stuck_after_seconds
        self.clock = clock
        for kind in (SUCCESS, ERROR):  # every series exists from the start: increase() sees the first one
            EMAILS_SENT.labels(kind=kind)
            EMAIL_FAILURES.labels(kind=kind)

    def handle(self, event: AnyRunEvent) -> list[Outgoing]:
        """Fold the event into its run; when the run has finished, apply the failure policy and send emails."""
        before, after = record_run_event(event, runs=self.runs, watermarks=self.watermarks)
        self._after_fold(before, after, event.at)
        return []

    def handle_all(self, events: list[AnyRunEvent]) -> list[list[Outgoing] | BaseException]:
        """A poll's events: folded in one transaction, then each run that changed is handled as :meth:`handle`
        would. Should the fold of the whole poll fail, each event is folded on its own, so that one bad event
        is dead-lettered alone."""
        try:
            folded = record_run_events(events, runs=self.runs, watermarks=self.watermarks)
        except Exception:
            log.warning("folding a poll's events at once failed; folding them one by one", exc_info=True)
            return [self._handled_alone(event) for event in events]
        failures: dict[object, BaseException] = {}
        latest = {event.run_id: event.at for event in events}
        for run_id, (before, after) in folded.items():
            try:
                self._after_fold(before, after, latest[run_id])
            except Exception as exc:  # noqa: BLE001 - this run's events get the failure, the others go on
                failures[run_id] = exc
        return [failures.get(event.run_id, []) for event in events]

    def _handled_alone(self, event: AnyRunEvent) -> list[Outgoing] | BaseException:
        try:
            return self.handle(event)
        except Exception as exc:  # noqa: BLE001 - the loop dead-letters the event with this failure
            return exc

    def _after_fold(self, before: RunRecord | None, after: RunRecord, at: datetime) -> None:
        """Once a run is final: the failure policy (threshold, auto-pause), metrics, log, and due emails."""
        if before is None and not after.status.is_final:
            self._start_series(after.definition)
        if not after.status.is_final:
            return
        newly_final = before is None or not before.status.is_final
        # Read only when there is something to decide or to send (a redelivered event of a finished
        # run whose emails are out needs nothing).
        definition = self._definition(after.definition) if newly_final or kinds_due(after.status) else None
        if newly_final and definition is not None:
            reason = failure_threshold_reason(after, definition.failure_policy.max_failure_percent)
            if reason is not None:
                # Folded here, before any email: the run is reported failed, never "completed with errors".
                _, after = self.runs.fold_run_event(
                    RunFailed(run_id=after.run_id, definition=after.definition, reason=reason, at=at)
                )
            self._maybe_pause(definition, after)
        if newly_final:
            # A run of no catalog definition (its request named none) is labelled as such: bounded series.
            label = after.definition if definition is not None else UNKNOWN_DEFINITION
            RUNS_FINISHED.labels(definition=label, status=after.status.value).inc()
            if after.duration_seconds is not None:
                RUN_SECONDS.labels(definition=label).observe(after.duration_seconds)
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
        self._send_due_emails(after, definition)

    def _start_series(self, name: str) -> None:
        """A new run's definition gets its finished-runs series at 0 now, before the run finishes: a counter
        series that first appears at 1 is invisible to ``increase()`` (its first failure would raise no
        alert). Only catalog definitions (a name from a topic must not create series)."""
        if self._definition(name) is None:
            return
        for status in RunStatus:
            if status.is_final:
                RUNS_FINISHED.labels(definition=name, status=status.value)

    def sweep(self) -> list[Outgoing]:
        """Fail runs that made no progress for too long (as run.failed events); retry unsent emails."""
        now = self.clock()
        outgoing = []
        unfinished = self.runs.unfinished_runs()
        ACTIVE_RUNS.set(len(unfinished))
        stuck = 0
        for record in unfinished:
            reason = stuck_reason(record, now, self.stuck_after_seconds)
            if reason is not None:
                stuck += 1
                log.warning("run stuck", run_id=str(record.run_id), definition=record.definition, reason=reason)
                failed = RunFailed(run_id=record.run_id, definition=record.definition, reason=reason, at=now)
                outgoing.append(Outgoing(self.topics.run_events, str(record.run_id), failed.to_bytes()))
        STUCK_RUNS.set(stuck)
        for run_id, _kind in self.runs.unsent_notifications():
            finished = self.runs.get_run(run_id)
            if finished is not None and finished.status.is_final:
                # One attempt each: a sweep must not hold the loop through a long SMTP outage.
                self._send_due_emails(finished, self._definition(finished.definition), attempts=1)
        return outgoing

    def _definition(self, name: str) -> ExportDefinition | None:
        try:
            return self.definitions.find(ExportDefinition, name)
        except StoredObjectInvalid as exc:  # saved by an older release: the run is recorded, not mailed
            log.error("definition unreadable: no one to notify", definition=name, error=str(exc))
            return None

    def _maybe_pause(self, definition: ExportDefinition, record: RunRecord) -> None:
        limit = definition.failure_policy.pause_after_failed_runs
        if limit is None or record.status is not RunStatus.FAILED:
            return
        if self._consecutive_failures(definition.name, limit) < limit:
            return
        if pause_schedule(definition.name, store=self.definitions):
            SCHEDULES_PAUSED.labels(definition=definition.name).inc()
            log.warning("schedule paused", definition=definition.name, consecutive_failed_runs=limit)

    def _paused_after(self, definition: ExportDefinition, record: RunRecord) -> int | None:
        """N when this failed run is one of N consecutive failures that paused the schedule (for the email)."""
        limit = definition.failure_policy.pause_after_failed_runs
        if limit is None or record.status is not RunStatus.FAILED:
            return None
        current = self._definition(definition.name)
        if current is None or current.schedule.enabled:
            return None
        failures = self._consecutive_failures(definition.name, limit)
        return failures if failures >= limit else None

    def _consecutive_failures(self, definition: str, limit: int) -> int:
        # Skipped and missed runs do not break a series: look further back than ``limit`` runs.
        return consecutive_failures(self.runs.recent_final_statuses(definition, limit * 4))

    def _send_due_emails(
        self, record: RunRecord, definition: ExportDefinition | None, attempts: int | None = None
    ) -> None:
        kinds = kinds_due(record.status)
        if not kinds:
            return
        if definition is None:
            log.warning(
                "run of an unknown definition: no one to notify",
                run_id=str(record.run_id),
                definition=record.definition,
            )
            return
        for kind in kinds:
            recipients = recipients_for(definition, kind)
            if not recipients or not self.runs.claim_notification(record.run_id, kind, recipients):
                continue
            message = compose(
                definition=definition,
                record=record,
                kind=kind,
                sender=self.sender,
                recipients=recipients,
                link_base_url=self.link_base_url,
                paused_after=self._paused_after(definition, record),
            )
            try:
                self.mailer.send(message, max_attempts=attempts)
            except (OSError, smtplib.SMTPException) as exc:
                EMAIL_FAILURES.labels(kind=kind).inc()
                self.runs.mark_notification(record.run_id, kind, error=f"{type(exc).__name__}: {exc}")
                log.error("email could not be sent", run_id=str(record.run_id), kind=kind, error=type(exc).__name__)
                continue
            self.runs.mark_notification(record.run_id, kind)
            EMAILS_SENT.labels(kind=kind).inc()
            log.info("email sent", run_id=str(record.run_id), kind=kind, recipients=len(recipients))
