"""Fold run events into run records; send each run's notifications (emails, webhooks) once; request chained runs."""

from __future__ import annotations

import smtplib
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import structlog
from prometheus_client import Counter, Gauge, Histogram

from services.notifier.emails import (
    EMAIL_KINDS,
    ERROR,
    RECOVERED,
    SUCCESS,
    compose,
    compose_digest,
    kinds_due,
    recipients_for,
)
from services.notifier.mailer import SmtpMailer
from services.notifier.notification_claims import SweepClaims
from services.notifier.ports import NotifierRuns
from services.notifier.resends import as_refused, attempt
from services.notifier.send_round import SendRound, final_for_this_email, server_unusable
from services.notifier.webhook_delivery import WebhookNotifications
from services.notifier.webhook_messages import final_event, ledger_kind, parse_kind, subscribed
from shared.application.chains import request_following_runs
from shared.application.ports import DefinitionsStore, RunsStore, WatermarkStore
from shared.application.run_events import record_run_event, record_run_events
from shared.application.schedules import pause_schedule, paused_by_run
from shared.domain.catalog_objects import ExportDefinition, WebhookEvent
from shared.domain.email_retries import (
    EMAIL_MAX_ATTEMPTS,
    EarlierSends,
    NotificationMark,
    RefusedRecipients,
    mailable,
    refused_for_now,
)
from shared.domain.runs import (
    Claimant,
    RunRecord,
    RunStatus,
    StartClaims,
    consecutive_failures,
    failure_threshold_reason,
    stuck_reason,
)
from shared.errors import CatalogTimedOut, StoredObjectInvalid
from shared.events import AnyRunEvent, RunFailed, RunStarted
from shared.kafka import Outgoing
from shared.metrics import UNKNOWN_DEFINITION, start_definitions_series
from shared.outages import describe, is_outage
from shared.outbound.backoff import Backoff
from shared.settings import default_replica_id
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
EMAIL_RECIPIENTS_REFUSED = Counter(
    "member_export_notifier_email_recipients_refused_total",
    "Recipients an email was not delivered to while the SMTP server took it for the others (a recipient refused: "
    "recorded in the run's notification, the email not sent again), by kind.",
    ["kind"],
)
EMAIL_RECIPIENTS_DEFERRED = Counter(
    "member_export_notifier_email_recipients_deferred_total",
    "Recipients an email was not delivered to yet while the SMTP server took it for the others, refused for now (a "
    "4xx answer, e.g. greylisting): mailed again alone after the email's backoff (once its attempts are spent, "
    "counted as refused), by kind.",
    ["kind"],
)
EMAILS_GIVEN_UP = Counter(
    "member_export_notifier_emails_given_up_total",
    "Run emails given up (not tried again: a permanent SMTP answer, their attempts spent, their definition gone), "
    "by kind.",
    ["kind"],
)
ACTIVE_RUNS = Gauge("member_export_runs_active", "Runs started and not finished (as of the last sweep).")
STUCK_RUNS = Gauge(
    "member_export_runs_stuck",
    "Unfinished runs the last sweep found with no event for longer than EXPORT_NOTIFIER_STUCK_AFTER_SECONDS "
    "(it fails them: a value that stays above 0 means their failure is not being recorded).",
)
DIGESTS_SENT = Counter(
    "member_export_notifier_missed_digests_total",
    "Digests sent instead of one notification per missed run (emails and webhooks), by definition.",
    ["definition"],
)
FINISHES_PENDING = Gauge(
    "member_export_notifier_finishes_pending",
    "Final runs whose finish (failure policy, final webhook and emails, counts) the last sweep found not handled "
    "longer than EXPORT_NOTIFIER_FINISH_LEASE_SECONDS after they finished (it finishes them, oldest first: a value "
    "that stays above 0 means finishes are not being done).",
)
CHAINED_RUNS_REFUSED = Counter(
    "member_export_notifier_chained_runs_refused_total",
    "Runs of chained definitions that could not be requested after a run of what they follow (the definition "
    "deleted or invalid meanwhile; the log says why), by the chained definition.",
    ["definition"],
)
SCHEDULES_PAUSED = Counter(
    "member_export_notifier_schedules_paused_total",
    "Schedules paused after consecutive failed runs, by definition.",
    ["definition"],
)


#: The wait before a failed email's next attempt (by the sweep): full jitter, doubling from 30 s up to 15 minutes.
EMAIL_BACKOFF = Backoff(initial=30.0, maximum=900.0)

#: A run whose finish was handled, and its definition (None: not in the catalog), to record as handled.
Finish = tuple[RunRecord, ExportDefinition | None]

#: This process's name in the runs' finish claims and in its finishes' claims of notifications in the ledger
#: (``EXPORT_NOTIFIER_REPLICA_ID``'s default): a process restarted in the same container (same host name, same
#: process id) takes its own claims from before its start back at once.
REPLICA = default_replica_id()


