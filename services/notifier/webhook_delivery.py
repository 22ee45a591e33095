"""Webhook notifications through the ledger: claimed once per (run, channel, event), one attempt at a time.

A failed attempt is recorded with its next attempt time (full-jitter exponential backoff, or the receiver's
``Retry-After`` when longer); the notifier's sweep tries again once it is due, until the retry budget
(``max_attempts``) is spent or the failure is permanent (a 4xx answer, a refused destination): then the
notification is given up, and said so in the log and a metric. A URL or signing secret reference that cannot be used
(the file not written yet, the variable unset) is retried so too: the operator's fix is read at the next attempt.
Nothing here blocks the consumer for longer than one attempt (at most the channel's ``timeout_seconds``).

Exactly once per (run, channel, event) as far as the ledger can tell: a crash between a successful send
and its mark sends it once more, with the same ``webhook-id``, which the receiver can drop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import structlog
from prometheus_client import Counter

from services.notifier.ports import NotifierRuns
from services.notifier.send_round import SendRound
from services.notifier.webhook_messages import (
    MISSED_DIGEST,
    WebhookMessage,
    digest_message,
    ledger_kind,
    run_message,
    subscribed,
)
from services.notifier.webhook_sender import WebhookSender
from shared.domain.catalog_objects import ExportDefinition, WebhookChannel, WebhookEvent
from shared.domain.email_retries import EarlierSends
from shared.domain.runs import Claimant, RunRecord
from shared.outbound.backoff import Backoff

log = structlog.get_logger(__name__)

WEBHOOKS_SENT = Counter(
    "member_export_notifier_webhooks_sent_total", "Webhook notifications delivered, by event.", ["event"]
)
WEBHOOK_FAILURES = Counter(
    "member_export_notifier_webhooks_failed_total",
    "Webhook attempts that failed, by event and outcome (retry: tried again later; given_up: not again).",
    ["event", "outcome"],
)


class WebhookNotifications:
    """Sends a definition's webhook notifications once each, retrying failures within a budget."""

    def __init__(
        self,
        runs: NotifierRuns,
        sender: WebhookSender,
        *,
        backoff: Backoff,
        max_attempts: int,
        link_base_url: str | None,
        clock: Callable[[], datetime],
    ) -> None:
        self.runs, self.sender = runs, sender
        self.backoff, self.max_attempts = backoff, max_attempts
        self.link_base_url = link_base_url
        self.clock = clock
        #: What the claims of the notifications being sent read of each (its failed attempts so far, for its backoff
        #: at a failure), by (run id, kind): the notifier's (it sets its own, filled by its claims in each round).
        self.earlier: dict[tuple[uuid.UUID, str], EarlierSends] = {}
        #: The round its sends are part of (the notifier's: it sets its own; see :class:`SendRound`): no attempt
        #: begins without the time to finish within the round's budget, and each is cut to what is left.
        self.round = SendRound()

    @staticmethod
    def ledger_claims(definition: ExportDefinition, event: WebhookEvent) -> list[tuple[str, list[str]]]:
        """The ledger's (kind, recipients) of ``event``'s notification to each channel subscribed to it."""
        return [(ledger_kind(name, event.value), [name]) for name in subscribed(definition, event)]

    def claim(
        self,
        definition: ExportDefinition,
        record: RunRecord,
        event: WebhookEvent,
        lease_seconds: float | None = None,
        claimant: Claimant | None = None,
    ) -> list[str]:
        """Claim the notification of ``event`` for each subscribed channel; the channels still to send to. With
        ``lease_seconds``: those also claimed for one attempt now, as a sweep claims them (not one a sweep holds, nor
        one backing off; :meth:`NotifierRuns.claim_notification`), in ``claimant``'s name (a claim still its own
        from before its process started is taken back)."""
        return [
            recipients[0]
            for kind, recipients in self.ledger_claims(definition, event)
            if self.runs.claim_notification(record.run_id, kind, recipients, lease_seconds, claimant)
        ]

    def notify(
        self,
        definition: ExportDefinition,
        record: RunRecord,
        event: WebhookEvent,
        lease_seconds: float,
        claimant: Claimant | None = None,
    ) -> None:
        """Claim and send (one attempt) ``event`` of ``record`` to every channel subscribed to it: each not sent yet
        is claimed, in the same transaction, for this attempt as a sweep claims it (for ``lease_seconds``, in
        ``claimant``'s name: the notifier replica doing the run's finish) and sent only when so claimed: never one a
        sweep holds, nor one backing off (the sweep sends it when due); one still ``claimant``'s own from before its
        process started (it was killed between the claim and the record, and restarted) is sent again at once.

        Each channel's attempt only with the time to finish within the round's budget: one begun after the budget
        is spent is not; it and the channels after it are claimed unsent and due (not for an attempt), for the sweep.
        Before, the budget was looked at once an event: its channels went on past it, each up to its timeout."""
        for kind, recipients in self.ledger_claims(definition, event):
            if not self.round.time_left():
                if self.runs.claim_notification(record.run_id, kind, recipients):
                    self.round.left()
            elif self.runs.claim_notification(
                record.run_id, kind, recipients, lease_seconds, claimant, earlier=self.earlier
            ):
                self.send_claimed(definition, record, recipients[0], event.value)

    def send_claimed(self, definition: ExportDefinition, record: RunRecord, name: str, event: str) -> None:
        """One attempt of an already claimed notification (the sweep's retry, or the first send)."""
        channel = definition.notifications.webhooks.get(name)
        kind = ledger_kind(name, event)
        if channel is None:
            # The channel was removed (or renamed) since: nobody to tell any more.
            gone = "the channel no longer exists"
            self.runs.mark_notifications([(record.run_id, kind)], error=gone, give_up=True)
            return
        message = run_message(
            definition=definition,
            channel_name=name,
            channel=channel,
            event=event,
            record=record,
            now=self.clock(),
            link_base_url=self.link_base_url,
        )
        self._attempt(channel, message, [record], kind, event)

    def send_digest(self, definition: ExportDefinition, records: Sequence[RunRecord], name: str) -> None:
        """One ``missed_digest`` attempt for claimed ``missed`` notifications of ``records`` to channel ``name``."""
        channel = definition.notifications.webhooks.get(name)
        kind = ledger_kind(name, WebhookEvent.MISSED.value)
        if channel is None:
            keys = [(record.run_id, kind) for record in records]
            self.runs.mark_notifications(keys, error="the channel no longer exists", give_up=True)
            return
        message = digest_message(
            definition=definition, channel_name=name, channel=channel, records=records, now=self.clock()
        )
        self._attempt(channel, message, records, kind, MISSED_DIGEST)

    def _attempt(
        self,
        channel: WebhookChannel,
        message: WebhookMessage,
        records: Sequence[RunRecord],
        kind: str,
        event: str,
    ) -> None:
        now = self.clock()
        result = self.sender.send(channel, message.id, message.body, now, timeout=self.round.seconds_left())
        keys = [(record.run_id, kind) for record in records]  # a digest's runs marked in one statement, as one run
        if result.delivered:
            self.runs.mark_notifications(keys)
            WEBHOOKS_SENT.labels(event=event).inc()
            log.info("webhook sent", runs=len(records), kind=kind, webhook_id=message.id)
            return
        # The backoff from the attempts its claim read; the count and the give-up by the mark, from the locked row
        # (another replica's attempt meanwhile counted in: never an attempt past ``max_attempts``).
        attempts = self._tried(records[0].run_id, kind) + 1
        delay = self.backoff.delay(attempts, result.retry_after)
        retry_at = now + timedelta(seconds=delay) if result.retryable else None
        written = self.runs.mark_notifications(
            keys, error=result.error, retry_at=retry_at, give_up=not result.retryable, max_attempts=self.max_attempts
        )
        mark = next((written[key] for key in keys if key in written), None)
        if mark is None:
            log.warning(
                "webhook attempt failed after another replica recorded it: not recorded",
                kind=kind,
                webhook_id=message.id,
                error=result.error,
            )
            return
        give_up, attempts = mark.given_up, mark.attempts
        retry_at = None if give_up else retry_at
        WEBHOOK_FAILURES.labels(event=event, outcome="given_up" if give_up else "retry").inc()
        # The error names the status or the network failure, never a secret (URLs hold none: refused at save).
        log.error(
            "webhook not delivered",
            kind=kind,
            webhook_id=message.id,
            error=result.error,
            attempts=attempts,
            given_up=give_up,
            retry_at=retry_at.isoformat() if retry_at else None,
        )

    def _tried(self, run_id: uuid.UUID, kind: str) -> int:
        """The failed attempts before this one of the notification, as its claim read them (:attr:`earlier`; none, a
        ``started`` webhook its run's fold claimed by inserting it); read now only when no claim of this round knew
        them (a fold's claim of a row that was there before)."""
        earlier = self.earlier.pop((run_id, kind), None)
        return earlier[1] if earlier is not None else self.runs.notification_attempts(run_id, kind)