class Notifier:
    """Handles run events; ``sweep`` (now and then) fails stuck runs and retries unsent emails."""

    #: Definition names remembered as started (bounds memory against names no catalog holds).
    MAX_STARTED = 100_000

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
        webhooks: WebhookNotifications | None = None,
        missed_digest_threshold: int = 3,
        chain_runs: RunsStore | None = None,
        replica_id: str = REPLICA,
        finish_lease_seconds: float = 600.0,
        finish_sweep_limit: int = 100,
        started_at: datetime | None = None,
        send_round: SendRound | None = None,
        email_backoff: Backoff = EMAIL_BACKOFF,
    ) -> None:
        self.definitions, self.runs, self.watermarks = definitions, runs, watermarks
        #: The runs store as run requests use it (idempotency keys): chained exports fire when given.
        self.chain_runs = chain_runs
        self.webhooks = webhooks
        #: More missed runs of one definition than this in one poll (or one sweep): one digest instead.
        self.missed_digest_threshold = missed_digest_threshold
        #: Missed runs of the poll being handled whose notifications are claimed and wait for the digest
        #: decision (taken once the whole poll is folded).
        self._missed: list[RunRecord] = []
        #: The definitions (None: not in the catalog) of the runs the poll being handled starts, read before its
        #: fold, which claims their ``started`` webhooks (:meth:`_start_claims`).
        self._starting: dict[str, ExportDefinition | None] = {}
        self.mailer = mailer
        self.sender = sender
        self.link_base_url = link_base_url
        self.topics = topics or Topics()
        self.stuck_after_seconds = stuck_after_seconds
        #: A run's finish is done by the replica that claims it; another takes a claim over after the lease.
        self.replica_id = replica_id
        #: This process's start on the catalog's clock (read now when not given): its finish's notification claims
        #: are taken back at once only when made before it (a restart in place), never a live twin's of the same id
        #: nor its own since (:attr:`claimant`).
        self.started_at = runs.catalog_clock() if started_at is None else started_at
        self.finish_lease_seconds = finish_lease_seconds
        #: At most this many runs' finishes done by one sweep (those no event came again for), oldest first.
        self.finish_sweep_limit = finish_sweep_limit
        self.clock = clock
        #: A poll's handling and a sweep each send within a time budget, no email more once one failed for now.
        self.round = send_round or SendRound()
        if webhooks is not None:
            webhooks.round = self.round  # its webhooks too: one budget for both
        self.email_backoff = email_backoff
        #: What the claim of each email and webhook this round claimed read of it (its recipients refused so far, its
        #: failed attempts so far), for its send and its mark (:meth:`_earlier_sends`); emptied at each poll's handling
        #: and each sweep.
        self._earlier: dict[tuple[uuid.UUID, str], EarlierSends] = {}
        if webhooks is not None:
            webhooks.earlier = self._earlier  # its webhooks' too: what this notifier's claims read of them
        self._series_started = False
        self._started: set[str] = set()  # definitions whose series were started (by name)
        self._start_every_definitions_series()  # now, not at the first sweep (30 s on): a fast run's failure counts
        for kind in (SUCCESS, ERROR):  # every series exists from the start: increase() sees the first one
            EMAILS_SENT.labels(kind=kind)
            EMAIL_FAILURES.labels(kind=kind)
            EMAIL_RECIPIENTS_REFUSED.labels(kind=kind)
            EMAIL_RECIPIENTS_DEFERRED.labels(kind=kind)

    @property
    def claimant(self) -> Claimant:
        """This replica's name in its finish's notification claims, with its process's start (see
        :class:`~shared.domain.runs.Claimant`)."""
        return Claimant(self.replica_id, self.started_at)

    def handle(self, event: AnyRunEvent) -> list[Outgoing]:
        """Fold the event into its run; when the run has finished, apply the failure policy and send emails."""
        self._earlier.clear()
        with self.round.open("a run event"):
            return self._handle(event)

    def _handle(self, event: AnyRunEvent) -> list[Outgoing]:
        before, after = record_run_event(
            event, runs=self.runs, watermarks=self.watermarks, starts=self._start_claims([event])
        )
        finishes: list[Finish] = []
        try:
            if _starts(before, after):
                self._send_started(after)  # before the finish, as a poll's (:meth:`handle_all`)
            claimed, held = self._claim([after.run_id] if after.status.is_final else [])
            outgoing = self._after_fold(
                before, after, event.at, finishing=after.run_id in claimed, held=after.run_id in held, finishes=finishes
            )
        finally:
            self._send_missed()
        self._record_finishes(finishes)
        return outgoing

    def handle_all(self, events: list[AnyRunEvent]) -> list[list[Outgoing] | BaseException]:
        """A poll's events: folded in one transaction, then each run that changed is handled as :meth:`handle`
        would. Should the fold of the whole poll fail, each event is folded on its own, so that one bad event
        is dead-lettered alone; unless the catalog failed it (an outage, a lock or statement timeout), which
        every event would meet again, each after waiting as long (past the group's poll interval for a large
        poll): then every event of the poll gets that failure, as the extractor's rounds stop at the first
        outage (handed back on an outage, dead-lettered on a timeout, as when each fails alone). Its sends are
        one round (:class:`SendRound`): within its budget, and no email more once one failed for now."""
        self._earlier.clear()
        with self.round.open("a poll"):
            return self._handle_all(events)

    def _handle_all(self, events: list[AnyRunEvent]) -> list[list[Outgoing] | BaseException]:
        try:
            folded = record_run_events(
                events, runs=self.runs, watermarks=self.watermarks, starts=self._start_claims(events)
            )
        except Exception as exc:
            if is_outage(exc) or isinstance(exc, CatalogTimedOut):
                log.warning(
                    "folding a poll's events failed on the catalog; not folding them one by one",
                    events=len(events),
                    error=describe(exc),
                )
                return [exc] * len(events)
            log.warning("folding a poll's events at once failed; folding them one by one", exc_info=True)
            return [self._handled_alone(event) for event in events]
        failures: dict[object, BaseException] = {}
        produced: dict[object, list[Outgoing]] = {}
        latest = {event.run_id: event.at for event in events}
        last = {event.run_id: index for index, event in enumerate(events)}
        # The poll's ``started`` webhooks first, before any finish: their hold from other replicas' sweeps
        # (:meth:`_start_claims`) must not run out while earlier runs' finishes wait on an SMTP outage.
        for run_id, (before, after) in folded.items():
            if _starts(before, after):
                try:
                    self._send_started(after)
                except Exception as exc:  # noqa: BLE001 - this run's events get the failure, the others go on
                    failures[run_id] = exc
        final = [run_id for run_id, (_, after) in folded.items() if after.status.is_final]
        try:
            claimed, held = self._claim(final)  # one statement a poll, none while no run is final
        except Exception as exc:  # noqa: BLE001 - the final runs' events get the failure, the others go on
            failures.update(dict.fromkeys(final, exc))
            claimed, held = set(), set()
        finishes: list[Finish] = []
        for run_id, (before, after) in folded.items():
            if run_id in failures:
                continue
            try:
                # The poll's claims were made at once: renewed before each finish, so that a long finish of an
                # earlier run does not leave a later one to be taken over (and done twice) in the middle of it.
                finishing = run_id in claimed and self._renewed(run_id)
                produced[run_id] = self._after_fold(
                    before,
                    after,
                    latest[run_id],
                    finishing=finishing,
                    held=run_id in held or (run_id in claimed and not finishing),
                    finishes=finishes,
                )
            except Exception as exc:  # noqa: BLE001 - this run's events get the failure, the others go on
                failures[run_id] = exc
        self._send_missed()
        try:
            self._record_finishes(finishes)
        except Exception as exc:  # noqa: BLE001 - not recorded: handled again when their events come again
            failures.update(dict.fromkeys((record.run_id for record, _ in finishes), exc))
        # A run's records (chained run requests) go with its last event of the poll, once.
        return [
            failures.get(event.run_id) or (produced.get(event.run_id, []) if last[event.run_id] == index else [])
            for index, event in enumerate(events)
        ]

    def _handled_alone(self, event: AnyRunEvent) -> list[Outgoing] | BaseException:
        try:
            return self._handle(event)
        except Exception as exc:  # noqa: BLE001 - the loop dead-letters the event with this failure
            return exc

    def _start_claims(self, events: Sequence[AnyRunEvent]) -> StartClaims | None:
        """The ``started`` webhooks of the runs these events start, for their fold to claim in its transaction (an
        outbox: a crash after the fold's commit leaves them claimed and unsent, for the sweep). Each is held from
        the sweep for :attr:`finish_lease_seconds`, within which the replica that folded it sends it (its first
        attempt), as a finish's notifications are held by its claim. Reads each starting run's definition once
        (remembered for the poll, in :attr:`_starting`)."""
        self._starting = {}
        names = {event.definition for event in events if isinstance(event, RunStarted)}
        if self.webhooks is None or not names:
            return None
        kinds: dict[str, list[tuple[str, list[str]]]] = {}
        for name in sorted(names):
            definition = self._starting[name] = self._definition(name)
            if definition is not None:
                kinds[name] = self.webhooks.ledger_claims(definition, WebhookEvent.STARTED)
        held_until = datetime.now(UTC) + timedelta(seconds=self.finish_lease_seconds)
        # What the fold's claims it inserts know (no failed attempt yet): a first attempt's failure reads nothing.
        return StartClaims(kinds, held_until, earlier=self._earlier) if any(kinds.values()) else None

    def _send_started(self, record: RunRecord) -> None:
        """One attempt of each ``started`` webhook of a run this replica's fold just started: claimed in that fold
        (:meth:`_start_claims`), else here. A failed attempt, or one a crash prevented, is the sweep's to retry."""
        if record.definition not in self._starting:  # started by no RunStarted of this poll: not claimed yet
            self._notify_webhooks(record, WebhookEvent.STARTED)
            return
        definition = self._starting[record.definition]
        if definition is not None and self.webhooks is not None:
            channels = subscribed(definition, WebhookEvent.STARTED)
            for index, name in enumerate(channels):
                if not self.round.time_left():  # claimed by the fold: the sweep sends them once their hold is over
                    self.round.left(len(channels) - index)
                    return
                self.webhooks.send_claimed(definition, record, name, WebhookEvent.STARTED.value)

    def _claim(self, run_ids: list[uuid.UUID]) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
        """Claim these final runs' finish for this replica (one statement, none when there is none): the runs
        claimed, and those whose finish another replica holds (:meth:`SqlRunsStore.claim_finishes`)."""
        if not run_ids:
            return set(), set()
        return self.runs.claim_finishes(run_ids, self.replica_id, self.finish_lease_seconds)

    def _renewed(self, run_id: uuid.UUID) -> bool:
        """Renew this replica's claim of the run's finish before doing it; False (logged) when another replica took
        it over since (the finish is theirs now) or it is handled."""
        if self.runs.renew_finish_claim(run_id, self.replica_id):
            return True
        log.warning("run's finish claim taken over by another replica: leaving the finish to it", run_id=str(run_id))
        return False

    def _still_ours(self, run_id: uuid.UUID, renewed_at: float) -> tuple[bool, float]:
        """Between two sends of a finish: renew the claim once a quarter of the lease went by since ``renewed_at``
        (a slow email), so a live finish is not taken over; whether the finish is still this replica's, and when
        the claim was last renewed."""
        if time.monotonic() - renewed_at < self.finish_lease_seconds / 4:
            return True, renewed_at
        return self._renewed(run_id), time.monotonic()

    def _after_fold(
        self,
        before: RunRecord | None,
        after: RunRecord,
        at: datetime,
        *,
        finishing: bool,
        finishes: list[Finish],
        held: bool = False,
        attempts: int | None = None,
    ) -> list[Outgoing]:
        """Once a run is final: chained runs on every event, due emails on every event unless another replica
        ``held`` the run's finish (its emails are part of it); and while ``finishing`` (this replica claimed the
        finish, not recorded as handled), the finish: the failure policy (threshold, auto-pause), the final
        webhook, the recovery notice, a missed run's claims. A finish whose work is done is appended to
        ``finishes``, for the caller to record (:meth:`_record_finishes`). ``attempts``: per email (None: the
        mailer's own; the sweep's one, not to hold the loop through an SMTP outage). The records to produce: the run
        requests of chained definitions.

        The fold is committed before this runs, so a failure here or before the finish is recorded (the catalog
        timing out or away, the process killed) leaves the finish to the next event of the run (the same one
        handed back, redelivered or replayed; or the sweep, once the claim's lease is over), which finds the run final
        and its finish not handled. Every step can be run again: the threshold's ``RunFailed`` keeps the first
        reason, emails and webhooks are claimed once in the ledger, the pause happens once (its webhook sent again
        if this run paused the schedule: :meth:`_paused_by`), chained runs are idempotent; the metrics count when
        the finish is recorded, once."""
        if not after.status.is_final and after.definition not in self._started:
            self._start_series(after.definition)
        if not after.status.is_final:
            return []
        # Read only when there is something to decide or to send (a redelivered event of a finished
        # run whose emails are out needs nothing).
        definition = self._definition(after.definition) if finishing or (kinds_due(after.status) and not held) else None
        if finishing and definition is not None:
            reason = failure_threshold_reason(after, definition.failure_policy.max_failure_percent)
            if reason is not None:
                # Folded here, before any email: the run is reported failed, never "completed with errors".
                _, after = self.runs.fold_run_event(
                    RunFailed(run_id=after.run_id, definition=after.definition, reason=reason, at=at)
                )
            # This finish's handling interrupted after the pause: its webhook may not be claimed yet (the ledger sends
            # it once).
            if (self._maybe_pause(definition, after) or self._paused_by(definition, after)) and (
                self.webhooks is not None
            ):
                self._send_webhooks(definition, after, WebhookEvent.PAUSED)
        outgoing = self._chained_runs(after)
        if after.status is RunStatus.MISSED:
            # Claimed now, sent once the poll is folded: one digest if many runs were missed at once.
            if finishing and definition is not None:
                self._claim_missed(definition, after)
            if finishing:
                finishes.append((after, definition))
            return outgoing
        renewed_at = time.monotonic()  # the claim was renewed (or made) just before this finish
        if finishing and definition is not None and self._recovered(after):
            self._send_recovery(definition, after, attempts)
            # One email's longest send is within the lease, two are not: the claim is renewed between them.
            finishing, renewed_at = self._still_ours(after.run_id, renewed_at)
            held = held or not finishing
        # Checked on every event of a final run, not only on the one that finished it, so an email
        # whose sending was interrupted (crash, SMTP down) goes out when the next event comes; not while
        # another replica does the finish (it sends them: both would find them claimed and unsent).
        if not held:
            self._send_due_emails(after, definition, attempts)
        event = final_event(after.status)
        if finishing and definition is not None and event is not None and self.webhooks is not None:
            finishing, renewed_at = self._still_ours(after.run_id, renewed_at)
            if finishing:
                self._send_webhooks(definition, after, event)
        if finishing:
            finishes.append((after, definition))
        return outgoing

    def _record_finishes(self, finishes: list[Finish]) -> None:
        """Record these runs' finish as handled (their work done; one statement); whoever records a finish first
        counts the run as finished, so a finish handled again after an interruption is counted once."""
        if not finishes:
            return
        recorded = self.runs.mark_finishes_handled([record.run_id for record, _ in finishes])
        for record, definition in finishes:
            if record.run_id not in recorded:
                continue
            # A run of no catalog definition (its request named none) is labelled as such: bounded series.
            label = record.definition if definition is not None else UNKNOWN_DEFINITION
            RUNS_FINISHED.labels(definition=label, status=record.status.value).inc()
            if record.duration_seconds is not None:
                RUN_SECONDS.labels(definition=label).observe(record.duration_seconds)
            log.info(
                "run finished",
                run_id=str(record.run_id),
                definition=record.definition,
                status=record.status.value,
                extracted=record.extracted,
                delivered=record.delivered,
                failed=record.failed,
            )

    def _chained_runs(self, finished: RunRecord) -> list[Outgoing]:
        """The run requests of the definitions chained after ``finished``. Asked on every event of a final run
        (a redelivery repairs a request lost in a crash); idempotent per (finished run, follower)."""
        if self.chain_runs is None:
            return []
        following = request_following_runs(finished, store=self.definitions, runs=self.chain_runs)
        for follower, reason in following.refused:
            # Each follower on its own: one refused stops neither the others nor this run's emails and webhooks.
            CHAINED_RUNS_REFUSED.labels(definition=follower).inc()
            log.warning(
                "chained run refused",
                definition=follower,
                after_run_id=str(finished.run_id),
                after=finished.definition,
                reason=reason,
            )
        requests = following.requests
        for request in requests:
            log.info(
                "chained run requested",
                run_id=str(request.run_id),
                definition=request.definition,
                after_run_id=str(finished.run_id),
                after=finished.definition,
            )
        return [Outgoing(self.topics.run_requests, str(r.run_id), r.to_bytes()) for r in requests]

    def _start_series(self, name: str) -> None:
        """A new run's definition gets its finished-runs series at 0 now, before the run finishes: a counter
        series that first appears at 1 is invisible to ``increase()`` (its first failure would raise no
        alert). Only catalog definitions (a name from a topic must not create series)."""
        if len(self._started) < self.MAX_STARTED:  # remembered, catalog or not: one lookup per name
            self._started.add(name)
        if self._definition(name) is None:
            return
        self._start_series_of(name)

    @staticmethod
    def _start_series_of(name: str) -> None:
        for status in RunStatus:
            if status.is_final:
                RUNS_FINISHED.labels(definition=name, status=status.value)

    def _start_every_definitions_series(self) -> None:
        """Once (at start, else at a sweep): every catalog definition's finished-runs series at 0, so that a run
        failing faster than a scrape after a restart still shows as an increase."""
        if not self._series_started:
            self._series_started = start_definitions_series(
                lambda: self.definitions.list_objects(ExportDefinition), self._start_series_of
            )

    def sweep(self) -> list[Outgoing]:
        """Fail runs that made no progress for too long (as run.failed events); retry unsent notifications."""
        self._start_every_definitions_series()
        self._earlier.clear()
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
        with self.round.open("a sweep"):
            try:
                outgoing += self._finish_pending()
            except Exception:  # the unsent notifications are still retried; the next sweep tries again
                log.exception("finishing the runs whose finish no one did failed; the next sweep tries again")
            self._retry_unsent()
        return outgoing

    def _finish_pending(self) -> list[Outgoing]:
        """Finish the final runs whose finish is not handled, the lease past (a dead-lettered event never replayed,
        a replica that died holding the claim): at most :attr:`finish_sweep_limit`, oldest first, each claimed as
        an event's would be. Their count before, in :data:`FINISHES_PENDING`."""
        count, records = self.runs.finishes_pending(self.finish_lease_seconds, self.finish_sweep_limit)
        FINISHES_PENDING.set(count)
        claimed, _ = self._claim([record.run_id for record in records])
        finishes: list[Finish] = []
        outgoing: list[Outgoing] = []
        try:
            for record in records:
                if record.run_id not in claimed or not self._renewed(record.run_id):
                    continue
                log.warning(
                    "run's finish not handled after the lease: finishing it",
                    run_id=str(record.run_id),
                    definition=record.definition,
                    status=record.status.value,
                )
                try:
                    at = record.finished_at or record.last_event_at or self.clock()
                    # One attempt per email, as the sweep's retries: an SMTP outage must not hold the loop.
                    outgoing += self._after_fold(record, record, at, finishing=True, finishes=finishes, attempts=1)
                except Exception:  # its claim lapses: a later sweep tries again; the others go on
                    log.exception("finishing a run failed; a later sweep tries again", run_id=str(record.run_id))
        finally:
            self._send_missed(attempts=1)  # one attempt per email, as the sweep's others
        self._record_finishes(finishes)
        return outgoing

    def _retry_unsent(self) -> None:
        """One attempt of each notification claimed and not sent (and due, for a webhook backing off); the
        missed runs' grouped per definition and kind, as a digest when they are many. Not those of a final run
        whose finish another replica holds (its lease running): they are its to send, it may be sending them; nor
        a ``started`` webhook within its hold (not due: the replica whose fold claimed it may be sending it).
        The ones to try are claimed first, at once (:class:`SweepClaims`, for :attr:`finish_lease_seconds`): of
        two replicas' sweeps reading the same ones, each sends those it claimed, so each goes out once."""
        definitions: dict[str, ExportDefinition | None] = {}
        tries: list[tuple[RunRecord, ExportDefinition, str]] = []
        unsent = self.runs.unsent_notifications(limit=1_000)
        held = self.runs.finishes_held([run_id for run_id, _ in unsent], self.replica_id, self.finish_lease_seconds)
        for run_id, kind in unsent:
            record = self.runs.get_run(run_id)
            # Emails are of final runs; a webhook may be of a running one (``started``).
            if record is None or (not record.status.is_final and parse_kind(kind) is None):
                continue
            if record.status.is_final and run_id in held:
                continue
            if record.definition not in definitions:
                definitions[record.definition] = self._definition(record.definition)
            definition = definitions[record.definition]
            if definition is None:
                # Nobody to tell any more (and the sweep's window is not to fill up with it): given up, said why.
                self._give_up_orphan(record, kind)
                continue
            if self.webhooks is None and parse_kind(kind) is not None:
                continue
            tries.append((record, definition, kind))
        if not tries:
            return
        keys = sorted({(record.run_id, kind) for record, _, kind in tries})
        # One statement claims them and reads the emails' refusals and attempts so far (:meth:`_earlier_sends`).
        claimed = self.runs.claim_unsent_notifications(keys, self.finish_lease_seconds, earlier=self._earlier)
        claims = SweepClaims(self.runs, keys, self.finish_lease_seconds, claimed=claimed)
        missed: dict[tuple[str, str], list[RunRecord]] = {}
        try:
            for record, definition, kind in tries:
                webhook = parse_kind(kind)
                if (record.run_id, kind) not in claims:
                    continue  # another sweep's, or sent meanwhile
                if not self.round.time_left() or (webhook is None and not self.round.mail_open()):
                    self.round.left()
                    continue  # the sweep's budget spent, or SMTP failed in it: released below, due at once
                if record.status is RunStatus.MISSED and (kind == ERROR or (webhook and webhook[1] == "missed")):
                    missed.setdefault((record.definition, kind), []).append(record)
                elif not claims.take([(record.run_id, kind)]):
                    continue
                elif webhook is not None:
                    assert self.webhooks is not None
                    self.webhooks.send_claimed(definition, record, *webhook)
                elif kind in EMAIL_KINDS:
                    # One attempt each: a sweep must not hold the loop through a long SMTP outage.
                    self._mail(definition, record, kind, recipients_for(definition, kind), attempts=1)
            for (name, kind), records in missed.items():
                definition = definitions[name]
                assert definition is not None
                if not self.round.time_left() or (kind == ERROR and not self.round.mail_open()):
                    self.round.left(len(records))
                    continue
                ours = set(claims.take([(record.run_id, kind) for record in records]))
                if ours:
                    group = [record for record in records if (record.run_id, kind) in ours]
                    untried = self._send_missed_group(definition, kind, group, attempts=1)
                    claims.give_back((record.run_id, kind) for record in untried)
        finally:
            claims.release_rest()

    def _definition(self, name: str) -> ExportDefinition | None:
        try:
            return self.definitions.find(ExportDefinition, name)
        except StoredObjectInvalid as exc:  # saved by an older release: the run is recorded, not mailed
            log.error("definition unreadable: no one to notify", definition=name, error=str(exc))
            return None

    def _maybe_pause(self, definition: ExportDefinition, record: RunRecord) -> bool:
        """Pause the schedule after too many failed runs in a row; True when this run paused it."""
        limit = definition.failure_policy.pause_after_failed_runs
        if limit is None or record.status is not RunStatus.FAILED:
            return False
        if self._consecutive_failures(definition.name, limit) < limit:
            return False
        if pause_schedule(definition.name, store=self.definitions, paused_by=paused_by_run(record.run_id)):
            SCHEDULES_PAUSED.labels(definition=definition.name).inc()
            log.warning("schedule paused", definition=definition.name, consecutive_failed_runs=limit)
            return True
        return False

    def _paused_by(self, definition: ExportDefinition, record: RunRecord, *, as_read: bool = True) -> bool:
        """Whether this failed run's failures paused the schedule, as recorded in the pause's transaction
        (``schedule_paused_by``): not an operator's pause, nor an earlier run's. Read only for a failed run of a
        definition that pauses, and (``as_read``) whose schedule was disabled when ``definition`` was read."""
        if definition.failure_policy.pause_after_failed_runs is None or record.status is not RunStatus.FAILED:
            return False
        if as_read and definition.schedule.enabled:
            return False
        return self.definitions.schedule_paused_by(definition.name) == paused_by_run(record.run_id)

    def _paused_after(self, definition: ExportDefinition, record: RunRecord) -> int | None:
        """N when this failed run's failures, N in a row, paused the schedule (for the email)."""
        limit = definition.failure_policy.pause_after_failed_runs
        if limit is None or not self._paused_by(definition, record, as_read=False):
            return None
        return max(self._consecutive_failures(definition.name, limit), limit)

    def _consecutive_failures(self, definition: str, limit: int) -> int:
        # Skipped and missed runs do not break a series: look further back than ``limit`` runs.
        return consecutive_failures(self.runs.recent_final_statuses(definition, limit * 4))

    def _send_due_emails(
        self, record: RunRecord, definition: ExportDefinition | None, attempts: int | None = None
    ) -> None:
        """The run's due emails not sent yet (its finish's, or those an interrupted finish left, on an event of the
        run come again), each sent only once claimed for this attempt (:meth:`_mail_claimed`)."""
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
        self._mail_claimed(definition, record, kinds, attempts)

    def _mail_claimed(
        self, definition: ExportDefinition, record: RunRecord, kinds: Sequence[str], attempts: int | None
    ) -> None:
        """Send the run's emails of ``kinds`` not sent yet (to their recipients, if any): each claimed in the ledger
        and, in the same transaction, for this attempt as a sweep claims it (for :attr:`finish_lease_seconds`:
        :meth:`NotifierRuns.claim_notification` with a lease, in this replica's name), and sent only when so claimed:
        never one a sweep holds (it sends it), nor one backing off. A failed send's mark makes it due again; a send
        that never ends (the process killed) leaves the claim to this replica's name: the same replica (restarted in
        place, the event redelivered) takes it back at once; any other, a live twin of the same id and this process
        itself (a claim made since it started: e.g. its record lost to an outage) wait for the lease (or a sweep
        does)."""
        for kind in kinds:
            recipients = recipients_for(definition, kind)
            if not recipients:
                continue
            if not self.round.mail_open():
                # In the ledger, unsent and due (not claimed): the sweep sends it.
                if self.runs.claim_notification(record.run_id, kind, recipients):
                    self.round.left()
                continue
            if self.runs.claim_notification(
                record.run_id, kind, recipients, self.finish_lease_seconds, self.claimant, earlier=self._earlier
            ):
                self._mail(definition, record, kind, recipients, attempts)

    def _mail(
        self,
        definition: ExportDefinition,
        record: RunRecord,
        kind: str,
        recipients: list[str],
        attempts: int | None = None,
    ) -> None:
        """Send a claimed email and mark it sent (or its error, for the sweep to try again)."""
        if not recipients:  # the toggle was turned off since it was claimed
            self.runs.mark_notifications([(record.run_id, kind)], error="no recipients any more", give_up=True)
            return
        message = compose(
            definition=definition,
            record=record,
            kind=kind,
            sender=self.sender,
            recipients=recipients,
            link_base_url=self.link_base_url,
            paused_after=self._paused_after(definition, record),
        )
        self._deliver_email(message, [record], kind, attempts, recipients)

    def _deliver_email(
        self,
        message: EmailMessage,
        records: list[RunRecord],
        kind: str,
        attempts: int | None = None,
        recipients: list[str] | None = None,
    ) -> bool:
        """Send a claimed email (within the round's budget) and mark it sent, or failed (:meth:`_mark_failed`). A
        recipient that is not one address (saved by an older release) fails it for good, unsent."""
        earlier, tried = self._earlier_sends(records, kind)
        split = mailable(recipients or [])
        if split.odd:  # saved by an older release: not mailed (no one knows whom it would reach); the others are
            log.warning("recipients not mailed: not one email address each", kind=kind, recipients=len(split.odd))
            recipients = split.mailed
            if split.none_left_reason is not None:
                self._mark_failed(records, kind, split.none_left_reason, tried=tried, permanent=True)
                return False
        mailed = recipients or []
        # Some took it before, others refused it for now: those (still recipients) are mailed again, alone.
        try:
            sent = attempt(self.mailer, message, mailed, earlier, max_attempts=attempts, until=self.round.until)
        except (OSError, smtplib.SMTPException) as exc:
            self._send_failed(records, kind, exc, tried)
            return False
        refused, for_now = sent.refused, sent.for_now
        if not earlier:
            EMAILS_SENT.labels(kind=kind).inc()  # once, when it first went out (to all, or to some)
        EMAIL_RECIPIENTS_REFUSED.labels(kind=kind).inc(sum(1 for address in sent.answered if address not in for_now))
        undelivered = self.mailer.undelivered_reason(as_refused(refused), len(mailed)) if refused else None
        if for_now:
            assert undelivered is not None
            self._mail_again(records, kind, refused, len(mailed), tried, undelivered)
            return True
        # One statement for all its runs (a digest's), as its failure's mark (:meth:`_mark_failed`).
        self.runs.mark_notifications(_keys(records, kind), undelivered=undelivered, refused=refused or None)
        if refused:
            self._not_delivered_to_some(records, kind, undelivered)
        else:
            log.info("email sent", run_id=str(records[0].run_id), runs=len(records), kind=kind)
        return True

    @staticmethod
    def _not_delivered_to_some(records: Sequence[RunRecord], kind: str, undelivered: str | None) -> None:
        # Sent to the others (not sent again); to whom it was not recorded, counted and said (session 48 review).
        log.error(
            "email not delivered to some recipients", run_id=str(records[0].run_id), kind=kind, reason=undelivered
        )

    def _send_failed(
        self, records: Sequence[RunRecord], kind: str, exc: OSError | smtplib.SMTPException, tried: int
    ) -> None:
        self.round.email_failed(exc)
        EMAIL_FAILURES.labels(kind=kind).inc()
        log.error("email could not be sent", runs=len(records), kind=kind, error=type(exc).__name__)
        self._mark_failed(
            records,
            kind,
            self.mailer.failure_reason(exc),
            tried=tried,
            permanent=final_for_this_email(exc),
            counted=not server_unusable(exc),
        )

    def _earlier_sends(self, records: Sequence[RunRecord], kind: str) -> EarlierSends:
        """What the claims of these runs' email read of it, for its send and its mark (:attr:`_earlier`: every send
        follows its claim in the same round), not read again: the recipients refused so far while others took it,
        when some were refused for now (to be mailed again alone; empty when it is to go to every recipient: never
        sent, or sent to some of some runs only, a digest grouped otherwise than before), and the failed attempts so
        far of the first run's (the one its mark counts by). Before (session 50), one query per run of the email at
        each send for the former, and two for the latter at a failure (:meth:`_mail_again`, :meth:`_mark_failed`).
        An email no claim of this round read (none known) has its attempts read now."""
        sends = [self._earlier.pop((record.run_id, kind), None) for record in records]
        first = sends[0] if sends else None
        tried = first[1] if first is not None else self.runs.notification_attempts(records[0].run_id, kind)
        refused: RefusedRecipients = {}
        for send in sends:
            if send is None or not refused_for_now(send[0]):
                return {}, tried
            refused |= send[0]
        return refused, tried

    def _mail_again(
        self,
        records: Sequence[RunRecord],
        kind: str,
        refused: RefusedRecipients,
        total: int,
        tried: int,
        undelivered: str,
    ) -> None:
        """An email taken by some recipients and refused for now by others: pending, for a later attempt to mail them
        alone (after its backoff, counted as a failed attempt), unless this attempt spends its attempts: then recorded
        sent, ``undelivered`` its last error (not delivered to them), counted as refused. Which of the two, its mark
        decides from the locked row's attempts (:meth:`_mark_failed`); ``tried``, its failed attempts before this one
        as its claim read them, sets the backoff."""
        again = refused_for_now(refused)
        note = f"; {len(again)} refused for now, mailed again alone"
        reason = self.mailer.undelivered_reason(as_refused(refused), total, yet=True, note=note)
        mark = self._mark_failed(
            records, kind, reason, tried=tried, permanent=False, refused=refused, sent_when_spent=undelivered
        )
        if mark is not None and mark.sent:
            EMAIL_RECIPIENTS_REFUSED.labels(kind=kind).inc(len(again))
            self._not_delivered_to_some(records, kind, undelivered)
        elif mark is not None:
            EMAIL_RECIPIENTS_DEFERRED.labels(kind=kind).inc(len(again))

    def _mark_failed(
        self,
        records: Sequence[RunRecord],
        kind: str,
        reason: str,
        *,
        tried: int,
        permanent: bool,
        counted: bool = True,
        refused: RefusedRecipients | None = None,
        sent_when_spent: str | None = None,
    ) -> NotificationMark | None:
        """Record a failed attempt of these runs' email of ``kind``: tried again by a sweep after its backoff
        (:data:`EMAIL_BACKOFF`), or given up (a permanent answer, or its :data:`EMAIL_MAX_ATTEMPTS` spent).
        A failure every email would meet (the server down or refusing the sender: not ``counted``) never spends the
        attempts, nor adds to them: an SMTP outage of hours loses no email, it is sent once the server is back, and
        its later failures about it have their 20 attempts (before, an outage's failures were added to them). Such
        a failure puts the email off by up to as long as it has waited since its run finished (at least 30 s, at
        most 15 minutes, jittered): its attempts do not grow through an outage, so the backoff grows with time.

        The attempt is counted, and the give-up decided (:data:`EMAIL_MAX_ATTEMPTS`), by each run's mark from its
        locked row (:meth:`NotifierRuns.mark_notifications`: one statement for all a digest's runs), not from ``tried``
        (its failed attempts before this one as its claim read them, which sets the backoff): another replica's attempt
        meanwhile (this one's lease over mid-send) is counted in, so an email never gets an attempt past its 20th. The
        first run's mark (the one the email's attempts are counted by), or None when another's mark ended every run's
        email meanwhile (sent or given up: nothing recorded)."""
        attempts = tried + (1 if counted else 0)
        backoff = (
            self.email_backoff.delay(attempts) if counted else self.email_backoff.delay_after(self._waited(records))
        )
        retry_at = None if permanent else self.clock() + timedelta(seconds=backoff)
        # One statement for all its runs (a digest's; before, one a run), each row's give-up from its own count.
        written = self.runs.mark_notifications(
            _keys(records, kind),
            error=reason,
            retry_at=retry_at,
            give_up=permanent,
            counted=counted,
            refused=refused,
            max_attempts=EMAIL_MAX_ATTEMPTS,
            sent_when_spent=sent_when_spent,
        )
        marks = [written.get((record.run_id, kind)) for record in records]
        given_up = sum(1 for mark in marks if mark is not None and mark.given_up)
        if given_up:
            EMAILS_GIVEN_UP.labels(kind=kind).inc(given_up)
        mark = next((mark for mark in marks if mark is not None), None)
        if mark is None:
            log.warning(
                "email attempt failed after another replica recorded the email: not recorded",
                run_id=str(records[0].run_id),
                runs=len(records),
                kind=kind,
                reason=reason,
            )
        elif not mark.sent:
            log.error(
                "email given up" if mark.given_up else "email to be tried again",
                run_id=str(records[0].run_id),
                runs=len(records),
                kind=kind,
                attempts=mark.attempts,
                reason=reason,
                retry_at=None if mark.given_up or retry_at is None else retry_at.isoformat(),
            )
        return mark

    def _waited(self, records: Sequence[RunRecord]) -> float:
        """Seconds since the first of these runs finished (0 when none says): how long its email has waited."""
        # Aware instants: an event's, or the catalog's read back through ``aware``.
        finished = [record.finished_at for record in records if record.finished_at is not None]
        return max(0.0, (self.clock() - min(finished)).total_seconds()) if finished else 0.0

    def _give_up_orphan(self, record: RunRecord, kind: str) -> None:
        """A notification whose run's definition is not in the catalog (deleted, or unreadable): given up."""
        reason = f"the definition {record.definition!r} is not in the catalog (deleted, or unreadable)"
        self.runs.mark_notifications([(record.run_id, kind)], error=reason, give_up=True)
        if parse_kind(kind) is None:
            EMAILS_GIVEN_UP.labels(kind=kind).inc()
        log.error("notification given up", run_id=str(record.run_id), kind=kind, reason=reason)

    # --- webhooks, recovery notices and missed-run digests ------------------------------------------

    def _send_webhooks(self, definition: ExportDefinition, record: RunRecord, event: WebhookEvent) -> None:
        """Claim and send ``event`` to the definition's subscribed channels, as a finish does: for
        :attr:`finish_lease_seconds`, in this replica's name (:attr:`claimant`)."""
        if self.webhooks is None:
            return
        # Each channel within the round's budget; those past it in the ledger, unsent and due: the sweep sends them.
        self.webhooks.notify(definition, record, event, self.finish_lease_seconds, self.claimant)

    def _notify_webhooks(self, record: RunRecord, event: WebhookEvent) -> None:
        if self.webhooks is None:
            return
        definition = self._definition(record.definition)
        if definition is not None and definition.notifications.webhooks:
            self._send_webhooks(definition, record, event)

    def _recovered(self, record: RunRecord) -> bool:
        """A succeeded run whose definition's previous runs (skipped and missed ones aside) failed."""
        if record.status is not RunStatus.SUCCEEDED:
            return False
        earlier = self.runs.recent_final_statuses(record.definition, 20)
        # The run itself is recorded finished already: the series before it starts after it.
        return consecutive_failures(earlier[1:]) > 0 if earlier and earlier[0] is RunStatus.SUCCEEDED else False

    def _send_recovery(self, definition: ExportDefinition, record: RunRecord, attempts: int | None = None) -> None:
        self._mail_claimed(definition, record, [RECOVERED], attempts)
        self._send_webhooks(definition, record, WebhookEvent.RECOVERED)

    def _claim_missed(self, definition: ExportDefinition, record: RunRecord) -> None:
        """Claim a missed run's error email and ``missed`` webhooks; sent by :meth:`_send_missed`."""
        recipients = recipients_for(definition, ERROR)
        claimed = bool(recipients) and self.runs.claim_notification(record.run_id, ERROR, recipients)
        channels = self.webhooks.claim(definition, record, WebhookEvent.MISSED) if self.webhooks else []
        if claimed or channels:
            self._missed.append(record)

    def _send_missed(self, attempts: int | None = None) -> None:
        """The poll's missed runs: per definition, one notification each, or one digest when they are many.
        ``attempts``: per email (None: the mailer's own; the sweep's one).

        Each group is claimed for this attempt first, as a sweep claims it (one statement per definition and kind), in
        this replica's name (its own claims, left by a process killed in the middle, are taken back): those a sweep
        holds are left to it. A failure is logged, not raised: the claimed notifications stay unsent
        and the sweep sends them.
        """
        pending, self._missed = self._missed, []
        if not pending:
            return
        try:
            by_definition: dict[str, list[RunRecord]] = {}
            for record in pending:
                by_definition.setdefault(record.definition, []).append(record)
            for name, records in by_definition.items():
                definition = self._definition(name)
                if definition is None:
                    continue
                kinds = [ERROR] + [ledger_kind(channel, "missed") for channel in definition.notifications.webhooks]
                for kind in kinds:
                    if not self.round.time_left() or (kind == ERROR and not self.round.mail_open()):
                        self.round.left(len(records))  # claimed in the ledger, due: the sweep sends them
                        continue
                    ours = self.runs.claim_unsent_notifications(
                        [(record.run_id, kind) for record in records],
                        self.finish_lease_seconds,
                        self.claimant,
                        earlier=self._earlier,
                    )
                    unsent = [record for record in records if (record.run_id, kind) in ours]
                    if unsent:
                        untried = self._send_missed_group(definition, kind, unsent, attempts)
                        if untried:  # the round's budget spent on the way: due again at once, for the sweep
                            self.runs.release_notification_claims(
                                {(r.run_id, kind): ours[(r.run_id, kind)] for r in untried}
                            )
        except Exception:  # the sweep sends what is still unsent
            log.exception("sending missed-run notifications failed; the sweep will try again")

    def _send_missed_group(
        self, definition: ExportDefinition, kind: str, records: list[RunRecord], attempts: int | None = None
    ) -> list[RunRecord]:
        """Missed runs' claimed notifications of one kind: one each, or one digest above the threshold. Those not
        tried (one each: the round's budget spent on the way; left counted), for the caller to release."""
        webhook = parse_kind(kind)
        digest = len(records) > self.missed_digest_threshold
        if digest:
            DIGESTS_SENT.labels(definition=definition.name).inc()
            log.info("missed runs sent as a digest", definition=definition.name, runs=len(records), kind=kind)
        if webhook is not None:
            if self.webhooks is None:
                return []
            if digest:
                self.webhooks.send_digest(definition, records, webhook[0])
                return []
            for index, record in enumerate(records):
                if not self.round.time_left():
                    self.round.left(len(records) - index)
                    return records[index:]
                self.webhooks.send_claimed(definition, record, *webhook)
            return []
        recipients = recipients_for(definition, ERROR)
        if not digest or not recipients:
            for index, record in enumerate(records):
                if recipients and not self.round.mail_open():
                    self.round.left(len(records) - index)
                    return records[index:]
                self._mail(definition, record, ERROR, recipients, attempts)
            return []
        message = compose_digest(definition=definition, records=records, sender=self.sender, recipients=recipients)
        self._deliver_email(message, records, ERROR, attempts, recipients)
        return []


def _keys(records: Sequence[RunRecord], kind: str) -> list[tuple[uuid.UUID, str]]:
    """The ledger's keys of these runs' notification of ``kind``."""
    return [(record.run_id, kind) for record in records]


def _starts(before: RunRecord | None, after: RunRecord) -> bool:
    """Whether the fold from ``before`` to ``after`` started the run (its ``started`` webhook is due)."""
    return after.started_at is not None and (before is None or before.started_at is None)
